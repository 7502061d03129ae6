"""`iptables-nft-restore --noflush`, one run per `*table` section with a pause between them.

    python -m tests.iptables.slow_restore GAP_SECONDS  < restore-input

What iptables-nft-restore does with several sections (one nf_tables commit per section, in order), with the
moment between two commits stretched to GAP_SECONDS, so that a test sampling the rules is sure to see the
state between them — and would see "neither DNAT nor reject" if the sections came in the wrong order.
"""

from __future__ import annotations

import subprocess
import sys
import time


def sections(text: str) -> list[str]:
    parts: list[str] = []
    for line in text.splitlines(keepends=True):
        if line.startswith("*"):
            parts.append("")
        if parts:
            parts[-1] += line
    return parts


def main(gap: float) -> int:
    for index, section in enumerate(sections(sys.stdin.read())):
        if index:
            time.sleep(gap)
        done = subprocess.run(["iptables-nft-restore", "--noflush"], input=section, text=True, check=False)
        if done.returncode:
            return done.returncode
    return 0


if __name__ == "__main__":
    sys.exit(main(float(sys.argv[1])))
