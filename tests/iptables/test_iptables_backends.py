"""Both backends against the real kernel, each test in its own network namespace."""

from __future__ import annotations

import fcntl
import os
import time

import pytest

from iptables.rules import ChainSpec
from tests.iptables.agent_process import Agent, run_agent
from tests.iptables.netns import Namespace, ipt, nat_lines, nat_state

SPEC = ChainSpec("169.254.169.254", 80, "127.0.0.1", 2579)
FOREIGN = "-A PREROUTING -p udp -m udp --dport 53 -j ACCEPT"


def test_backend_installs_exactly_the_spec_rules_and_then_has_nothing_to_do(netns: Namespace, mode: str,
                                                                            backend_agent: Agent):
    assert backend_agent.call("converge")["reasons"] == [
        "chain aad-metadata missing", "jump to aad-metadata missing from PREROUTING"]
    assert nat_lines(netns, mode) == list(SPEC.save_lines())
    assert backend_agent.call("converge")["reasons"] == []


def test_rules_written_by_the_iptables_command_are_recognised_as_ours(netns: Namespace, mode: str,
                                                                      backend_agent: Agent):
    # The state upstream NMI (which shells out to iptables) leaves behind must not count as drift.
    ipt(netns, mode, "-N", "aad-metadata")
    for line in SPEC.save_lines()[1:]:
        ipt(netns, mode, *line.split())
    ipt(netns, mode, "-I", "PREROUTING", "1", "-j", "aad-metadata")
    read = backend_agent.call("read")["chains"]
    assert read["aad-metadata"] == list(SPEC.chain_rules)
    assert read["PREROUTING"] == ["-j aad-metadata"]
    assert backend_agent.call("converge")["reasons"] == []


def test_backend_repairs_many_drifts_in_one_commit_and_keeps_foreign_rules(netns: Namespace, mode: str,
                                                                          backend_agent: Agent):
    backend_agent.call("converge")
    ipt(netns, mode, "-I", "PREROUTING", "1", "-p", "udp", "-m", "udp", "--dport", "53", "-j", "ACCEPT")
    ipt(netns, mode, "-A", "PREROUTING", "-p", "tcp", "-g", "aad-metadata")
    ipt(netns, mode, "-D", "aad-metadata", "1")
    ipt(netns, mode, "-I", "aad-metadata", "1", "-j", "ACCEPT")
    assert backend_agent.call("converge")["reasons"] == [
        f"chain aad-metadata lacks {SPEC.dnat_rule!r}", "2 jumps to aad-metadata in PREROUTING"]
    jump, *chain = SPEC.save_lines()
    assert nat_lines(netns, mode) == [jump, FOREIGN, *chain]


def test_remove_leaves_no_chain_no_jump_and_other_rules_intact(netns: Namespace, mode: str, backend_agent: Agent):
    backend_agent.call("converge")
    ipt(netns, mode, "-A", "PREROUTING", "-p", "udp", "-m", "udp", "--dport", "53", "-j", "ACCEPT")
    ipt(netns, mode, "-A", "PREROUTING", "-j", "aad-metadata")
    assert backend_agent.call("remove")["reasons"] == ["remove 2 jump(s) to aad-metadata", "remove chain aad-metadata"]
    assert not nat_state(netns, mode).has_chain("aad-metadata")
    assert nat_lines(netns, mode) == [FOREIGN]
    assert backend_agent.call("remove")["reasons"] == []


@pytest.fixture
def held_lock(tmp_path):
    """A lock file held (flock) by the test process, standing in for kube-proxy mid-update."""
    path = str(tmp_path / "xtables.lock")
    holder = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(holder, fcntl.LOCK_EX)
    try:
        yield path, holder
    finally:
        os.close(holder)


def test_a_change_waits_while_another_process_holds_the_xtables_lock(netns: Namespace, mode: str, held_lock,
                                                                     start_agent):
    path, holder = held_lock
    agent = start_agent("serve", "--backend", mode, "--lock", path, "--lock-timeout", "30")
    agent.send("converge")
    agent.wait_for(lambda event: event.get("started"))
    time.sleep(0.3)  # unlocked, the change takes a few milliseconds
    assert agent.events.empty() and agent.proc.poll() is None
    assert not nat_state(netns, mode).has_chain("aad-metadata")
    fcntl.flock(holder, fcntl.LOCK_UN)
    agent.result("converge")
    assert nat_lines(netns, mode) == list(SPEC.save_lines())


def test_a_lock_held_too_long_fails_the_change_with_a_clear_error(netns: Namespace, mode: str, held_lock,
                                                                  start_agent):
    path, _ = held_lock
    agent = start_agent("serve", "--backend", mode, "--lock", path, "--lock-timeout", "0.2")
    agent.send("converge")
    answer = agent.wait_for(lambda event: event.get("op") and not event.get("started"))
    assert answer["error"].startswith("XtablesLockTimeout: xtables lock ")
    assert answer["error"].endswith("held by another process for more than 0.2s")
    assert not nat_state(netns, mode).has_chain("aad-metadata")


def test_lock_file_is_created_when_absent(netns: Namespace, tmp_path, start_agent):
    path = tmp_path / "run" / "xtables.lock"
    path.parent.mkdir()
    agent = start_agent("serve", "--backend", "nft", "--lock", str(path))
    agent.call("converge")
    assert path.exists() and (path.stat().st_mode & 0o777) == 0o600


@pytest.mark.parametrize("existing, expected", [
    (None, "nft"),
    ("legacy", "legacy"),
    ("nft", "nft"),
])
def test_detection_picks_the_backend_holding_the_nodes_rules(netns: Namespace, existing, expected):
    if existing:
        ipt(netns, existing, "-A", "PREROUTING", "-p", "udp", "-j", "ACCEPT")
    assert run_agent(netns, "detect")[-1]["mode"] == expected
