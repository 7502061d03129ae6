"""The aad-metadata chain as data: what nmi wants in table nat, and what must change to get there.

Pure: no iptables, no I/O. Rules are compared as iptables-save text without the `-A <chain>` prefix (the
form `iptables -S` prints), which is what both backends produce and what an operator reads in a log line.
"""

from __future__ import annotations

import ipaddress
import shlex
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Iterable, Mapping

TABLE = "nat"
CHAIN = "aad-metadata"
HOOK_CHAIN = "PREROUTING"
JUMP_RULE = f"-j {CHAIN}"
RETURN_RULE = "-j RETURN"
LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class Layout:
    """Where one of nmi's chains lives: its table, its name, and the built-in chains that jump to it (first)."""

    table: str
    chain: str
    hooks: tuple[str, ...]

    @property
    def jump_rule(self) -> str:
        return f"-j {self.chain}"


NAT = Layout(TABLE, CHAIN, (HOOK_CHAIN,))


def dnat_target(listen_address: str) -> str:
    """Where the DNAT rule sends pod traffic: the listen address, or loopback when nmi listens everywhere."""
    return LOOPBACK if listen_address == "0.0.0.0" else listen_address


@dataclass(frozen=True)
class ChainSpec:
    """Redirect TCP to metadata_ip:metadata_port from anything but loopback to target_ip:target_port."""

    metadata_ip: str
    metadata_port: int
    target_ip: str
    target_port: int

    def __post_init__(self) -> None:
        for name in ("metadata_ip", "target_ip"):
            try:
                ipaddress.IPv4Address(getattr(self, name))
            except ValueError as exc:
                raise ValueError(f"{name} must be an IPv4 address, got {getattr(self, name)!r}") from exc
        for name in ("metadata_port", "target_port"):
            port = getattr(self, name)
            if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
                raise ValueError(f"{name} must be a TCP port number, got {port!r}")

    @property
    def dnat_rule(self) -> str:
        return (
            f"! -s {LOOPBACK}/32 -d {self.metadata_ip}/32 -p tcp -m tcp --dport {self.metadata_port}"
            f" -j DNAT --to-destination {self.target_ip}:{self.target_port}"
        )

    @property
    def chain_rules(self) -> tuple[str, ...]:
        """The chain's exact contents, in order (SPEC §5)."""
        return (self.dnat_rule, RETURN_RULE)

    def save_lines(self) -> tuple[str, ...]:
        """The desired rules as `iptables -t nat -S` prints them (jump first)."""
        return (f"-A {HOOK_CHAIN} {JUMP_RULE}",) + tuple(f"-A {CHAIN} {rule}" for rule in self.chain_rules)


@dataclass(frozen=True)
class ActualState:
    """The chains of table nat and their rules in order. A chain that is absent from `chains` does not exist."""

    chains: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        frozen = {name: tuple(rules) for name, rules in self.chains.items()}
        object.__setattr__(self, "chains", MappingProxyType(frozen))

    def has_chain(self, name: str) -> bool:
        return name in self.chains

    def rules(self, name: str) -> tuple[str, ...]:
        return self.chains.get(name, ())


@dataclass(frozen=True)
class Plan:
    """What one atomic transaction must do, in this order:

    1. `chain_rules` not None: create the chain if missing, otherwise flush it, and append exactly these rules;
    2. delete each `(chain, rule)` in `delete_rules`, each entry removing the first rule with that text;
    3. `insert_jump`: insert `-j aad-metadata` at position 1 of PREROUTING (of each of `layout.hooks`);
    4. `delete_chain`: flush and delete the chain.
    Every step happens in one commit, so nothing ever sees the chain empty or the jump missing half-way.
    """

    chain_rules: tuple[str, ...] | None = None
    delete_rules: tuple[tuple[str, str], ...] = ()
    insert_jump: bool = False
    delete_chain: bool = False
    reasons: tuple[str, ...] = ()
    layout: Layout = NAT  # whose chain, jumps and table this plan changes

    @property
    def is_empty(self) -> bool:
        return self.chain_rules is None and not self.delete_rules and not self.insert_jump and not self.delete_chain

    def describe(self) -> str:
        return "; ".join(self.reasons) if self.reasons else "nothing to change"


def is_jump_to_chain(rule: str, chain: str = CHAIN) -> bool:
    """True for any rule whose target is the chain (`-j` or `-g`), whatever its matches."""
    try:
        words = shlex.split(rule)
    except ValueError:  # unbalanced quotes in someone else's comment: fall back to plain words
        words = rule.split()
    return any(flag in ("-j", "-g") and target == chain for flag, target in zip(words, words[1:], strict=False))


