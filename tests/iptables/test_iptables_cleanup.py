"""`nmi cleanup` in a real namespace: every rule nmi writes goes, from both backends, and nothing else."""

from __future__ import annotations

import subprocess
import sys

from iptables.failclosed import REJECT_CHAIN
from tests.iptables.netns import REPO, Namespace

FOREIGN_NAT = "-A PREROUTING -p udp -m udp --dport 53 -j ACCEPT"
FOREIGN_FILTER = "-A FORWARD -p tcp -m tcp --dport 22 -j ACCEPT"


def cleanup(ns: Namespace, tmp_path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(ns.argv(sys.executable, "-m", "nmi", "cleanup", "--xtables-lock",
                                  str(tmp_path / "xtables.lock"), *args),
                          cwd=REPO, capture_output=True, text=True, timeout=60, check=False)


def lines(ns: Namespace, mode: str) -> list[str]:
    text = ns.run(f"iptables-{mode}-save").stdout
    return [line for line in text.splitlines() if line.startswith(("-A", ":aad"))]


def test_cleanup_removes_chains_jumps_and_rejects_of_both_backends_and_keeps_the_rest(netns: Namespace,
                                                                                     start_agent, tmp_path):
    for mode in ("legacy", "nft"):
        netns.run(f"iptables-{mode}", "-t", "nat", *FOREIGN_NAT.split())
        netns.run(f"iptables-{mode}", *FOREIGN_FILTER.split())
    # nft: serving, plus a stray jump an operator added; legacy: fail-closed for another metadata port.
    start_agent("serve", "--backend", "nft").call("converge")
    netns.run("iptables-nft", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-j", "aad-metadata")
    closed = start_agent("serve", "--backend", "legacy", "--metadata-port", "8080")
    closed.call("converge")
    closed.call("fail-closed")
    netns.run("iptables-legacy", "-A", "OUTPUT", "-j", REJECT_CHAIN)
    assert any(REJECT_CHAIN in line for line in lines(netns, "legacy"))

    done = cleanup(netns, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines() == [
        "nft: remove 2 jump(s) to aad-metadata; remove chain aad-metadata",
        f"legacy: remove 3 jump(s) to {REJECT_CHAIN}; remove chain {REJECT_CHAIN}",
    ]
    for mode in ("legacy", "nft"):
        assert sorted(lines(netns, mode)) == sorted([FOREIGN_NAT, FOREIGN_FILTER])
    again = cleanup(netns, tmp_path)
    assert again.returncode == 0
    assert again.stdout.splitlines() == ["nft: nothing to remove", "legacy: nothing to remove"]


def test_cleanup_of_a_clean_node_succeeds_and_creates_no_legacy_tables(netns: Namespace, tmp_path):
    done = cleanup(netns, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["nft: nothing to remove", "legacy: no legacy tables in use, nothing to remove"]
    # Opening legacy tables to look would have created them, and iptables-nft would then warn on every call.
    assert netns.run("cat", "/proc/net/ip_tables_names").stdout == ""


def test_cleanup_rejects_an_unknown_backend(netns: Namespace, tmp_path):
    done = cleanup(netns, tmp_path, "--iptables-backend", "bpf")
    assert done.returncode == 2 and "invalid choice" in done.stderr


def test_a_backend_that_cannot_be_used_fails_only_when_asked_for_by_name(netns: Namespace, tmp_path):
    env_path = str(tmp_path / "empty-bin")  # no iptables binaries at all
    (tmp_path / "empty-bin").mkdir()

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        argv = ["env", f"PATH={env_path}", sys.executable, "-m", "nmi", "cleanup", "--xtables-lock",
                str(tmp_path / "xtables.lock"), *args]
        return subprocess.run(netns.argv(*argv), cwd=REPO, capture_output=True, text=True, timeout=60, check=False)

    named = run("--iptables-backend", "nft")
    assert named.returncode == 1 and "iptables-nft-save not found" in named.stdout
    every = run()  # nmi cannot have written nft rules where nft cannot run; no legacy tables in use here
    assert every.returncode == 0, every.stdout + every.stderr
    assert every.stdout.splitlines()[1] == "legacy: no legacy tables in use, nothing to remove"
