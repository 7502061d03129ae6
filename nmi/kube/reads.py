"""One-shot reads against the API server: the live pod lookup on a cache miss, and Secrets.

Both run the blocking client in a small thread pool owned by the reader and translate every foreign
failure into an `nmi.errors` type at this boundary.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from kubernetes import client as k8s_client
from kubernetes.client.exceptions import ApiException

from ..errors import IdentityConfigurationError, NmiError, Unavailable
from ..model import PodInfo, SecretData
from .projection import project_pod
from .rest import KubeApi
from .watchstream import json_body

log = logging.getLogger(__name__)


class ApiReader:
    """Owns the worker threads for one-shot reads. Call `close()` when done."""

    def __init__(self, api_client: k8s_client.ApiClient, *, workers: int = 4) -> None:
        self.core = KubeApi(api_client)
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kube-read")

    async def _call(self, fn: Callable[[], Any], *, timeout: float) -> Any:
        loop = asyncio.get_running_loop()
        # The thread may outlive a timeout (urllib3 retries); the caller never waits longer than `timeout`.
        return await asyncio.wait_for(loop.run_in_executor(self._executor, fn), timeout)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


class LivePodLookup(ApiReader):
    """`live_pods_for_ip`: the pods on this node the API server knows with an IP, read live."""

    def __init__(
        self,
        api_client: k8s_client.ApiClient,
        node: str,
        *,
        timeout: float = 1.0,
        on_api_error: Callable[[str, str], None] | None = None,
    ) -> None:
        super().__init__(api_client)
        self.node = node
        self.timeout = timeout
        self.on_api_error = on_api_error

    async def live_pods_for_ip(self, ip: str) -> list[PodInfo]:
        selector = f"spec.nodeName={self.node},status.podIP={ip}"

        def fetch() -> Any:
            response = self.core.list_pod_for_all_namespaces(
                field_selector=selector, _preload_content=False, _request_timeout=self.timeout
            )
            return json_body(response)

        try:
            body = await self._call(fetch, timeout=self.timeout)
        except Exception as exc:  # noqa: BLE001 - HTTP errors, connection failures, timeouts: all transient here
            log.warning("live pod lookup for %s failed: %s", ip, type(exc).__name__)
            if self.on_api_error is not None:
                self.on_api_error("pods", "live_list")
            raise Unavailable("The Kubernetes API server could not be reached") from exc
        pods = [pod for pod in map(project_pod, body.get("items") or []) if pod is not None]
        return [pod for pod in pods if pod.ip == ip]

    __call__ = live_pods_for_ip


class KubeSecretReader(ApiReader):
    """`nmi.ports.SecretReader`: a live GET per call, so a changed Secret takes effect at once."""

    def __init__(self, api_client: k8s_client.ApiClient, *, timeout: float = 5.0,
                 on_api_error: Callable[[str, str], None] | None = None) -> None:
        super().__init__(api_client)
        self.timeout = timeout
        self.on_api_error = on_api_error  # every failed read (upstream's `get_secret` API error)

    async def read_secret(self, namespace: str, name: str) -> SecretData:
        try:
            return await self._read(namespace, name)
        except NmiError:
            if self.on_api_error is not None:
                self.on_api_error("secrets", "get")
            raise

    async def _read(self, namespace: str, name: str) -> SecretData:
        def fetch() -> Any:
            response = self.core.read_namespaced_secret(
                name, namespace, _preload_content=False, _request_timeout=self.timeout
            )
            return json_body(response)

        where = f"Secret {namespace}/{name}"
        try:
            body = await self._call(fetch, timeout=self.timeout)
        except ApiException as exc:
            if exc.status == 404:
                raise IdentityConfigurationError(f"{where} not found") from exc
            if exc.status in (401, 403):
                raise IdentityConfigurationError(f"{where} cannot be read (HTTP {exc.status})") from exc
            raise Unavailable(f"{where} could not be read (HTTP {exc.status})") from exc
        except Exception as exc:  # noqa: BLE001 - connection failures, timeouts: transient
            raise Unavailable(f"{where} could not be read: API server unreachable") from exc
        try:
            data = body.get("data") or {}
            version = str((body.get("metadata") or {}).get("resourceVersion") or "")
            return SecretData({key: base64.b64decode(value, validate=True) for key, value in data.items()}, version)
        except (AttributeError, TypeError, binascii.Error) as exc:
            # Never echo the content: only say which object is at fault.
            raise IdentityConfigurationError(f"{where} has data that is not valid base64") from exc