def plan(actual: ActualState, spec: ChainSpec) -> Plan:
    """The changes that turn `actual` into exactly the SPEC §5 state, or an empty plan."""
    return plan_chain(actual, NAT, spec.chain_rules)


def plan_chain(actual: ActualState, layout: Layout, desired: tuple[str, ...]) -> Plan:
    """The changes that give `layout.chain` exactly the rules `desired`, and one plain jump to it first in each
    of `layout.hooks`; an empty plan when that is already so. `actual` is the layout's table."""
    reasons: list[str] = []
    chain_rules = None
    if not actual.has_chain(layout.chain):
        reasons.append(f"chain {layout.chain} missing")
        chain_rules = desired
    elif actual.rules(layout.chain) != desired:
        reasons.append(_chain_drift(layout.chain, actual.rules(layout.chain), desired))
        chain_rules = desired

    delete_rules: list[tuple[str, str]] = []
    insert_jump = False
    for hook in layout.hooks:
        hook_rules = actual.rules(hook)
        jumps = [rule for rule in hook_rules if is_jump_to_chain(rule, layout.chain)]
        if not (len(jumps) == 1 and hook_rules[0] == layout.jump_rule):
            reasons.append(_jump_drift(layout, hook, hook_rules, jumps))
            insert_jump = True
    if insert_jump:
        # Delete every jump and insert one at the top in the same commit: simpler than keeping one, same result.
        delete_rules = [(hook, rule) for hook in layout.hooks for rule in actual.rules(hook)
                        if is_jump_to_chain(rule, layout.chain)]
    return Plan(chain_rules=chain_rules, delete_rules=tuple(delete_rules), insert_jump=insert_jump,
                reasons=tuple(reasons), layout=layout)


def removal_plan(actual: ActualState, layout: Layout = NAT) -> Plan:
    """Delete every jump to the chain (from any chain of the table), then the chain itself."""
    chain_name = layout.chain
    delete_rules = tuple(
        (chain, rule) for chain, rules in actual.chains.items() if chain != chain_name for rule in rules
        if is_jump_to_chain(rule, chain_name)
    )
    delete_chain = actual.has_chain(chain_name)
    reasons = []
    if delete_rules:
        reasons.append(f"remove {len(delete_rules)} jump(s) to {chain_name}")
    if delete_chain:
        reasons.append(f"remove chain {chain_name}")
    return Plan(delete_rules=delete_rules, delete_chain=delete_chain, reasons=tuple(reasons), layout=layout)


def parse_save(text: str, *, table: str = TABLE) -> ActualState:
    """Read one table out of `iptables-save` output; a table that is not listed has no chains."""
    chains: dict[str, list[str]] = {}
    in_table = False
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("*"):
            in_table = line[1:] == table
        elif not in_table or not line or line.startswith("#"):
            continue
        elif line == "COMMIT":
            in_table = False
        elif line.startswith(":"):
            chains.setdefault(line[1:].split()[0], [])
        elif line.startswith("-A "):
            _, chain, *rest = line.split(" ", 2)
            chains.setdefault(chain, []).append(rest[0] if rest else "")
    return ActualState({name: tuple(rules) for name, rules in chains.items()})


def count_rules(save_output: str) -> int:
    """Rules in `iptables-save` output, all tables: the measure kube-proxy's iptables-wrapper compares."""
    return sum(1 for line in save_output.splitlines() if line.startswith("-"))


def _chain_drift(chain: str, actual: Iterable[str], desired: tuple[str, ...]) -> str:
    actual = tuple(actual)
    if not actual:
        return f"chain {chain} is empty"
    missing = [rule for rule in desired if rule not in actual]
    extra = [rule for rule in actual if rule not in desired]
    if missing:
        return f"chain {chain} lacks {missing[0]!r}"
    if extra:
        return f"chain {chain} has extra rule {extra[0]!r}"
    return f"chain {chain} rules duplicated or out of order"


def _jump_drift(layout: Layout, hook: str, hook_rules: tuple[str, ...], jumps: list[str]) -> str:
    chain = layout.chain
    if not jumps:
        return f"jump to {chain} missing from {hook}"
    if len(jumps) > 1:
        return f"{len(jumps)} jumps to {chain} in {hook}"
    if jumps[0] != layout.jump_rule:
        return f"jump to {chain} is not plain: {jumps[0]!r}"
    return f"jump to {chain} is not first in {hook}"
