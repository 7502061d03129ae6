"""Fail-closed against the real kernel, both backends: the swap and its way back, observed continuously and
through a pod's traffic (IMDS on the node: INPUT; IMDS beyond the node: FORWARD)."""

from __future__ import annotations

import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from iptables.failclosed import REJECT_CHAIN
from iptables.rules import ChainSpec
from tests.iptables.agent_process import Agent
from tests.iptables.netns import Namespace, Topology, curl_argv
from tests.iptables.sampling import sampling

METADATA = "169.254.169.254"
URL = f"http://{METADATA}/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://vault.azure.net"


def swap_agent(start_agent, ns: Namespace, mode: str, spec: ChainSpec, *, gate: Path | None = None) -> Agent:
    args = ["serve", "--backend", mode, "--target-ip", spec.target_ip]
    if gate is not None:
        args += ["--restore-command", f"{sys.executable} -m tests.iptables.slow_restore {gate}"]
    agent = start_agent(*args, ns=ns)
    agent.wait_for(lambda event: event.get("event") == "ready")
    return agent


@contextmanager
def gatekeeper(gate: Path, samples: list) -> Iterator[None]:
    """Lets slow_restore's held moments between commits go, each once a whole sample was taken inside it."""
    stop = threading.Event()

    def run() -> None:
        released: set[str] = set()
        while not stop.is_set():
            for marker in gate.glob("committed-*"):
                name = marker.name.removeprefix("committed-")
                if name not in released:
                    seen = len(samples)
                    deadline = time.monotonic() + 20
                    while len(samples) < seen + 2 and time.monotonic() < deadline and not stop.is_set():
                        time.sleep(0.005)
                    (gate / f"go-{name}").touch()
                    released.add(name)
            time.sleep(0.005)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(10)


@pytest.mark.parametrize("mode, held", [("legacy", False), ("nft", False), ("nft", True)],
                         ids=["legacy", "nft", "nft-held-between-commits"])
def test_rules_sampled_throughout_the_swaps_always_show_the_dnat_or_the_reject(netns: Namespace, start_agent,
                                                                             tmp_path, mode, held):
    spec = ChainSpec(METADATA, 80, "127.0.0.1", 2579)
    agent = swap_agent(start_agent, netns, mode, spec, gate=tmp_path if held else None)
    agent.call("converge")
    for _ in range(2):
        with sampling(netns, mode, spec, first="nat") as closing, gatekeeper(tmp_path, closing):
            assert agent.call("fail-closed", timeout=60)["reasons"]
        with sampling(netns, mode, spec, first="filter") as opening, gatekeeper(tmp_path, opening):
            assert agent.call("converge", timeout=60)["reasons"]
        assert closing[0] == (True, False) and closing[-1] == (False, True)
        assert opening[0] == (False, True) and opening[-1] == (True, False)
        assert all(dnat or reject for dnat, reject in closing + opening), closing + opening
        if held:  # the moment between the two commits was seen: both in place, never neither
            assert (True, True) in closing and (True, True) in opening


@pytest.fixture
def off_node_imds(topology: Topology) -> Iterator[Namespace]:
    """IMDS beyond the node, as on Azure: a namespace holding 169.254.169.254, routed through the node."""
    with Namespace("imds") as imds:
        node = topology.node
        node.run("ip", "link", "add", "vimds", "type", "veth", "peer", "name", "eth0", "netns", imds.name)
        node.run("ip", "addr", "add", "192.168.255.1/30", "dev", "vimds")
        node.run("ip", "link", "set", "vimds", "up")
        imds.run("ip", "addr", "add", "192.168.255.2/30", "dev", "eth0")
        imds.run("ip", "link", "set", "eth0", "up")
        imds.run("ip", "addr", "add", f"{METADATA}/32", "dev", "lo")
        imds.run("ip", "route", "add", "default", "via", "192.168.255.1")
        node.run("ip", "route", "add", f"{METADATA}/32", "via", "192.168.255.2")
        node.sysctl("net.ipv4.ip_forward", "1")
        yield imds


CONNECT = ("import socket\n"
           "try:\n    socket.create_connection(('169.254.169.254', 80), timeout=3).close(); print('connected')\n"
           "except OSError as exc:\n    print(type(exc).__name__)\n")


def connect(ns: Namespace) -> str:
    """How a bare TCP connect to the metadata address ends: connected, ConnectionRefusedError (a reset to the
    SYN), TimeoutError, ..."""
    return ns.run(sys.executable, "-c", CONNECT).stdout.strip()


def answer(ns: Namespace) -> tuple[str, str]:
    """(who answered: a server name or "", curl's error) for a token request from `ns`."""
    import json

    done = ns.run(*curl_argv(URL, max_time=3), check=False)
    body, _, code = done.stdout.rpartition("\n")
    return (json.loads(body)["server"] if code == "200" else ""), done.stderr.strip()


# nft with IMDS on the node is also run by tests/e2e/test_fail_closed.py, with the real nmi.
@pytest.mark.parametrize("mode, where", [("legacy", "on the node (INPUT)"), ("legacy", "beyond the node (FORWARD)"),
                                         ("nft", "beyond the node (FORWARD)")])
def test_a_pods_connection_is_reset_while_closed_and_never_reaches_imds(topology: Topology, start_agent, mode,
                                                                       request, where):
    node = topology.node
    if where.startswith("on the node"):
        node.run("ip", "addr", "add", f"{METADATA}/32", "dev", "lo")
        imds_ns = node
    else:
        imds_ns = request.getfixturevalue("off_node_imds")
    for name, ns, host, port in (("imds", imds_ns, METADATA, "80"), ("nmi", node, topology.node_ip, "2579")):
        start_agent("echo-server", "--host", host, "--port", port, "--name", name,
                    ns=ns).wait_for(lambda event: event.get("event") == "listening")
    pod = topology.pods[0].ns
    assert answer(pod)[0] == "imds"  # no rules: the fail-open the reject exists to prevent
    spec = ChainSpec(METADATA, 80, topology.node_ip, 2579)
    agent = swap_agent(start_agent, node, mode, spec)
    agent.call("converge")
    assert answer(pod)[0] == "nmi"

    agent.call("fail-closed")
    assert answer(pod)[0] == ""
    assert connect(pod) == connect(topology.pods[1].ns) == "ConnectionRefusedError"  # reset at once, no timeout
    assert answer(node)[0] == "imds"  # nmi's own calls (local source) still reach the metadata service
    counters = node.run(f"iptables-{mode}", "-t", "filter", "-L", REJECT_CHAIN, "-v", "-n", "-x").stdout
    assert int(counters.splitlines()[2].split()[0]) >= 2  # the pods' SYNs hit the reject

    agent.call("converge")
    assert answer(pod)[0] == "nmi"
    assert REJECT_CHAIN not in node.run(f"iptables-{mode}-save").stdout


def test_doctor_reports_nothing_when_the_metadata_address_leads_nowhere(topology: Topology):
    # No chain, no IMDS, a node that does not forward: the SYN is dropped. Fail-closed, by accident.
    done = topology.pods[0].ns.run(sys.executable, "-m", "nmi", "doctor", "--timeout", "0.5", check=False)
    assert done.returncode == 3, done.stdout + done.stderr
    assert "169.254.169.254:80 reaches nothing: no answer within 0.5s (dropped)" in done.stdout
