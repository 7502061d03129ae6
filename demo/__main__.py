"""`python -m demo`: nmi's main job, end to end, on an embedded default.

With root (network namespaces): a node namespace holding nmi, a fake API server and a fake IMDS listening on
169.254.169.254:80, and three pod namespaces on a bridge. nmi installs the aad-metadata chain; unmodified
clients in the pods (curl, azure-identity, msrestazure) call http://169.254.169.254 and get tokens of their own
identities through the DNAT path. Without root: the same on loopback, pods told apart by source address.

Every step is checked; the demo exits non-zero if any step does not behave as described.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from fakes.ports import unused_ports
from . import world
from .netns import REPO, Topology, netns_unavailable
from .scenario import Scenario

PY = sys.executable


def _wait_for_line(proc: subprocess.Popen, expected: str, *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline() if proc.stdout else ""
        if expected in line:
            return
        if proc.poll() is not None:
            raise SystemExit(f"demo: helper process exited early (code {proc.returncode})")
    raise SystemExit(f"demo: helper process did not print {expected!r} in {timeout}s")


def _stop(proc: subprocess.Popen, *, timeout: float = 10) -> int:
    if proc.poll() is None:
        proc.terminate()
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def run_in_namespaces(tmp: Path) -> int:
    with Topology(pods=3) as topo, ExitStack() as stack:
        node = topo.node
        # The node's own IMDS: the fake answers on 169.254.169.254 inside the node namespace, so nmi's own
        # calls (OUTPUT, never redirected) reach it exactly as they would reach Azure's on a real node.
        node.run("ip", "addr", "add", "169.254.169.254/32", "dev", "lo")
        ips = [p.ip for p in topo.pods]
        kubeconfig, kubelet = tmp / "kubeconfig", tmp / "kubelet"
        kubelet.write_text("")
        fakes = node.popen(PY, "-m", "demo.fakes", "--pod-ips", ",".join(ips), "--imds", "169.254.169.254:80",
                           "--kubeconfig", str(kubeconfig), cwd=REPO, stdout=subprocess.PIPE, text=True)
        stack.callback(_stop, fakes)
        _wait_for_line(fakes, "ready", timeout=20)
        log_path = tmp / "nmi.log"
        argv = [PY, "-m", "nmi", f"--node={world.NODE}", "--operation-mode=managed", "--forceNamespaced",
                f"--nmi-listen-address={topo.node_ip}", "--http-probe-port=8085", "--prometheus-port=9090",
                f"--kubeconfig={kubeconfig}", f"--kubelet-config={kubelet}", "--ipt-update-interval-sec=5"]
        print("$ ip netns exec <node> " + " ".join(["nmi", *argv[3:]]))
        with open(log_path, "w") as log_file:
            nmi = node.popen(*argv, stdout=log_file, stderr=subprocess.STDOUT)
        stack.callback(_stop, nmi)
        scenario = Scenario(
            node_run=node.run,
            pod_runs={p.name: topo.pods[i].ns.run for i, p in enumerate(world.pods_for(ips))},
            imds_url="http://169.254.169.254", probe_url="http://127.0.0.1:8085", metrics_url="http://127.0.0.1:9090",
            env={}, over_dnat=True, log_path=log_path)
        ok = scenario.play(nmi)
        return 0 if ok else 1


def run_on_loopback(tmp: Path) -> int:
    """Pods are 127.0.0.1 (frontend, so azure-identity works unmodified but for the authority host), .2, .3."""
    ips = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
    imds_port, token_port, probe_port, metrics_port = unused_ports(4)
    kubeconfig, kubelet = tmp / "kubeconfig", tmp / "kubelet"
    kubelet.write_text("")
    with ExitStack() as stack:
        fakes = subprocess.Popen([PY, "-m", "demo.fakes", "--pod-ips", ",".join(ips),
                                  "--imds", f"127.0.0.1:{imds_port}", "--kubeconfig", str(kubeconfig)],
                                 cwd=REPO, stdout=subprocess.PIPE, text=True)
        stack.callback(_stop, fakes)
        _wait_for_line(fakes, "ready", timeout=20)
        log_path = tmp / "nmi.log"
        argv = [PY, "-m", "nmi", f"--node={world.NODE}", "--operation-mode=managed", "--forceNamespaced",
                f"--nmi-port={token_port}", f"--http-probe-port={probe_port}", f"--prometheus-port={metrics_port}",
                "--metadata-ip=127.0.0.1", f"--metadata-port={imds_port}", f"--kubeconfig={kubeconfig}",
                f"--kubelet-config={kubelet}", "--manage-iptables=false"]
        print("$ " + " ".join(["nmi", *argv[3:]]))
        with open(log_path, "w") as log_file:
            nmi = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT)
        stack.callback(_stop, nmi)

        def local_run(source: str):
            def run(*argv: str, check: bool = True, timeout: float = 30, **kw):
                if argv[0] == "curl":
                    argv = (argv[0], "--interface", source, *argv[1:])
                done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=kw.get("env"))
                return done
            return run

        scenario = Scenario(
            node_run=local_run("127.0.0.1"),
            pod_runs={p.name: local_run(p.ip) for p in world.pods_for(ips)},
            imds_url=f"http://127.0.0.1:{token_port}", probe_url=f"http://127.0.0.1:{probe_port}",
            metrics_url=f"http://127.0.0.1:{metrics_port}",
            env={"AZURE_POD_IDENTITY_AUTHORITY_HOST": f"http://127.0.0.1:{token_port}"},
            over_dnat=False, log_path=log_path)
        return 0 if scenario.play(nmi) else 1


def main() -> None:
    reason = "NMI_DEMO_LOOPBACK is set" if os.environ.get("NMI_DEMO_LOOPBACK") else netns_unavailable()
    with tempfile.TemporaryDirectory(prefix="nmi-demo-") as tmp:
        if reason is None:
            print("nmi demo: network namespaces available: pods reach nmi through the real DNAT path\n")
            code = run_in_namespaces(Path(tmp))
        else:
            print(f"nmi demo: no network namespaces ({reason}); running on loopback without iptables\n")
            code = run_on_loopback(Path(tmp))
    raise SystemExit(code)


if __name__ == "__main__":
    main()
