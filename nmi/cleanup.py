"""`nmi cleanup`: remove every rule nmi ever writes on this node, from both iptables backends.

    nmi cleanup [--iptables-backend all|legacy|nft] [--xtables-lock PATH]

Removes the `aad-metadata` chain of table nat, the fail-closed `aad-metadata-reject` chain of table filter and
every jump to either, whatever metadata address or port they were written for; other rules are left alone.
Idempotent: exit 0 also when there was nothing to remove. Exit 1 when a backend that may hold nmi's rules could
not be cleaned, 2 on bad usage. Run it after nmi has stopped on the node (a running nmi puts its chain back).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Sequence

LEGACY_TABLES = Path("/proc/net/ip_tables_names")  # the legacy x_tables this network namespace has in use


def legacy_in_use(names_file: Path = LEGACY_TABLES) -> bool:
    """Whether legacy nat or filter exist here. Opening them to look would create them (and make iptables-nft
    warn about legacy tables on every call), so ask the kernel's list, which iptables-legacy-save reads too."""
    try:
        names = names_file.read_text().split()
    except OSError:
        return False
    return "nat" in names or "filter" in names


def clean(mode: str, *, lock_path: str, explicit: bool, out: Callable[[str], None],
          legacy_present: Callable[[], bool] = legacy_in_use) -> bool:
    """Remove nmi's rules from one backend; True when the backend is clean afterwards (or cannot hold any)."""
    from iptables.detect import open_backend
    from iptables.errors import BackendUnavailable, IptablesError
    from iptables.lock import XtablesLock

    if mode == "legacy" and not explicit and not legacy_present():
        out("legacy: no legacy tables in use, nothing to remove")
        return True
    try:
        backend = open_backend(mode, lock=XtablesLock(lock_path))
    except BackendUnavailable as exc:
        # Rules nmi wrote through a backend can only be there if that backend works here, except for legacy
        # tables in use that python-iptables cannot open: that, or a backend asked for by name, is a failure.
        out(f"{mode}: {exc}")
        return not (explicit or mode == "legacy")
    try:
        removed = backend.remove()
    except IptablesError as exc:
        out(f"{mode}: removal failed: {exc}")
        return False
    out(f"{mode}: {removed.describe() if not removed.is_empty else 'nothing to remove'}")
    return True


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="nmi cleanup", description="Remove every iptables rule nmi writes.")
    parser.add_argument("--iptables-backend", choices=("all", "legacy", "nft"), default="all",
                        help="which backend to clean (default all: nft, then legacy when its tables are in use)")
    parser.add_argument("--xtables-lock", default="/run/xtables.lock", help="the lock shared with kube-proxy")
    args = parser.parse_args(list(argv))
    modes = ("nft", "legacy") if args.iptables_backend == "all" else (args.iptables_backend,)
    results = [clean(mode, lock_path=args.xtables_lock, explicit=args.iptables_backend != "all",
                     out=lambda line: print(line, flush=True)) for mode in modes]
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
