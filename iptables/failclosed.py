"""Fail-closed as data: the reject nmi leaves in table filter while it is down, and the ordered transactions
that swap it with the DNAT chain. Pure: no iptables, no I/O.

While nmi runs, pod TCP to the metadata address is DNATed to nmi (table nat, `aad-metadata`). With
`--fail-closed`, SIGTERM swaps that for a reject in table filter (`aad-metadata-reject`, jumped to first from
INPUT and FORWARD) answering pod TCP to <metadata-ip>:<metadata-port> with a TCP reset; the next nmi swaps back.

Why the swap is safe although it spans two tables: the kernel replaces one table at a time (a legacy commit is
one setsockopt per table; iptables-nft-restore commits each `*table ... COMMIT` section as its own nf_tables
transaction), so no backend can change nat and filter in one atomic step. Each table's change is atomic, and
the transactions below always *add the new protection before removing the old one*. While both exist pods are
still served by nmi: DNAT happens in PREROUTING, before filter, and the DNATed packet's destination (nmi's
address and port) no longer matches the reject. So at every moment either the DNAT or the reject is in place.

The reject matches non-local sources only (`-m addrtype ! --src-type LOCAL`): nmi's own calls to the metadata
service (and every host-network process's) leave through OUTPUT with a local source and are never blocked, also
when the metadata endpoint is on the node itself (INPUT). FORWARD covers IMDS off the node, as on Azure.
"""

from __future__ import annotations

from dataclasses import dataclass

from .rules import NAT, ActualState, ChainSpec, Layout, Plan, plan_chain, removal_plan

FILTER_TABLE = "filter"
REJECT_CHAIN = "aad-metadata-reject"
REJECT = Layout(FILTER_TABLE, REJECT_CHAIN, ("INPUT", "FORWARD"))


def reject_rule(spec: ChainSpec) -> str:
    """The reject, as `iptables -S` prints it."""
    return (f"-d {spec.metadata_ip}/32 -p tcp -m addrtype ! --src-type LOCAL -m tcp --dport {spec.metadata_port}"
            f" -j REJECT --reject-with tcp-reset")


def reject_save_lines(spec: ChainSpec) -> tuple[str, ...]:
    """The reject state as `iptables -t filter -S` prints nmi's part of it (jumps first)."""
    return tuple(f"-A {hook} {REJECT.jump_rule}" for hook in REJECT.hooks) + (f"-A {REJECT_CHAIN} {reject_rule(spec)}",)


@dataclass(frozen=True)
class NodeRules:
    """The two tables nmi writes to."""

    nat: ActualState
    filter: ActualState

    def table(self, name: str) -> ActualState:
        return self.nat if name == NAT.table else self.filter


@dataclass(frozen=True)
class Transaction:
    """Plans to apply in this order, each atomically in its own table. Empty plans are skipped."""

    plans: tuple[Plan, ...] = ()

    @property
    def is_empty(self) -> bool:
        return all(step.is_empty for step in self.plans)

    @property
    def steps(self) -> tuple[Plan, ...]:
        return tuple(step for step in self.plans if not step.is_empty)

    @property
    def reasons(self) -> tuple[str, ...]:
        return tuple(reason for step in self.plans for reason in step.reasons)

    def describe(self) -> str:
        return "; ".join(self.reasons) if self.reasons else "nothing to change"


def open_transaction(actual: NodeRules, spec: ChainSpec) -> Transaction:
    """nmi serving: the DNAT chain exactly, and no reject. The DNAT goes in before the reject goes out."""
    return Transaction((plan_chain(actual.nat, NAT, spec.chain_rules), removal_plan(actual.filter, REJECT)))


def closed_transaction(actual: NodeRules, spec: ChainSpec) -> Transaction:
    """nmi down, fail-closed: the reject exactly, and no DNAT chain. The reject goes in before the DNAT goes out."""
    return Transaction((plan_chain(actual.filter, REJECT, (reject_rule(spec),)), removal_plan(actual.nat, NAT)))


def removal_transaction(actual: NodeRules) -> Transaction:
    """Nothing of nmi's left (SIGTERM without --fail-closed, `nmi cleanup`): every jump and both chains."""
    return Transaction((removal_plan(actual.nat, NAT), removal_plan(actual.filter, REJECT)))
