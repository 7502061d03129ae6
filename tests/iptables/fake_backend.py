"""An in-memory backend with the real planning logic, for supervisor tests that need no kernel."""

from __future__ import annotations

from iptables.errors import IptablesError
from iptables.failclosed import (NodeRules, Transaction, closed_transaction, open_transaction,
                                 removal_transaction)
from iptables.rules import ActualState, ChainSpec, Plan


def apply_to(actual: ActualState, change: Plan) -> ActualState:
    """What a backend does with a plan to the plan's table, as a model."""
    layout = change.layout
    chains = {name: list(rules) for name, rules in actual.chains.items()}
    if change.chain_rules is not None:
        chains[layout.chain] = list(change.chain_rules)
    for chain, rule in change.delete_rules:
        chains[chain].remove(rule)
    if change.insert_jump:
        for hook in layout.hooks:
            chains.setdefault(hook, []).insert(0, layout.jump_rule)
    if change.delete_chain:
        del chains[layout.chain]
    return ActualState(chains)


def apply_steps(rules: NodeRules, transaction: Transaction) -> list[NodeRules]:
    """The state after each committed step of `transaction`, in order (what a reader can observe)."""
    seen = []
    for step in transaction.steps:
        if step.layout.table == "nat":
            rules = NodeRules(nat=apply_to(rules.nat, step), filter=rules.filter)
        else:
            rules = NodeRules(nat=rules.nat, filter=apply_to(rules.filter, step))
        seen.append(rules)
    return seen


class FakeBackend:
    name = "fake"

    def __init__(self) -> None:
        self.rules = NodeRules(nat=ActualState({"PREROUTING": ["-j KUBE-SERVICES"], "KUBE-SERVICES": []}),
                               filter=ActualState({"INPUT": [], "FORWARD": ["-j KUBE-FORWARD"], "OUTPUT": []}))
        self.fail_next: list[IptablesError] = []  # raised, in order, by the next changes
        self.fail_remove: list[IptablesError] = []
        self.converge_calls = 0

    @property
    def state(self) -> ActualState:
        """Table nat."""
        return self.rules.nat

    @state.setter
    def state(self, nat: ActualState) -> None:
        self.rules = NodeRules(nat=nat, filter=self.rules.filter)

    def read(self, spec: ChainSpec | None) -> NodeRules:
        return self.rules

    def converge(self, spec: ChainSpec) -> Transaction:
        self.converge_calls += 1
        if self.fail_next:
            raise self.fail_next.pop(0)
        return self._apply(open_transaction(self.rules, spec))

    def fail_closed(self, spec: ChainSpec) -> Transaction:
        if self.fail_remove:
            raise self.fail_remove.pop(0)
        return self._apply(closed_transaction(self.rules, spec))

    def remove(self) -> Transaction:
        if self.fail_remove:
            raise self.fail_remove.pop(0)
        return self._apply(removal_transaction(self.rules))

    def installed(self, spec: ChainSpec) -> bool:
        return open_transaction(self.rules, spec).is_empty

    def _apply(self, transaction: Transaction) -> Transaction:
        for step in apply_steps(self.rules, transaction):
            self.rules = step  # each intermediate state in turn, as the kernel would hold it
        return transaction
