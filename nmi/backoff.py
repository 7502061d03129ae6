"""The one backoff of nmi: exponential, capped, with jitter, and a failure count that resets on success.

Used by the token retries (nmi.tokens.limits), the Kubernetes watches (nmi.kube) and the startup taint. Each
caller keeps its own numbers (base, cap, jitter range); the shape is the same everywhere:

    delay(failures) = min(cap, base * 2**(failures - 1)) * jitter,  jitter uniform in [low, high]

(iptables/supervisor.py has its own, jitter-free, because the iptables package never imports nmi.)
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable

Random = Callable[[], float]  # uniform in [0, 1), as random.random
# Past 2**64 any base has long reached any cap. Without this bound 2**(failures - 1) overflows a float after
# ~1025 failures in a row (an API server down for hours), and the watch or the taint task died of OverflowError.
MAX_DOUBLINGS = 64


@dataclass(frozen=True, slots=True)
class Backoff:
    base: float
    cap: float
    # Multiplier range: (1, 1) none; (0.5, 1) spreads callers below the ceiling; (1, 1.5) keeps at least
    # the ceiling (an upstream that asks for ~1 s between retries gets at least that).
    jitter: tuple[float, float] = (1.0, 1.0)

    def delay(self, failures: int, rand: Random = random.random) -> float:
        """The pause after the `failures`-th failure in a row (1 for the first; 0 counts as 1)."""
        ceiling = min(self.cap, self.base * 2.0 ** min(max(0, failures - 1), MAX_DOUBLINGS))
        low, high = self.jitter
        if low == high:
            return ceiling * low
        return ceiling * (low + (high - low) * rand())


class Retries:
    """Failures in a row and the pause each one earns; `reset` after a success starts again from `base`."""

    def __init__(self, backoff: Backoff, *, rand: Random = random.random) -> None:
        self._backoff, self._rand = backoff, rand
        self.failures = 0

    def failed(self) -> float:
        """Counts one more failure; the pause before the next attempt."""
        self.failures += 1
        return self._backoff.delay(self.failures, self._rand)

    def reset(self) -> None:
        self.failures = 0
