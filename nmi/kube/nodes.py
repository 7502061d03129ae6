"""`NodeTaints` with the `kubernetes` client: GET the Node, PATCH it with a JSON patch.

Blocking client calls run in the one worker thread this adapter owns. Foreign failures are translated here:
409, and 422 (a failed JSON patch `test`), are TaintConflict; everything else is TaintRemovalFailed.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from kubernetes import client as k8s_client
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from ..startup_taint import TaintConflict, TaintRemovalFailed
from .rest import KubeApi
from .watchstream import json_body

JSON_PATCH = "application/json-patch+json"


class KubeNodeTaints:
    def __init__(self, api_client: k8s_client.ApiClient, *, request_timeout: float = 10.0) -> None:
        self._core = KubeApi(api_client)
        self._timeout = request_timeout
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kube-node")

    async def read_taints(self, node: str) -> list[dict[str, Any]]:
        body = await self._run(lambda: json_body(self._core.read_node(
            node, _preload_content=False, _request_timeout=self._timeout)), node)
        return list((body.get("spec") or {}).get("taints") or [])

    async def patch(self, node: str, operations: list[dict[str, Any]]) -> None:
        await self._run(lambda: json_body(self._core.patch_node(
            node, operations, _content_type=JSON_PATCH, _preload_content=False, _request_timeout=self._timeout)),
            node)

    async def _run(self, call: Callable[[], Any], node: str) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, _translated, call, node)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def _translated(call: Callable[[], Any], node: str) -> Any:
    try:
        return call()
    except ApiException as exc:
        if exc.status in (409, 422):
            raise TaintConflict(f"HTTP {exc.status}") from exc
        hint = " (is the startup-taint component's RBAC applied?)" if exc.status == 403 else ""
        raise TaintRemovalFailed(f"node {node}: HTTP {exc.status} {exc.reason}{hint}") from exc
    except (HTTPError, OSError, ValueError) as exc:  # unreachable, timeouts, a body that is not JSON
        raise TaintRemovalFailed(f"node {node}: {type(exc).__name__}") from exc
