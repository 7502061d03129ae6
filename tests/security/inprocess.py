"""The token and probe apps behind the daemon's own listen path (GuardedSite), in process, with the broker's
test doubles: for attacks that need small limits and timeouts the real daemon does not expose."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import AsyncIterator, Callable

from aiohttp import web

from nmi.broker import MANAGED, BrokerPolicy, TokenBroker
from nmi.listen import KEEPALIVE_SECONDS, ConnectionLimits, GuardedSite
from nmi.proxy import ImdsProxy
from nmi.readiness import DaemonState
from nmi.server import TokenServerConfig, probe_app, token_app
from tests.core.doubles import Catalog, Pods, Tokens, binding, identity, pod
from tests.security import rawhttp


@dataclass
class Servers:
    token_port: int
    probe_port: int
    token_runner: web.AppRunner
    limits: ConnectionLimits


@contextlib.asynccontextmanager
async def guarded_servers(*, limits: ConnectionLimits, head_timeout: float, imds_port: int = 9,
                          block_instance_metadata: bool = True) -> AsyncIterator[Servers]:
    """127.0.0.1 is pod default/app, bound to identity `i` (client ID `cid-i`); nothing else is a pod."""
    catalog = Catalog(bound=[binding("b", "i", "s")], ids=[identity("i", "cid-i")])
    broker = TokenBroker(Pods(pod("app", "127.0.0.1", label="s")), catalog, Tokens(),
                         policy=BrokerPolicy(mode=MANAGED, namespaced=True))
    proxy = ImdsProxy("127.0.0.1", imds_port, timeout=5)
    state = DaemonState(chain_required=False, cache_problems=lambda: [])  # every cache synced and fresh
    token_runner = web.AppRunner(token_app(broker, config=TokenServerConfig(block_instance_metadata=block_instance_metadata),
                                           state=state, proxy=proxy),
                                 access_log=None, keepalive_timeout=KEEPALIVE_SECONDS)
    probe_runner = web.AppRunner(probe_app(state), access_log=None, keepalive_timeout=KEEPALIVE_SECONDS)
    sites = []
    try:
        for runner in (token_runner, probe_runner):
            await runner.setup()
            site = GuardedSite(runner, "127.0.0.1", 0, limits=limits, head_timeout=head_timeout,
                               json_errors=runner is token_runner)
            await site.start()
            sites.append(site)
        yield Servers(sites[0].port, sites[1].port, token_runner, limits)
    finally:
        for runner in (token_runner, probe_runner):
            await runner.cleanup()
        await proxy.close()


async def open_from(port: int, source: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))


async def exchange(port: int, data: bytes, *, source: str = "127.0.0.1", timeout: float = 10) -> rawhttp.RawAnswer:
    """Send raw bytes (asking the server to close), read the answer to the end."""
    reader, writer = await open_from(port, source)
    try:
        writer.write(data)
        return rawhttp.parse(await asyncio.wait_for(reader.read(), timeout))
    finally:
        writer.close()


async def eventually(predicate: Callable[[], bool], *, timeout: float = 10.0) -> None:
    """Wait until `predicate()` holds; the timeout only bounds a failing test, it never decides a pass."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)
