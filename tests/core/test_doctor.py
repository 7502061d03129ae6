"""`nmi doctor` on loopback: the real token app says it is nmi, the fake IMDS does not, a closed port is nothing.
(In network namespaces, behind the real DNAT and the real reject: tests/e2e/test_fail_closed.py.)"""

from __future__ import annotations

import asyncio
import json
import socket

import pytest
from aiohttp import web

from nmi import doctor
from nmi.broker import MANAGED, BrokerPolicy, TokenBroker
from fakes.imds import FakeImds, VmIdentity
from nmi.proxy import ImdsProxy
from nmi.readiness import DaemonState
from nmi.server import TokenServerConfig, token_app

from tests.core.doubles import Catalog, Pods, Tokens, pod


@pytest.mark.parametrize("header_required", [True, False])
async def test_the_token_app_answers_the_probe_as_nmi_without_issuing_a_token(aiohttp_server, header_required):
    tokens = Tokens()
    pods = Pods(pod("caller", "127.0.0.1", label="app"))  # the probe comes from a known pod: still no token
    broker = TokenBroker(pods, Catalog(), tokens, policy=BrokerPolicy(mode=MANAGED, namespaced=True))
    proxy = ImdsProxy("127.0.0.1", 9, timeout=1)
    config = TokenServerConfig(metadata_header_required=header_required)
    server = await aiohttp_server(token_app(broker, config=config, state=DaemonState(), proxy=proxy))
    diagnosis = await asyncio.to_thread(doctor.probe, "127.0.0.1", server.port, timeout=5)
    await proxy.close()
    assert (diagnosis.outcome, diagnosis.exit_code, diagnosis.status) == ("nmi", 0, 400)
    assert diagnosis.server.startswith("nmi/")
    assert tokens.calls == []


async def test_imds_answering_directly_is_fail_open_with_exit_1():
    imds = FakeImds([VmIdentity(client_id="c0ffee00-0000-4000-8000-000000000001", system_assigned=True)])
    await imds.start("127.0.0.1", 0)
    try:
        diagnosis = await asyncio.to_thread(doctor.probe, "127.0.0.1", imds.port, timeout=5)
    finally:
        await imds.stop()
    assert (diagnosis.outcome, diagnosis.exit_code, diagnosis.status) == ("imds", 1, 400)
    assert "not by nmi" in diagnosis.detail and "FAIL-OPEN" in doctor.render_text(diagnosis)


async def test_a_listener_mimicking_nothing_but_tcp_is_not_taken_for_nmi(aiohttp_server):
    async def bare(request: web.Request) -> web.Response:
        return web.Response(text="hello", headers={"Server": "IMDS/150.870.65.1325"})

    app = web.Application()
    app.router.add_get("/{tail:.*}", bare)
    server = await aiohttp_server(app)
    diagnosis = await asyncio.to_thread(doctor.probe, "127.0.0.1", server.port, timeout=5)
    assert diagnosis.outcome == "imds" and diagnosis.server == "IMDS/150.870.65.1325"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_closed_port_is_nothing_with_exit_3_in_text_and_json(capsys):
    port = str(free_port())
    assert doctor.main(["--metadata-ip", "127.0.0.1", "--metadata-port", port]) == 3
    text = capsys.readouterr().out
    assert f"127.0.0.1:{port} reaches nothing: connection refused (TCP reset)" in text and "Fail-closed" in text
    assert doctor.main(["--metadata-ip", "127.0.0.1", "--metadata-port", port, "-o", "json"]) == 3
    out = json.loads(capsys.readouterr().out)
    assert (out["outcome"], out["target"], out["status"]) == ("nothing", f"127.0.0.1:{port}", None)


@pytest.mark.parametrize("argv", [["--metadata-ip", "metadata"], ["--metadata-port", "0"], ["--timeout", "0"],
                                  ["-o", "yaml"]])
def test_bad_usage_exits_2(argv, capsys):
    with pytest.raises(SystemExit) as exited:
        doctor.main(argv)
    assert exited.value.code == 2
