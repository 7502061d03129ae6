"""The backend interface, and the legacy (x_tables) backend: the only importer of python-iptables (`iptc`).

python-iptables drives libip4tc, which reads a table into memory, edits it there and commits it back in one
setsockopt that replaces the whole table. So a whole plan (rewrite the chain, move the jump) lands in one commit:
no reader ever sees the chain empty or the DNAT rule missing. A transaction spanning nat and filter (the
fail-closed swap) is one commit per table, ordered so that the DNAT or the reject is always in place. iptc is blocking and not thread-safe: every call
goes through one mutex, and the supervisor calls us from a worker thread.
"""

from __future__ import annotations

import ipaddress
import threading
from typing import Any, Callable, Protocol

from .errors import BackendUnavailable, IptablesError
from .failclosed import (REJECT, NodeRules, Transaction, closed_transaction, open_transaction, reject_rule,
                         removal_transaction)
from .lock import XtablesLock
from .rules import NAT, RETURN_RULE, ActualState, ChainSpec, Layout, Plan


class Backend(Protocol):
    name: str

    def read(self, spec: ChainSpec | None) -> NodeRules:
        """Tables nat and filter now, without taking the lock. nmi's own rules are rendered in canonical text."""

    def converge(self, spec: ChainSpec) -> Transaction:
        """Under the xtables lock: re-read, plan the serving state (DNAT chain exactly, no reject), apply it (see
        `open_transaction`). Returns what was applied (empty when nothing had to change). Raises IptablesError."""

    def fail_closed(self, spec: ChainSpec) -> Transaction:
        """Under the xtables lock: swap the DNAT chain for the reject (see `closed_transaction`)."""

    def remove(self) -> Transaction:
        """Under the xtables lock: delete every jump to nmi's chains, then the chains (both tables)."""


