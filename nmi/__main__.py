"""`nmi` console script and `python -m nmi`: the daemon, or a subcommand named first (`nmi cleanup ...`)."""

from __future__ import annotations

import importlib
import sys

# Each module has main(argv) -> exit code.
SUBCOMMANDS = {"cleanup": "nmi.cleanup", "doctor": "nmi.doctor", "explain": "nmi.explain_cli"}


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in SUBCOMMANDS:
        raise SystemExit(importlib.import_module(SUBCOMMANDS[args[0]]).main(args[1:]))
    from .cli import load_settings
    from .daemon import run

    settings = load_settings(args)
    raise SystemExit(run(settings))


if __name__ == "__main__":
    main()
