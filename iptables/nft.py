"""The nf_tables backend: the node's own `iptables-nft-save` / `iptables-nft-restore --noflush`.

python-iptables only speaks the legacy x_tables API, so on nodes whose rules live in nf_tables we drive the
same binaries kube-proxy uses. One `*table ... COMMIT` section of `iptables-nft-restore` is one nf_tables
transaction, so a plan (one table) is applied atomically; a fail-closed swap spans two tables (see
failclosed.py). iptables-nft does not take the xtables lock itself; we still hold it around each change so
that tools serialising on it (kube-proxy, the iptables wrapper) never interleave with us.
"""

from __future__ import annotations

import shutil
import subprocess
from typing import Callable, Sequence

from .errors import BackendUnavailable, IptablesError
from .failclosed import REJECT, NodeRules, Transaction, closed_transaction, open_transaction, removal_transaction
from .lock import XtablesLock
from .rules import NAT, ChainSpec, Plan, parse_save


def render_restore(wanted: Plan) -> str:
    """The `iptables-restore --noflush` input applying `wanted` as one transaction (order as in Plan)."""
    layout = wanted.layout
    chain = layout.chain
    lines = [f"*{layout.table}"]
    if wanted.chain_rules is not None:
        # `:chain` creates the chain when missing (and in some versions flushes it); -F makes the flush explicit.
        lines += [f":{chain} - [0:0]", f"-F {chain}"]
        lines += [f"-A {chain} {rule}" for rule in wanted.chain_rules]
    lines += [f"-D {hook} {rule}" for hook, rule in wanted.delete_rules]
    if wanted.insert_jump:
        lines += [f"-I {hook} 1 {layout.jump_rule}" for hook in layout.hooks]
    if wanted.delete_chain:
        lines += [f"-F {chain}", f"-X {chain}"]
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def render_transaction(wanted: Transaction) -> str:
    """One restore input for all steps, in order. iptables-nft-restore commits each `*table` section as its own
    nf_tables transaction, in the order given: the ordering in `failclosed` keeps the DNAT or the reject in place
    between the two commits (a failure in the second section leaves both, never neither)."""
    return "".join(render_restore(step) for step in wanted.steps)


class NftBackend:
    name = "nft"

    def __init__(
        self,
        *,
        lock: XtablesLock | None = None,
        save_command: Sequence[str] = ("iptables-nft-save",),
        restore_command: Sequence[str] = ("iptables-nft-restore", "--noflush"),
        timeout: float = 10.0,
    ) -> None:
        for command in (save_command, restore_command):
            if shutil.which(command[0]) is None:
                raise BackendUnavailable(f"iptables backend nft unusable: {command[0]} not found on PATH")
        self._lock = lock or XtablesLock()
        self._save = tuple(save_command)
        self._restore = tuple(restore_command)
        self._timeout = timeout
        try:
            self.read(None)  # fail at start, not at the first interval, when nf_tables is unusable
        except IptablesError as exc:
            raise BackendUnavailable(f"iptables backend nft unusable: {exc}") from exc

    def read(self, spec: ChainSpec | None = None) -> NodeRules:
        # One save of every table: iptables-nft reads the ruleset under one nf_tables generation, a consistent view.
        text = self._run(self._save)
        return NodeRules(nat=parse_save(text, table=NAT.table), filter=parse_save(text, table=REJECT.table))

    def converge(self, spec: ChainSpec) -> Transaction:
        return self._apply(lambda actual: open_transaction(actual, spec))

    def fail_closed(self, spec: ChainSpec) -> Transaction:
        return self._apply(lambda actual: closed_transaction(actual, spec))

    def remove(self) -> Transaction:
        return self._apply(removal_transaction)

    def _apply(self, planner: Callable[[NodeRules], Transaction]) -> Transaction:
        with self._lock.held():
            wanted = planner(self.read())
            if not wanted.is_empty:
                self._run(self._restore, stdin=render_transaction(wanted))
            return wanted

    def _run(self, command: tuple[str, ...], *, stdin: str | None = None) -> str:
        try:
            done = subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=self._timeout,
                                  check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise IptablesError(f"{command[0]} failed: {exc}") from exc
        if done.returncode != 0:
            detail = (done.stderr.strip().splitlines() or [""])[-1]
            raise IptablesError(f"{command[0]} exited {done.returncode}: {detail}")
        return done.stdout
