"""`EventWriter` for the token issuance audit: creates core/v1 Events with the `kubernetes` client.

The client is blocking, so each write runs in the one worker thread this writer owns (the audit flush writes
one Event at a time anyway). Foreign failures are translated here: 403 -> EventsForbidden, anything else ->
EventWriteFailed.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Mapping

from kubernetes import client as k8s_client
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from ..audit import EventsForbidden, EventWriteFailed
from .rest import KubeApi


class KubeEventWriter:
    def __init__(self, api_client: k8s_client.ApiClient, *, request_timeout: float = 10.0) -> None:
        self._core = KubeApi(api_client)
        self._timeout = request_timeout
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kube-events")

    async def write(self, event: Mapping[str, Any]) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._create, dict(event))

    def _create(self, event: dict[str, Any]) -> None:
        namespace = event["metadata"]["namespace"]
        try:
            # KubeApi sends the dict as JSON and answers the raw urllib3 response.
            response: Any = self._core.create_namespaced_event(
                namespace, event, _preload_content=False, _request_timeout=self._timeout
            )
        except ApiException as exc:
            if exc.status == 403:
                raise EventsForbidden(f"creating Events in namespace {namespace} is forbidden") from exc
            raise EventWriteFailed(f"HTTP {exc.status} {exc.reason}") from exc
        except (HTTPError, OSError, ValueError) as exc:  # connection errors, timeouts, a body the model rejects
            raise EventWriteFailed(f"{type(exc).__name__}: {exc}") from exc
        # Unread, the raw response would hold its pooled connection.
        response.read()
        response.release_conn()

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
