"""`nmi` console script and `python -m nmi`."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["explain"]:  # a client of the running daemon: no daemon imports
        from .explain_cli import main as explain

        raise SystemExit(explain(args[1:]))
    from .cli import load_settings
    from .daemon import run

    settings = load_settings(args)
    raise SystemExit(run(settings))


if __name__ == "__main__":
    main()