class LegacyBackend:
    name = "legacy"

    def __init__(self, *, lock: XtablesLock | None = None) -> None:
        try:
            import iptc  # noqa: PLC0415 - imported here so nft-only nodes never load libip4tc
        except Exception as exc:  # python-iptables raises OSError or its own XTablesError when libs are missing
            raise BackendUnavailable(f"iptables backend legacy unusable: python-iptables cannot load: {exc}") from exc
        self._iptc = iptc
        self._errors = (iptc.IPTCError, iptc.XTablesError)
        self._lock = lock or XtablesLock()
        self._mutex = threading.Lock()
        try:
            # Table objects are per-process singletons caching the kernel's table; we never let them autocommit,
            # so every change to a table is staged in memory and reaches the kernel in that table's one commit.
            self._tables = {name: iptc.Table(name, autocommit=False) for name in (NAT.table, REJECT.table)}
            for table in self._tables.values():
                table.refresh()
        except (iptc.IPTCError, iptc.XTablesError) as exc:
            raise BackendUnavailable(f"iptables backend legacy unusable: cannot open tables: {exc}") from exc

    def read(self, spec: ChainSpec | None) -> NodeRules:
        with self._mutex:
            return self._refreshed_state(spec)

    def converge(self, spec: ChainSpec) -> Transaction:
        return self._apply(lambda actual: open_transaction(actual, spec), spec)

    def fail_closed(self, spec: ChainSpec) -> Transaction:
        return self._apply(lambda actual: closed_transaction(actual, spec), spec)

    def remove(self) -> Transaction:
        return self._apply(removal_transaction, None)

    # -- internals; all run with the mutex held --

    def _apply(self, planner: Callable[[NodeRules], Transaction], spec: ChainSpec | None) -> Transaction:
        with self._mutex, self._lock.held():
            wanted = planner(self._refreshed_state(spec))
            for step in wanted.steps:  # in order: one commit per table, the new protection first (failclosed.py)
                self._commit(step, spec)
            return wanted

    def _refreshed_state(self, spec: ChainSpec | None) -> NodeRules:
        states = {}
        for name, table in self._tables.items():
            try:
                table.refresh()  # drops the cached view (and, autocommit being off, nothing is committed)
                known = self._known_rules(name, spec)
                states[name] = ActualState({chain.name: tuple(self._text(rule, known) for rule in chain.rules)
                                            for chain in table.chains})
            except self._errors as exc:
                raise IptablesError(f"cannot read legacy table {name}: {exc}") from exc
        return NodeRules(nat=states[NAT.table], filter=states[REJECT.table])

    def _commit(self, wanted: Plan, spec: ChainSpec | None) -> None:
        iptc, layout = self._iptc, wanted.layout
        table = self._tables[layout.table]
        try:
            if wanted.chain_rules is not None:
                if table.is_chain(layout.chain):
                    table.flush_entries(layout.chain)
                else:
                    table.create_chain(layout.chain)
            known = self._known_rules(layout.table, spec)  # after creating the chain: only then can a jump be built
            for text in wanted.chain_rules or ():
                iptc.Chain(table, layout.chain).append_rule(known[text])
            for chain_name, text in wanted.delete_rules:
                chain = iptc.Chain(table, chain_name)
                match = next((rule for rule in chain.rules if self._text(rule, known) == text), None)
                if match is None:
                    raise IptablesError(f"rule {text!r} vanished from {chain_name} while planning")
                chain.delete_rule(match)
            if wanted.insert_jump:
                for hook in layout.hooks:
                    iptc.Chain(table, hook).insert_rule(known[layout.jump_rule], position=0)
            if wanted.delete_chain:
                table.flush_entries(layout.chain)
                table.delete_chain(layout.chain)
            table.commit()  # the one moment the kernel sees anything of this table's change
        except self._errors as exc:
            raise IptablesError(f"legacy iptables commit failed ({wanted.describe()}): {exc}") from exc
        finally:
            try:
                table.refresh()  # discard whatever was not committed
            except self._errors:
                pass  # the next read refreshes again and reports the error there

    def _known_rules(self, table_name: str, spec: ChainSpec | None) -> dict[str, Any]:
        """The rules we own in that table, as iptc objects keyed by their canonical text. python-iptables can only
        build a jump to a chain that exists in the table (in memory); without the chain there can be no jump."""
        iptc = self._iptc
        table = self._tables[table_name]
        layout: Layout = NAT if table_name == NAT.table else REJECT
        back = iptc.Rule()
        back.create_target("RETURN")
        known = {RETURN_RULE: back}
        if table.is_chain(layout.chain):
            jump = iptc.Rule()
            jump.create_target(layout.chain)
            known[layout.jump_rule] = jump
        if spec is not None and layout is NAT:
            dnat = iptc.Rule()
            dnat.src = "!127.0.0.1/32"
            dnat.dst = f"{spec.metadata_ip}/32"
            dnat.protocol = "tcp"
            dnat.create_match("tcp").dport = str(spec.metadata_port)
            dnat.create_target("DNAT").to_destination = f"{spec.target_ip}:{spec.target_port}"
            known[spec.dnat_rule] = dnat
        elif spec is not None:
            reject = iptc.Rule()
            reject.dst = f"{spec.metadata_ip}/32"
            reject.protocol = "tcp"
            reject.create_match("addrtype").src_type = "!LOCAL"
            reject.create_match("tcp").dport = str(spec.metadata_port)
            reject.create_target("REJECT").reject_with = "tcp-reset"
            known[reject_rule(spec)] = reject
        return known

    @staticmethod
    def _text(rule: Any, known: dict[str, Any]) -> str:
        """Canonical text for our own rules; for others, an outline in iptables-save order.

        Reading a match's or target's options through python-iptables redirects the process's stdout (fd 1)
        while the extension prints them, which would swallow other threads' output; so options of foreign
        rules are left out. The outline never equals a canonical text unless the rules are identical.
        """
        goto = bool(rule.target.goto)
        for text, mine in known.items():
            if not goto and rule == mine:
                return text
        words: list[str] = []
        for flag, value in (("-s", rule.src), ("-d", rule.dst)):
            words += _address(flag, value)
        for flag, value in (("-i", rule.in_interface), ("-o", rule.out_interface), ("-p", rule.protocol)):
            if value and value != "ip":
                words += ["!", flag, value[1:]] if value.startswith("!") else [flag, value]
        if rule.fragment:
            words.append("-f")
        for match in rule.matches:
            words += ["-m", match.name]
        if rule.target.name:
            words += ["-g" if goto else "-j", rule.target.name]
        return " ".join(words)


def _address(flag: str, value: str) -> list[str]:
    inverted = value.startswith("!")
    address, _, mask = value.lstrip("!").partition("/")
    if address == "0.0.0.0" and mask in ("", "0.0.0.0"):
        return []
    try:
        prefix = str(ipaddress.IPv4Network(f"0.0.0.0/{mask}").prefixlen) if mask else "32"
    except ValueError:
        prefix = mask  # a non-contiguous mask is printed as iptables does: dotted
    return (["!"] if inverted else []) + [flag, f"{address}/{prefix}"]
