"""--fail-closed with the real nmi in a node namespace: SIGTERM swaps the DNAT for the reject under pod traffic
(no pod request ever reaches the fake IMDS listening on the node), the next nmi swaps back, both swaps sampled
throughout; `nmi doctor` names each state; `nmi cleanup` leaves nothing."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest

from iptables.failclosed import REJECT_CHAIN, reject_save_lines
from iptables.rules import ChainSpec
from demo.netns import REPO, netns_unavailable
from tests.e2e.test_node_namespace import chain_lines, pod_token, start_nmi
from tests.iptables.sampling import sampling

pytestmark = pytest.mark.skipif(netns_unavailable() is not None, reason=str(netns_unavailable()))


def doctor(ns, *args: str) -> tuple[int, dict]:
    done = ns.run(sys.executable, "-m", "nmi", "doctor", "-o", "json", "--timeout", "2", *args, check=False)
    return done.returncode, json.loads(done.stdout)


def reject_lines(ns, backend: str) -> list[str]:
    text = ns.run(f"iptables-{backend}-save", "-t", "filter").stdout
    return [line for line in text.splitlines() if REJECT_CHAIN in line and line.startswith("-A")]


class PodTraffic:
    """The doctor's probe in a loop inside a pod, for as long as the block runs."""

    def __init__(self, pod_ns) -> None:
        self.proc = pod_ns.popen(sys.executable, "-m", "tests.e2e.prober", cwd=REPO, stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True)

    def __enter__(self) -> "PodTraffic":
        assert self.proc.stdout.readline().strip() == "probing"
        return self

    def __exit__(self, *exc_info) -> None:
        out, _ = self.proc.communicate("stop\n", timeout=20)
        self.outcomes = json.loads(out)


def test_sigterm_swaps_to_the_reject_and_the_next_nmi_swaps_back_never_leaving_pods_to_imds(node, tmp_path):
    # One backend here (the swap itself is tested on both in tests/iptables); nft is every current default.
    backend = "nft"
    topo, kubeconfig, kubelet = node  # the fake IMDS listens on 169.254.169.254:80 in the node namespace
    pod = topo.pods[0].ns
    spec = ChainSpec("169.254.169.254", 80, topo.node_ip, 2579)
    code, diagnosis = doctor(pod)
    assert (code, diagnosis["outcome"]) == (1, "imds")  # no nmi, no chain: fail-open, and the doctor says so

    log = (tmp_path / "nmi.log").open("w")
    nmi = start_nmi(topo, kubeconfig, kubelet, backend, log, extra=["--fail-closed"])
    code, diagnosis = doctor(pod)
    assert (code, diagnosis["outcome"]) == (0, "nmi") and diagnosis["server"].startswith("nmi/")
    assert pod_token(topo)[0] == 200

    with log, PodTraffic(pod) as traffic:
        with sampling(topo.node, backend, spec, first="nat") as closing:
            nmi.send_signal(signal.SIGTERM)
            assert nmi.wait(20) == 0
        assert chain_lines(topo.node, backend) == []
        assert reject_lines(topo.node, backend) == list(reject_save_lines(spec))
        code, diagnosis = doctor(pod)
        assert (code, diagnosis["outcome"]) == (3, "nothing") and "refused" in diagnosis["detail"]
        assert doctor(topo.node)[1]["outcome"] == "imds"  # the node itself still reaches the metadata service

        with sampling(topo.node, backend, spec, first="filter") as opening:
            nmi = start_nmi(topo, kubeconfig, kubelet, backend, log, extra=["--fail-closed"])
        assert reject_lines(topo.node, backend) == []
        assert doctor(pod)[1]["outcome"] == "nmi" and pod_token(topo)[0] == 200

        nmi.send_signal(signal.SIGINT)  # SIGINT too
        assert nmi.wait(20) == 0
    assert closing[0] == (True, False) and closing[-1] == (False, True)
    assert opening[0] == (False, True) and opening[-1] == (True, False)
    assert all(dnat or reject for dnat, reject in closing + opening)
    assert traffic.outcomes.get("imds", 0) == 0, traffic.outcomes  # not one pod request answered by IMDS
    assert traffic.outcomes.get("nmi", 0) > 0 and traffic.outcomes.get("nothing", 0) > 0, traffic.outcomes
    assert reject_lines(topo.node, backend) == list(reject_save_lines(spec))

    done = topo.node.run(sys.executable, "-m", "nmi", "cleanup", check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert reject_lines(topo.node, backend) == [] and chain_lines(topo.node, backend) == []
    assert doctor(pod)[1]["outcome"] == "imds"  # uninstalled: pods reach IMDS again, as without nmi
