"""Start-up, readiness and shutdown of the real nmi process."""

import signal
import subprocess
import sys
import threading
import time

import pytest

from demo.netns import REPO
from fakes.background import BackgroundFakes
from fakes.imds import VmIdentity
from fakes.kubeobjects import make_binding, make_identity, make_pod

from tests.e2e.harness import NmiProcess
from tests.eventually import eventually

A = VmIdentity(client_id="aaaaaaaa-1111-4111-8111-aaaaaaaaaaaa")


def run_nmi(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nmi", *args], capture_output=True, text=True, timeout=60,
                          env=env)


def one_line_without_traceback(result: subprocess.CompletedProcess) -> str:
    output = (result.stdout + result.stderr).strip()
    assert "Traceback" not in output
    lines = output.splitlines()
    assert len(lines) == 1, output
    return lines[0]


def test_no_kubernetes_configuration_exits_1_with_one_line(tmp_path):
    kubelet = tmp_path / "kubelet"
    kubelet.write_text("")
    result = run_nmi(f"--kubelet-config={kubelet}", "--manage-iptables=false", env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 1
    assert "--kubeconfig" in one_line_without_traceback(result)


def test_kubenet_is_refused_unless_allowed(tmp_path):
    kubelet = tmp_path / "kubelet"
    kubelet.write_text("KUBELET_FLAGS=--network-plugin=kubenet --max-pods=110\n")
    result = run_nmi(f"--kubelet-config={kubelet}", "--manage-iptables=false")
    assert result.returncode == 1
    assert "--allow-network-plugin-kubenet" in one_line_without_traceback(result)


def test_unreadable_kubelet_config_is_refused(tmp_path):
    result = run_nmi(f"--kubelet-config={tmp_path / 'missing'}", "--manage-iptables=false")
    assert result.returncode == 1
    assert "--kubelet-config" in one_line_without_traceback(result)


@pytest.fixture
def fakes():
    with BackgroundFakes([A]) as fakes:
        fakes.put_all([make_identity("id-a", "ns", client_id=A.client_id),
                       make_binding("b", "ns", identity="id-a", selector="a"),
                       make_pod("app", "ns", "127.0.0.1", "life-node", labels={"aadpodidbinding": "a"})])
        yield fakes


def test_port_in_use_exits_1_naming_the_flag(fakes, tmp_path):
    nmi = NmiProcess(tmp_path, fakes, node="life-node", extra=["--operation-mode=managed", "--forceNamespaced"])
    import socket
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", nmi.port))
        busy.listen()
        result = subprocess.run(nmi.argv, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "--nmi-port" in one_line_without_traceback(result)


def test_not_ready_until_caches_sync_then_ready(fakes, tmp_path):
    fakes.call(lambda: fakes.api.fail_next(4, status=500, path_prefix="/api/v1/pods"))
    nmi = NmiProcess(tmp_path, fakes, node="life-node", extra=["--operation-mode=managed", "--forceNamespaced"])
    nmi.spawn()
    try:
        seen = set()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                answer = nmi.get("/readyz", port=nmi.probe_port, timeout=2)
            except OSError:
                time.sleep(0.05)
                continue
            seen.add((answer.status, answer.body.split(":")[0]))
            if answer.status == 200:
                break
            time.sleep(0.05)
        assert (503, "not ready") in seen and (200, "ok") in seen
        assert nmi.get("/healthz", port=nmi.probe_port).body == "Active"  # no chain to wait for here
    finally:
        assert nmi.stop() == 0


def test_sigterm_drains_in_flight_requests_and_turns_not_ready(fakes, tmp_path):
    nmi = NmiProcess(tmp_path, fakes, node="life-node", extra=["--operation-mode=managed", "--forceNamespaced"])
    nmi.start()
    try:
        fakes.call(lambda: setattr(fakes.imds, "response_delay", 1.5))
        asked_before = fakes.call(lambda: fakes.imds.token_requests)
        result = {}
        caller = threading.Thread(target=lambda: result.update(answer=nmi.token(resource="https://slow.example/")))
        caller.start()
        eventually(lambda: fakes.call(lambda: fakes.imds.token_requests) > asked_before, timeout=10,
                   what="the request in flight at IMDS")
        nmi.proc.send_signal(signal.SIGTERM)
        readiness = eventually(lambda: (a := nmi.get("/readyz", port=nmi.probe_port, timeout=2)).status == 503 and a,
                               timeout=5, interval=0.05, what="not ready once SIGTERM is handled")
        caller.join(10)
        assert readiness.status == 503 and "shutting down" in readiness.body
        assert result["answer"].status == 200  # the request in flight was served, not cut off
        assert nmi.proc.wait(15) == 0
    finally:
        fakes.call(lambda: setattr(fakes.imds, "response_delay", 0.0))
        nmi.stop()


def test_custom_user_agent_is_appended_to_the_kubernetes_client_user_agent(fakes, tmp_path):
    nmi = NmiProcess(tmp_path, fakes, node="life-node",
                     extra=["--operation-mode=managed", "--forceNamespaced", "--custom-user-agent=cluster-a/ops"])
    nmi.start()
    try:
        agents = fakes.call(lambda: {r.user_agent for r in fakes.api.requests_for("pods")})
        assert agents and all(a.startswith("nmi/") and a.endswith(" cluster-a/ops") for a in agents)
    finally:
        assert nmi.stop() == 0


def test_the_readme_demo_on_loopback_passes_where_namespaces_are_not_available():
    import os
    done = subprocess.run([sys.executable, "-m", "demo"], capture_output=True, text=True, timeout=300, cwd=REPO,
                          env={**os.environ, "NMI_DEMO_LOOPBACK": "1"})
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "running on loopback" in done.stdout and "all steps passed" in done.stdout
