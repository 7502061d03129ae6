"""The nf_tables backend: the node's own `iptables-nft-save` / `iptables-nft-restore --noflush`.

python-iptables only speaks the legacy x_tables API, so on nodes whose rules live in nf_tables we drive the
same binaries kube-proxy uses. One `iptables-nft-restore` run is one nf_tables transaction, so a plan is
applied atomically. iptables-nft does not take the xtables lock itself; we still hold it around each change so
that tools serialising on it (kube-proxy, the iptables wrapper) never interleave with us.
"""

from __future__ import annotations

import shutil
import subprocess
from typing import Sequence

from .errors import BackendUnavailable, IptablesError
from .lock import XtablesLock
from .rules import CHAIN, HOOK_CHAIN, JUMP_RULE, TABLE, ActualState, ChainSpec, Plan, parse_save, plan, removal_plan


def render_restore(wanted: Plan) -> str:
    """The `iptables-restore --noflush` input applying `wanted` as one transaction (order as in Plan)."""
    lines = [f"*{TABLE}"]
    if wanted.chain_rules is not None:
        # `:chain` creates the chain when missing (and in some versions flushes it); -F makes the flush explicit.
        lines += [f":{CHAIN} - [0:0]", f"-F {CHAIN}"]
        lines += [f"-A {CHAIN} {rule}" for rule in wanted.chain_rules]
    lines += [f"-D {chain} {rule}" for chain, rule in wanted.delete_rules]
    if wanted.insert_jump:
        lines.append(f"-I {HOOK_CHAIN} 1 {JUMP_RULE}")
    if wanted.delete_chain:
        lines += [f"-F {CHAIN}", f"-X {CHAIN}"]
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


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

    def read(self, spec: ChainSpec | None = None) -> ActualState:
        return parse_save(self._run(self._save + ("-t", TABLE)))

    def converge(self, spec: ChainSpec) -> Plan:
        with self._lock.held():
            wanted = plan(self.read(spec), spec)
            if not wanted.is_empty:
                self._run(self._restore, stdin=render_restore(wanted))
            return wanted

    def remove(self) -> Plan:
        with self._lock.held():
            wanted = removal_plan(self.read(None))
            if not wanted.is_empty:
                self._run(self._restore, stdin=render_restore(wanted))
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
