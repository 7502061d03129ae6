"""iptables views of a test namespace; the namespaces themselves come from `demo.netns` (shared with the demo)."""

from __future__ import annotations

from iptables.rules import ActualState, parse_save
from demo.netns import REPO, Namespace, Pod, Topology, curl_argv, netns_unavailable

__all__ = ["REPO", "Namespace", "Pod", "Topology", "curl_argv", "netns_unavailable", "nat_state", "nat_lines", "ipt"]


def nat_state(ns: Namespace, mode: str) -> ActualState:
    """Table nat as the node's own iptables-<mode>-save shows it."""
    return parse_save(ns.run(f"iptables-{mode}-save", "-t", "nat").stdout)


def nat_lines(ns: Namespace, mode: str) -> list[str]:
    """The `-A` lines of table nat, in iptables-save order."""
    text = ns.run(f"iptables-{mode}-save", "-t", "nat").stdout
    return [line for line in text.splitlines() if line.startswith("-A ")]


def ipt(ns: Namespace, mode: str, *args: str) -> None:
    """Tamper the way an operator would: with the iptables command of that backend."""
    ns.run(f"iptables-{mode}", "-w", "-t", "nat", *args)

