"""Pod traffic for the fail-closed tests: `nmi doctor`'s probe in a loop until a line arrives on stdin.

    ip netns exec POD python -m tests.e2e.prober   -> prints {"nmi": n, "imds": n, "nothing": n, "details": [...]}
"""

from __future__ import annotations

import json
import sys
import threading
from collections import Counter

from nmi.doctor import probe


def main() -> None:
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.readline(), stop.set()), daemon=True).start()
    outcomes: Counter[str] = Counter()
    details: set[str] = set()
    print("probing", flush=True)
    while not stop.is_set() and sum(outcomes.values()) < 100_000:
        diagnosis = probe("169.254.169.254", 80, timeout=1.0)
        outcomes[diagnosis.outcome] += 1
        details.add(f"{diagnosis.outcome}: {diagnosis.detail}")
        stop.wait(0.02)  # leave the CPU to the daemon under test
    print(json.dumps({**outcomes, "details": sorted(details)}), flush=True)


if __name__ == "__main__":
    main()
