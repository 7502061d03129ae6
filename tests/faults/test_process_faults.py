"""Process faults (issue 11 item 3) against the real nmi process: SIGTERM with token requests in flight, and
the xtables lock held by another process while nmi starts in a node network namespace.

SIGKILL (the DNAT left in place, pods refused until the next nmi, which converges to one chain and one jump)
is proved over the real DNAT path in tests/e2e/test_node_namespace.py."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import threading
import time
from urllib.parse import urlencode

import pytest

from demo import world
from demo.netns import REPO, Topology, netns_unavailable
from fakes.imds import Fault

from tests.faults.harness import FaultyNmi, assert_documented, eventually
from tests.faults.world import MANAGED_FLAGS, NODE, X, base_objects, pod

POD_IP = "127.0.0.71"
GRACE = 30  # the DaemonSet's terminationGracePeriodSeconds


def test_sigterm_with_requests_in_flight_answers_each_completely_and_exits_0(fakes, tmp_path):
    fakes.start()
    for obj in [*base_objects(), pod("inflight", POD_IP, "x")]:
        fakes.put(obj)
    nmi = FaultyNmi(tmp_path, fakes, node=NODE, extra=MANAGED_FLAGS)
    nmi.start()
    assert eventually(lambda: nmi.token(source=POD_IP).status == 200, timeout=10)  # cached from now on
    # Five upstream calls in flight (IMDS's concurrency cap): two finish within the drain, three hang past it.
    fakes.call(lambda: fakes.imds.fail_next(2, Fault(status=0, delay=0.5)))
    fakes.call(lambda: fakes.imds.fail_next(30, Fault(status=0, delay=60)))  # retries hang too
    answers: dict[str, object] = {}

    def ask(resource: str) -> None:
        query = urlencode({"api-version": "2018-02-01", "resource": resource})
        try:
            answers[resource] = nmi.get("/metadata/identity/oauth2/token?" + query, source=POD_IP,
                                        headers={"Metadata": "true"}, timeout=GRACE)
        except Exception as exc:  # noqa: BLE001 - a reset or a truncated answer is what this test hunts
            answers[resource] = exc

    callers = [threading.Thread(target=ask, args=(f"https://r{n}.example/",)) for n in range(5)]
    for caller in callers:
        caller.start()
    eventually(lambda: fakes.call(lambda: fakes.imds.in_flight) == 5, timeout=10, what="five calls in flight")
    cached = nmi.token(source=POD_IP)
    nmi.proc.send_signal(signal.SIGTERM)
    started = time.monotonic()
    assert nmi.proc.wait(GRACE) == 0, nmi.log()[-3000:]
    assert time.monotonic() - started < GRACE
    for caller in callers:
        caller.join(GRACE)
    assert cached.status == 200
    statuses = []
    for resource, answer in sorted(answers.items()):
        assert not isinstance(answer, Exception), f"{resource}: {answer!r}"
        statuses.append(answer.status)
        if answer.status == 200:
            assert answer.json["client_id"] == X.client_id and answer.json["resource"] == resource
        else:
            assert answer.status == 503, answer.body
            assert_documented(answer)
    assert len(statuses) == 5 and statuses.count(200) == 2, statuses
    nmi._log.close()


pytestmark_netns = pytest.mark.skipif(netns_unavailable() is not None, reason=str(netns_unavailable()))


@pytestmark_netns
def test_xtables_lock_held_by_another_process_delays_the_chain_never_corrupts_it(tmp_path):
    lock_path = tmp_path / "xtables.lock"
    holder = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(holder, fcntl.LOCK_EX)  # "kube-proxy" holds the lock
    log_path = tmp_path / "nmi.log"
    with Topology(pods=1) as topo, open(log_path, "w") as log:
        kubeconfig, kubelet = tmp_path / "kubeconfig", tmp_path / "kubelet"
        kubelet.write_text("")
        fakes = topo.node.popen(sys.executable, "-m", "demo.fakes", "--pod-ips", topo.pods[0].ip,
                                "--imds", "127.0.0.1:8089", "--kubeconfig", str(kubeconfig), cwd=REPO,
                                stdout=subprocess.PIPE, text=True)
        nmi = None
        try:
            assert "ready" in fakes.stdout.readline()
            argv = [sys.executable, "-m", "nmi", f"--node={world.NODE}", *MANAGED_FLAGS,
                    f"--nmi-listen-address={topo.node_ip}", "--http-probe-port=8085", "--prometheus-port=9090",
                    f"--kubeconfig={kubeconfig}", f"--kubelet-config={kubelet}", "--iptables-backend=nft",
                    "--ipt-update-interval-sec=1"]
            nmi = topo.node.popen(*argv, stdout=log, stderr=subprocess.STDOUT,
                                  env={**os.environ, "XTABLES_LOCKFILE": str(lock_path)})

            def probe(path: str) -> tuple[str, str]:
                done = topo.node.run("curl", "-s", "-w", "\n%{http_code}", f"http://127.0.0.1:8085{path}", check=False)
                body, _, status = done.stdout.rpartition("\n")
                return status, body

            # While the lock is held: up, not active, not ready, saying why; the nat table untouched.
            eventually(lambda: "xtables lock" in log_path.read_text(), timeout=30, what="lock contention reported")
            assert nmi.poll() is None
            assert probe("/healthz") == ("200", "Not Active")
            status, body = probe("/readyz")
            assert status == "503" and "chain" in body
            assert "aad-metadata" not in topo.node.run("iptables-nft-save", "-t", "nat").stdout
            os.close(holder)  # the other process lets go
            holder = -1
            eventually(lambda: probe("/readyz")[0] == "200", timeout=30, what="ready once the lock is free")
            saved = topo.node.run("iptables-nft-save", "-t", "nat").stdout
            assert saved.count("-j aad-metadata") == 1 and saved.count(":aad-metadata") == 1
            nmi.send_signal(signal.SIGTERM)
            assert nmi.wait(GRACE) == 0
        finally:
            if holder >= 0:
                os.close(holder)
            if nmi is not None and nmi.poll() is None:
                nmi.kill()
                nmi.wait(10)
            fakes.terminate()
            fakes.wait(10)
