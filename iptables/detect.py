"""Which iptables backend holds the node's rules: decided the way kube-proxy's iptables-wrapper decides.

The rule (iptables-wrapper-installer.sh, kubernetes-sigs/iptables-wrappers):
1. kubelet (1.17+) creates the chains KUBE-IPTABLES-HINT / KUBE-KUBELET-CANARY in the mangle table of the
   backend it uses: if nf_tables has them, nft; else if legacy has them, legacy;
2. otherwise count rules (`-A` lines) in `iptables-legacy-save` and `iptables-nft-save`: legacy only when it
   has strictly more, nft otherwise — nft is the default of every current distribution and of kube-proxy.
Only IPv4 is inspected: nmi manages an IPv4 rule only. The caller can override the choice (`mode=`).
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass

from .backend import Backend, LegacyBackend
from .errors import BackendUnavailable
from .lock import XtablesLock
from .nft import NftBackend
from .rules import count_rules

MODES = ("legacy", "nft")
_KUBELET_HINT = re.compile(r"^:(KUBE-IPTABLES-HINT|KUBE-KUBELET-CANARY)\s", re.MULTILINE)


@dataclass(frozen=True)
class BackendChoice:
    mode: str
    reason: str


def choose_mode(*, legacy_save: str, nft_save: str) -> BackendChoice:
    """Pure: the backend to use given the full `iptables-legacy-save` and `iptables-nft-save` outputs."""
    if _KUBELET_HINT.search(nft_save):
        return BackendChoice("nft", "kubelet's hint chains are in nf_tables")
    if _KUBELET_HINT.search(legacy_save):
        return BackendChoice("legacy", "kubelet's hint chains are in legacy x_tables")
    legacy_count, nft_count = count_rules(legacy_save), count_rules(nft_save)
    if legacy_count > nft_count:
        return BackendChoice("legacy", f"legacy has more rules ({legacy_count} vs {nft_count} in nf_tables)")
    return BackendChoice("nft", f"nf_tables has as many rules or more ({nft_count} vs {legacy_count} in legacy)")


def detect_mode(*, timeout: float = 5.0) -> BackendChoice:
    """Run both save commands (a missing or failing one counts as no rules) and choose."""
    return choose_mode(legacy_save=_save_output("iptables-legacy-save", timeout),
                       nft_save=_save_output("iptables-nft-save", timeout))


def open_backend(mode: str, *, lock: XtablesLock | None = None) -> Backend:
    """The backend for `mode` ("legacy" or "nft"); BackendUnavailable with a one-line reason if unusable."""
    if mode == "legacy":
        return LegacyBackend(lock=lock)
    if mode == "nft":
        return NftBackend(lock=lock)
    raise BackendUnavailable(f"unknown iptables backend {mode!r}, expected one of {', '.join(MODES)}")


def detect_backend(*, mode: str | None = None, lock: XtablesLock | None = None) -> tuple[Backend, BackendChoice]:
    """Open the backend the node's rules live in (or `mode` when given), with the reason, for the start-up log."""
    choice = BackendChoice(mode, "chosen by the caller") if mode else detect_mode()
    return open_backend(choice.mode, lock=lock), choice


def _save_output(command: str, timeout: float) -> str:
    try:
        done = subprocess.run([command], capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout if done.returncode == 0 else ""
