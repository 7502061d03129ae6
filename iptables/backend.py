"""The backend interface, and the legacy (x_tables) backend: the only importer of python-iptables (`iptc`).

python-iptables drives libip4tc, which reads a table into memory, edits it there and commits it back in one
setsockopt that replaces the whole table. So a whole plan (rewrite the chain, move the jump) lands in one commit:
no reader ever sees the chain empty or the DNAT rule missing. iptc is blocking and not thread-safe: every call
goes through one mutex, and the supervisor calls us from a worker thread.
"""

from __future__ import annotations

import ipaddress
import threading
from typing import Any, Protocol

from .errors import BackendUnavailable, IptablesError
from .lock import XtablesLock
from .rules import (CHAIN, HOOK_CHAIN, JUMP_RULE, RETURN_RULE, ActualState, ChainSpec, Plan, plan,
                    removal_plan)


class Backend(Protocol):
    name: str

    def read(self, spec: ChainSpec) -> ActualState:
        """The nat table now, without taking the lock. Rules equal to `spec`'s are rendered in canonical text."""

    def converge(self, spec: ChainSpec) -> Plan:
        """Under the xtables lock: re-read, plan, apply the plan in one transaction. Returns the plan applied
        (empty when nothing had to change). Raises IptablesError."""

    def remove(self) -> Plan:
        """Under the xtables lock, in one transaction: delete every jump to the chain, then the chain."""


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
            # The Table object is a per-process singleton caching the kernel's table; we never let it autocommit.
            self._table = iptc.Table(iptc.Table.NAT, autocommit=False)
            self._table.refresh()
        except (iptc.IPTCError, iptc.XTablesError) as exc:
            raise BackendUnavailable(f"iptables backend legacy unusable: cannot open table nat: {exc}") from exc

    def read(self, spec: ChainSpec) -> ActualState:
        with self._mutex:
            return self._refreshed_state(spec)

    def converge(self, spec: ChainSpec) -> Plan:
        with self._mutex, self._lock.held():
            wanted = plan(self._refreshed_state(spec), spec)
            if not wanted.is_empty:
                self._commit(wanted, spec)
            return wanted

    def remove(self) -> Plan:
        with self._mutex, self._lock.held():
            wanted = removal_plan(self._refreshed_state(None))
            if not wanted.is_empty:
                self._commit(wanted, None)
            return wanted

    # -- internals; all run with the mutex held --

    def _refreshed_state(self, spec: ChainSpec | None) -> ActualState:
        try:
            self._table.refresh()  # drops the cached view (and, autocommit being off, nothing is committed)
            known = self._known_rules(spec)
            return ActualState({chain.name: tuple(self._text(rule, known) for rule in chain.rules)
                                for chain in self._table.chains})
        except self._errors as exc:
            raise IptablesError(f"cannot read legacy table nat: {exc}") from exc

    def _commit(self, wanted: Plan, spec: ChainSpec | None) -> None:
        iptc, table = self._iptc, self._table
        try:
            if wanted.chain_rules is not None:
                if table.is_chain(CHAIN):
                    table.flush_entries(CHAIN)
                else:
                    table.create_chain(CHAIN)
            known = self._known_rules(spec)  # after creating the chain: only then can a jump to it be built
            for text in wanted.chain_rules or ():
                iptc.Chain(table, CHAIN).append_rule(known[text])
            for chain_name, text in wanted.delete_rules:
                chain = iptc.Chain(table, chain_name)
                match = next((rule for rule in chain.rules if self._text(rule, known) == text), None)
                if match is None:
                    raise IptablesError(f"rule {text!r} vanished from {chain_name} while planning")
                chain.delete_rule(match)
            if wanted.insert_jump:
                iptc.Chain(table, HOOK_CHAIN).insert_rule(known[JUMP_RULE], position=0)
            if wanted.delete_chain:
                table.flush_entries(CHAIN)
                table.delete_chain(CHAIN)
            table.commit()  # the one moment the kernel sees anything
        except self._errors as exc:
            raise IptablesError(f"legacy iptables commit failed ({wanted.describe()}): {exc}") from exc
        finally:
            try:
                table.refresh()  # discard whatever was not committed
            except self._errors:
                pass  # the next read refreshes again and reports the error there

    def _known_rules(self, spec: ChainSpec | None) -> dict[str, Any]:
        """The rules we own, as iptc objects keyed by their canonical text. python-iptables can only build a
        jump to a chain that exists in the table (in memory); without the chain there can be no jump anyway."""
        iptc = self._iptc
        back = iptc.Rule()
        back.create_target("RETURN")
        known = {RETURN_RULE: back}
        if self._table.is_chain(CHAIN):
            jump = iptc.Rule()
            jump.create_target(CHAIN)
            known[JUMP_RULE] = jump
        if spec is not None:
            dnat = iptc.Rule()
            dnat.src = "!127.0.0.1/32"
            dnat.dst = f"{spec.metadata_ip}/32"
            dnat.protocol = "tcp"
            dnat.create_match("tcp").dport = str(spec.metadata_port)
            dnat.create_target("DNAT").to_destination = f"{spec.target_ip}:{spec.target_port}"
            known[spec.dnat_rule] = dnat
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
