"""nmi as a real process in a node network namespace with real iptables: the DNAT path, repair, SIGKILL and
restart, SIGTERM clean-up — on both backends. Skipped only where namespaces cannot be made (not root)."""

import json
import signal
import subprocess
import sys
import time

import pytest

from demo import world
from demo.netns import REPO, curl_argv, netns_unavailable

pytestmark = pytest.mark.skipif(netns_unavailable() is not None, reason=str(netns_unavailable()))


def test_the_readme_demo_passes_over_the_real_dnat_path():
    done = subprocess.run([sys.executable, "-m", "demo"], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "network namespaces available" in done.stdout and "all steps passed" in done.stdout
    assert "msrestazure" in done.stdout and "azure-identity" in done.stdout


def chain_lines(node, backend: str) -> list[str]:
    out = node.run(f"iptables-{backend}-save", "-t", "nat").stdout
    return [line for line in out.splitlines() if "aad-metadata" in line and not line.startswith(":")]


def start_nmi(topo, kubeconfig, kubelet, backend, log, extra=()):
    argv = [sys.executable, "-m", "nmi", f"--node={world.NODE}", "--operation-mode=managed", "--forceNamespaced",
            f"--nmi-listen-address={topo.node_ip}", "--http-probe-port=8085", "--prometheus-port=9090",
            f"--kubeconfig={kubeconfig}", f"--kubelet-config={kubelet}", "--ipt-update-interval-sec=1",
            f"--iptables-backend={backend}", "--enable-conntrack-deletion", *extra]
    proc = topo.node.popen(*argv, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, "nmi exited"
        done = topo.node.run("curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "http://127.0.0.1:8085/readyz",
                             check=False)
        if done.stdout == "200":
            return proc
        time.sleep(0.1)
    raise AssertionError("nmi not ready")


TOKEN_URL = "http://169.254.169.254/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://vault.azure.net"


def pod_token(topo) -> tuple[int, dict]:
    done = topo.pods[0].ns.run(*curl_argv(TOKEN_URL), check=False)
    body, _, status = done.stdout.rpartition("\n")
    return int(status or 0), (json.loads(body) if status == "200" else {})


@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_chain_lifecycle_under_tampering_sigkill_restart_and_sigterm(node, tmp_path, backend):
    topo, kubeconfig, kubelet = node
    expected = [
        "-A PREROUTING -j aad-metadata",
        f"-A aad-metadata ! -s 127.0.0.1/32 -d 169.254.169.254/32 -p tcp -m tcp --dport 80 -j DNAT "
        f"--to-destination {topo.node_ip}:2579",
        "-A aad-metadata -j RETURN",
    ]
    with open(tmp_path / "nmi.log", "w") as log:
        nmi = start_nmi(topo, kubeconfig, kubelet, backend, log)
        assert chain_lines(topo.node, backend) == expected
        status, token = pod_token(topo)
        assert status == 200 and token["client_id"] == world.IDENTITIES[0].client_id

        topo.node.run(f"iptables-{backend}", "-w", "-t", "nat", "-D", "aad-metadata", "1")  # tamper: DNAT rule gone
        deadline = time.monotonic() + 5
        while chain_lines(topo.node, backend) != expected and time.monotonic() < deadline:
            time.sleep(0.1)
        assert chain_lines(topo.node, backend) == expected
        metrics = topo.node.run("curl", "-s", "http://127.0.0.1:9090/metrics").stdout
        assert "nmi_iptables_repairs_total" in metrics

        nmi.send_signal(signal.SIGKILL)
        nmi.wait(10)
        assert chain_lines(topo.node, backend) == expected  # left behind by the killed process
        # Until the next nmi, pods are refused (curl exit 7), never answered by the node's IMDS (issue 11 item 3).
        for _ in range(3):
            refused = topo.pods[0].ns.run(*curl_argv(TOKEN_URL, max_time=3), check=False)
            assert refused.returncode == 7 and refused.stdout.endswith("000"), (refused.returncode, refused.stdout)
        nmi = start_nmi(topo, kubeconfig, kubelet, backend, log)
        assert chain_lines(topo.node, backend) == expected  # exactly one jump, one chain
        assert pod_token(topo)[0] == 200

        nmi.send_signal(signal.SIGTERM)
        assert nmi.wait(20) == 0
    assert chain_lines(topo.node, backend) == []
    saved = topo.node.run(f"iptables-{backend}-save", "-t", "nat").stdout
    assert "aad-metadata" not in saved
    log_text = (tmp_path / "nmi.log").read_text()
    assert "conntrack" in log_text and "eyJ" not in log_text


def test_a_dying_root_task_exits_1_and_leaves_the_chain_so_pods_are_refused_never_answered_by_imds(node, tmp_path):
    """Fail closed (SPEC §7): conntrack deletion fails on purpose, which kills the iptables root task. The daemon
    exits 1, the DNAT stays, and the pod's call to the metadata address is refused instead of reaching the node's
    IMDS (which listens on 169.254.169.254:80 in this node namespace, holding every identity of the node)."""
    topo, kubeconfig, kubelet = node
    broken = tmp_path / "bin"
    broken.mkdir()
    (broken / "conntrack").write_text("#!/bin/sh\necho 'conntrack v1.4.7: Operation failed: broken on purpose' >&2\nexit 2\n")
    (broken / "conntrack").chmod(0o755)
    import os
    env = {**os.environ, "PATH": f"{broken}:{os.environ['PATH']}"}
    argv = [sys.executable, "-m", "nmi", f"--node={world.NODE}", "--operation-mode=managed", "--forceNamespaced",
            f"--nmi-listen-address={topo.node_ip}", "--http-probe-port=8085", "--prometheus-port=9090",
            f"--kubeconfig={kubeconfig}", f"--kubelet-config={kubelet}", "--iptables-backend=nft",
            "--enable-conntrack-deletion"]
    done = subprocess.run(["ip", "netns", "exec", topo.node.name, *argv], capture_output=True, text=True,
                          timeout=60, env=env)
    assert done.returncode == 1, done.stderr[-2000:]
    assert "iptables" in done.stderr and "conntrack" in done.stderr and "fail closed" in done.stderr
    assert any("DNAT" in line for line in chain_lines(topo.node, "nft"))  # the redirect outlives the daemon
    url = "http://169.254.169.254/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://vault.azure.net"
    refused = topo.pods[0].ns.run(*curl_argv(url, max_time=3), check=False)
    assert refused.returncode == 7 and refused.stdout.strip() == "000", refused  # connection refused, no answer
