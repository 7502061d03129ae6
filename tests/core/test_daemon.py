"""`Daemon.run` in process against the fake API server and the fake IMDS: it assembles, listens on the token, probe
and metrics ports, serves a pod its token, and on stop shuts down in order and returns 0; a port it cannot bind
is a one-line start-up error naming the flag, with everything built so far released."""

from __future__ import annotations

import asyncio
import socket

import aiohttp
import pytest

from fakes.imds import FakeImds, VmIdentity
from fakes.kubeobjects import make_binding, make_identity, make_pod
from fakes.ports import unused_ports
from nmi.assembly import StartupError
from nmi.daemon import Daemon
from tests.core.test_assembly import NODE, settings_for
from tests.eventually import eventually

ARM = "https://management.azure.com/"
VM = VmIdentity(client_id="aaaaaaaa-1111-4111-8111-aaaaaaaaaaaa", object_id="0a000000-0000-4000-8000-00000000000a")


@pytest.fixture
async def imds():
    imds = FakeImds([VM])
    await imds.start()
    try:
        yield imds
    finally:
        await imds.stop()


def daemon_settings(tmp_path, apiserver, imds, *, port: int, probe_port: int, metrics_port: int):
    return settings_for(tmp_path, apiserver.url, "--operation-mode=managed", "--forceNamespaced",
                        f"--nmi-port={port}", f"--http-probe-port={probe_port}", f"--prometheus-port={metrics_port}",
                        "--nmi-listen-address=127.0.0.1", f"--metadata-port={imds.port}")


async def status_of(session: aiohttp.ClientSession, url: str) -> int:
    try:
        async with session.get(url) as response:
            return response.status
    except aiohttp.ClientConnectionError:
        return 0


async def test_the_daemon_serves_a_pod_its_token_and_stops_in_order(apiserver, imds, tmp_path):
    apiserver.put(make_identity("id", "default", client_id=VM.client_id))
    apiserver.put(make_binding("b", "default", identity="id", selector="sel"))
    apiserver.put(make_pod("app", "default", "127.0.0.1", NODE, labels={"aadpodidbinding": "sel"}))
    port, probe_port, metrics_port = unused_ports(3)
    daemon = Daemon(daemon_settings(tmp_path, apiserver, imds, port=port, probe_port=probe_port,
                                    metrics_port=metrics_port))
    run = asyncio.create_task(daemon.run())
    async with aiohttp.ClientSession() as session:
        try:
            async def ready() -> bool:
                assert not run.done(), run.result()  # a daemon that exited fails at once
                return await status_of(session, f"http://127.0.0.1:{probe_port}/readyz") == 200

            await eventually(ready, timeout=30, what="nmi ready")
            async with session.get(f"http://127.0.0.1:{port}/metadata/identity/oauth2/token",
                                   params={"resource": ARM}, headers={"Metadata": "true"}) as response:
                assert response.status == 200
                assert (await response.json())["client_id"] == VM.client_id
            async with session.get(f"http://127.0.0.1:{metrics_port}/metrics") as response:
                assert 'namespace="default"' in await response.text()
        finally:
            daemon.stop.set()
            assert await asyncio.wait_for(run, 30) == 0
        assert daemon.state is not None and daemon.state.shutting_down
        assert await status_of(session, f"http://127.0.0.1:{port}/metadata/identity/oauth2/token") == 0


async def test_a_port_in_use_is_a_startup_error_naming_its_flag(apiserver, imds, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        probe_port, metrics_port = unused_ports(2)
        daemon = Daemon(daemon_settings(tmp_path, apiserver, imds, port=port, probe_port=probe_port,
                                        metrics_port=metrics_port))
        with pytest.raises(StartupError, match=f"--nmi-port: cannot listen on 127.0.0.1:{port}"):
            await asyncio.wait_for(daemon.run(), 30)
    async with aiohttp.ClientSession() as session:  # the probe port, bound before, was released
        assert await status_of(session, f"http://127.0.0.1:{probe_port}/healthz") == 0
