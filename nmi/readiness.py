"""What the probes report and how shutdown drains: the daemon's readiness state and the token requests in flight.

Both are mutated only on the event loop, by the daemon's root tasks and the server. Imports no foreign library.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Callable


def _caches_not_wired() -> list[str]:
    return ["no watch cache wired yet"]


@dataclass
class DaemonState:
    """What the probes report. Mutated only by the daemon's root tasks, on the loop.

    Readiness tells the truth (SPEC §6, §7): every condition under which nmi cannot answer correctly is a reason —
    each watch cache not synced or stale (`cache_problems`, wired to `nmi.freshness.CacheHealth.problems`), the
    chain not in place, shutting down — and each clears when its cause does.
    """

    chain_installed: bool = False
    shutting_down: bool = False
    chain_required: bool = True
    cache_problems: Callable[[], list[str]] = _caches_not_wired

    @property
    def active(self) -> bool:
        return self.chain_installed or not self.chain_required

    @property
    def caches_synced(self) -> bool:
        """Every watch cache synced and fresh (what the token route needs to answer from the caches)."""
        return not self.cache_problems()

    @property
    def ready(self) -> bool:
        return not self.not_ready_because()

    def not_ready_because(self) -> list[str]:
        problems = self.cache_problems()
        why = ["caches not synced or stale: " + "; ".join(problems)] if problems else []
        if not self.active:
            why.append("aad-metadata chain not in place")
        if self.shutting_down:
            why.append("shutting down")
        return why


DRAIN_CUT = "nmi is shutting down"


class Drain:
    """Token requests in flight at shutdown. When the drain time is nearly spent, those still running are
    answered 503 + Retry-After (`answer_all_now`) instead of having their connection cut by the server."""

    def __init__(self) -> None:
        self.in_flight: set[asyncio.Task[Any]] = set()
        self.cut = False

    def answer_all_now(self) -> None:
        self.cut = True
        for task in list(self.in_flight):
            task.cancel(DRAIN_CUT)
