"""`iptables-nft-restore --noflush`, one run per `*table` section, held between them until the test says go.

    python -m tests.iptables.slow_restore GATE_DIR  < restore-input

What iptables-nft-restore does with several sections (one nf_tables commit per section, in order), with the
moment between two commits held open: after each section but the last it creates GATE_DIR/committed-<pid>-<n>
and waits (at most 30 s) for GATE_DIR/go-<pid>-<n>. The test lets it go once it has sampled the rules in that
moment, so it is sure to see the state between the commits — and would see "neither DNAT nor reject" if the
sections came in the wrong order.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path


def sections(text: str) -> list[str]:
    parts: list[str] = []
    for line in text.splitlines(keepends=True):
        if line.startswith("*"):
            parts.append("")
        if parts:
            parts[-1] += line
    return parts


def main(gate: Path) -> int:
    parts = sections(sys.stdin.read())
    for index, section in enumerate(parts):
        done = subprocess.run(["iptables-nft-restore", "--noflush"], input=section, text=True, check=False)
        if done.returncode:
            return done.returncode
        if index < len(parts) - 1:
            name = f"{os.getpid()}-{index}"
            (gate / f"committed-{name}").touch()
            deadline = time.monotonic() + 30
            while not (gate / f"go-{name}").exists() and time.monotonic() < deadline:
                time.sleep(0.01)
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
