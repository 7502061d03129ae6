"""Readiness tells the truth (issue 11 item 6): each condition under which nmi cannot answer correctly — a cache
not synced, a cache stale, the chain missing, shutting down — shows in `/readyz` with its reason, and clears on
recovery. The probe app is served over HTTP; the chain state comes from the real supervisor on an in-memory backend
whose repairs fail on demand, the cache state from the CacheHealth the informers feed."""

from __future__ import annotations

import asyncio

from iptables.errors import XtablesLockTimeout
from iptables.rules import ChainSpec
from iptables.supervisor import supervise
from nmi.freshness import POD_CACHE, CacheHealth
from nmi.readiness import DaemonState
from nmi.server import probe_app
from tests.iptables.fake_backend import FakeBackend


async def eventually(predicate, *, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def test_every_not_ready_condition_is_named_in_readyz_and_clears_on_recovery(aiohttp_client):
    health = CacheHealth()
    for resource in (POD_CACHE, "azureidentitybindings"):
        health.track(resource)
    state = DaemonState(chain_required=True)
    state.cache_problems = health.problems
    client = await aiohttp_client(probe_app(state))

    async def readyz() -> tuple[int, str]:
        response = await client.get("/readyz")
        return response.status, await response.text()

    async def says(status: int, *fragments: str, absent: tuple[str, ...] = ()) -> bool:
        got, body = await readyz()
        return got == status and all(f in body for f in fragments) and not any(a in body for a in absent)

    assert await says(503, "caches not synced or stale: ", "pods watch not synced yet", "azureidentitybindings watch not synced yet",
                      "aad-metadata chain not in place")

    backend, stop = FakeBackend(), asyncio.Event()
    spec = ChainSpec("169.254.169.254", 80, "10.244.0.1", 2579)

    def on_state(ok: bool) -> None:
        state.chain_installed = ok

    supervisor = asyncio.create_task(supervise(backend, spec, interval=0.02, on_state=on_state, stop=stop,
                                               retry_initial=0.01, retry_max=0.02))
    try:
        health.listed(POD_CACHE)
        health.listed("azureidentitybindings")
        await eventually(lambda: says(200))
        assert (await readyz())[1] == "ok"

        health.failed(POD_CACHE, "watch", "HTTP 500")  # a broken watch: stale
        assert await says(503, "pods watch stale for 0s (watch failing: HTTP 500)", absent=("chain",))
        health.watching(POD_CACHE)
        assert await says(200)

        health.expired("azureidentitybindings")  # a 410: stale until the relist lands
        assert await says(503, "azureidentitybindings watch stale for 0s (relisting after 410 Gone)")
        health.listed("azureidentitybindings")
        assert await says(200)

        backend.state = FakeBackend().state  # someone flushed the chain, and repairs fail for a while
        backend.fail_next = [XtablesLockTimeout("lock busy")] * 10**4
        await eventually(lambda: says(503, "aad-metadata chain not in place", absent=("watch",)))
        backend.fail_next.clear()  # the lock is free again
        await eventually(lambda: says(200))  # repaired
        assert backend.installed(spec)

        state.shutting_down = True
        assert await says(503, "shutting down")
    finally:
        stop.set()
        await asyncio.wait_for(supervisor, 5)


async def test_a_daemon_state_nobody_wired_is_not_ready():
    assert DaemonState(chain_required=False).not_ready_because() == ["caches not synced or stale: no watch cache wired yet"]
