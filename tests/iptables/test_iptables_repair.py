"""The supervisor in a real namespace: drift repaired at the next check, clean stop, restart after SIGKILL."""

from __future__ import annotations

import pytest

from iptables.rules import ChainSpec
from tests.iptables.agent_process import Agent
from tests.iptables.netns import Namespace, ipt, nat_lines

SPEC = ChainSpec("169.254.169.254", 80, "127.0.0.1", 2579)
JUMP, *CHAIN_LINES = SPEC.save_lines()
FOREIGN = "-A PREROUTING -p udp -m udp --dport 53 -j ACCEPT"

# (what an operator or another agent does, the repair reported, the -A lines once repaired)
TAMPERING = [
    (("-D", "aad-metadata", "1"), "chain aad-metadata lacks", [JUMP, *CHAIN_LINES]),
    (("-D", "PREROUTING", "-j", "aad-metadata"), "jump to aad-metadata missing", [JUMP, *CHAIN_LINES]),
    (("-F", "aad-metadata"), "chain aad-metadata is empty", [JUMP, *CHAIN_LINES]),
    (("-I", "PREROUTING", "1", "-p", "udp", "-m", "udp", "--dport", "53", "-j", "ACCEPT"),
     "jump to aad-metadata is not first", [JUMP, FOREIGN, *CHAIN_LINES]),
    (("-A", "PREROUTING", "-j", "aad-metadata"), "2 jumps to aad-metadata", [JUMP, FOREIGN, *CHAIN_LINES]),
    (("-A", "aad-metadata", "-j", "ACCEPT"), "extra rule '-j ACCEPT'", [JUMP, FOREIGN, *CHAIN_LINES]),
]


def start_supervisor(start_agent, mode: str) -> Agent:
    agent = start_agent("supervise", "--backend", mode, "--interval", "0.2")
    agent.wait_for(lambda event: event.get("event") == "state" and event["ok"])
    return agent


def test_supervisor_repairs_each_kind_of_tampering_and_stops_cleanly(netns: Namespace, mode: str, start_agent):
    agent = start_supervisor(start_agent, mode)
    assert nat_lines(netns, mode) == [JUMP, *CHAIN_LINES]
    for change, reason, repaired in TAMPERING:
        ipt(netns, mode, *change)
        repair = agent.wait_for(lambda event: event.get("event") in ("repair", "state"))
        assert repair["event"] == "repair", f"after {change}: {repair}"
        assert reason in repair["reason"]
        assert nat_lines(netns, mode) == repaired, f"after {change}"
    assert agent.stop() == 0
    assert agent.wait_for(lambda event: event.get("event") == "stopped")
    assert [event for event in agent.seen if event.get("event") == "state"][-1] == {"event": "state", "ok": False}
    assert nat_lines(netns, mode) == ["-A PREROUTING -p udp -m udp --dport 53 -j ACCEPT"]
    assert ":aad-metadata" not in netns.run(f"iptables-{mode}-save", "-t", "nat").stdout


@pytest.mark.parametrize("leftover", ["as left", "with a duplicate jump"])
def test_restart_after_sigkill_leaves_exactly_one_jump_and_one_chain(netns: Namespace, mode: str, start_agent,
                                                                     leftover):
    first = start_supervisor(start_agent, mode)
    first.kill()
    # Killed without cleanup: the redirect stays (pods keep being sent to nmi, never to the real IMDS).
    assert nat_lines(netns, mode) == [JUMP, *CHAIN_LINES]
    if leftover == "with a duplicate jump":
        ipt(netns, mode, "-A", "PREROUTING", "-j", "aad-metadata")
    second = start_supervisor(start_agent, mode)
    save = netns.run(f"iptables-{mode}-save", "-t", "nat").stdout
    assert save.count(":aad-metadata ") == 1
    assert nat_lines(netns, mode) == [JUMP, *CHAIN_LINES]
    assert second.stop() == 0
    assert nat_lines(netns, mode) == []
