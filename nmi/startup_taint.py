"""`--node-startup-taint=<key>`: once nmi is ready, remove that taint from its own Node, once.

Nodes registered with the taint (kubelet `--register-with-taints`, an AKS node pool taint) take no workload pods
until nmi is ready on them: the redirect exists before the first pod that could reach IMDS starts. nmi's
DaemonSet tolerates every taint, so nmi itself starts there.

The patch is a JSON patch whose every `remove` is preceded by a `test` of the very taint at that index: applied
by the API server against the Node as it is then, it removes exactly the taints nmi read, or fails (422) when
someone changed the taints in between, and nmi reads again. A concurrent change is never overwritten, because
nothing else is written. Retries back off up to `backoff_max`; the task never ends on its own (it is a root
task: ending would stop the daemon).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable, Protocol

from .backoff import Backoff, Retries

log = logging.getLogger(__name__)

Sleep = Callable[[float], Awaitable[object]]


class TaintConflict(Exception):
    """The Node changed between our read and our patch (HTTP 409, or 422 from a failed `test`)."""


class TaintRemovalFailed(Exception):
    """Reading or patching the Node failed otherwise (forbidden, not found, unreachable): one line, no secrets."""


class NodeTaints(Protocol):
    async def read_taints(self, node: str) -> list[dict[str, Any]]:
        """The Node's spec.taints as the API server returned them."""

    async def patch(self, node: str, operations: list[dict[str, Any]]) -> None:
        """Apply a JSON patch (application/json-patch+json) to the Node."""


def removal_patch(taints: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """JSON patch removing every taint with `key` (any value or effect), each guarded by a `test` of exactly
    that taint at that index; highest index first, so earlier removals do not shift later ones. [] if none."""
    operations: list[dict[str, Any]] = []
    for index in sorted((i for i, taint in enumerate(taints) if taint.get("key") == key), reverse=True):
        path = f"/spec/taints/{index}"
        operations += [{"op": "test", "path": path, "value": taints[index]}, {"op": "remove", "path": path}]
    return operations


async def remove_once(nodes: NodeTaints, *, node: str, key: str) -> bool:
    """One read and, when the taint is there, one guarded patch. True when a taint was removed."""
    operations = removal_patch(await nodes.read_taints(node), key)
    if not operations:
        return False
    await nodes.patch(node, operations)
    return True


async def remove_startup_taint(
    nodes: NodeTaints,
    *,
    node: str,
    key: str,
    ready: Callable[[], bool],
    sleep: Sleep = asyncio.sleep,
    ready_poll: float = 0.5,
    backoff_initial: float = 0.5,
    backoff_max: float = 30.0,
    on_done: Callable[[bool], None] | None = None,
) -> None:
    """Wait until `ready()`, remove the taint (retrying with backoff), report on_done(removed), then idle."""
    while not ready():
        await sleep(ready_poll)
    retries = Retries(Backoff(backoff_initial, backoff_max))
    while True:
        try:
            removed = await remove_once(nodes, node=node, key=key)
        except TaintConflict:
            delay = retries.failed()
            log.info("node %s changed while removing taint %s; reading it again in %.1fs", node, key, delay)
        except TaintRemovalFailed as exc:
            delay = retries.failed()
            log.warning("cannot remove taint %s from node %s (attempt %d, retrying in %.1fs): %s",
                        key, node, retries.failures, delay, exc)
        else:
            log.info("startup taint %s %s node %s", key, "removed from" if removed else "already absent on", node)
            if on_done is not None:
                on_done(removed)
            break
        await sleep(delay)
    await asyncio.Event().wait()  # a root task lives as long as the daemon
