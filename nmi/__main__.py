"""`nmi` console script and `python -m nmi`."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    from .cli import load_settings
    from .daemon import run

    settings = load_settings(sys.argv[1:] if argv is None else argv)
    raise SystemExit(run(settings))


if __name__ == "__main__":
    main()
