"""An in-memory backend with the real planning logic, for supervisor tests that need no kernel."""

from __future__ import annotations

from iptables.errors import IptablesError
from iptables.rules import CHAIN, JUMP_RULE, ActualState, ChainSpec, Plan, plan, removal_plan


def apply_to(actual: ActualState, change: Plan) -> ActualState:
    """What a backend does with a plan, as a model."""
    chains = {name: list(rules) for name, rules in actual.chains.items()}
    if change.chain_rules is not None:
        chains[CHAIN] = list(change.chain_rules)
    for chain, rule in change.delete_rules:
        chains[chain].remove(rule)
    if change.insert_jump:
        chains.setdefault("PREROUTING", []).insert(0, JUMP_RULE)
    if change.delete_chain:
        del chains[CHAIN]
    return ActualState(chains)


class FakeBackend:
    name = "fake"

    def __init__(self) -> None:
        self.state = ActualState({"PREROUTING": ["-j KUBE-SERVICES"], "KUBE-SERVICES": []})
        self.fail_next: list[IptablesError] = []  # raised, in order, by the next changes
        self.fail_remove: list[IptablesError] = []
        self.converge_calls = 0

    def read(self, spec: ChainSpec) -> ActualState:
        return self.state

    def converge(self, spec: ChainSpec) -> Plan:
        self.converge_calls += 1
        if self.fail_next:
            raise self.fail_next.pop(0)
        change = plan(self.state, spec)
        self.state = apply_to(self.state, change)
        return change

    def remove(self) -> Plan:
        if self.fail_remove:
            raise self.fail_remove.pop(0)
        change = removal_plan(self.state)
        self.state = apply_to(self.state, change)
        return change

    def installed(self, spec: ChainSpec) -> bool:
        return plan(self.state, spec).is_empty
