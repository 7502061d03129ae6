"""Event-loop lag, measured from inside: how late a short timer fires. Everything nmi answers runs on one loop,
so blocking work that slipped onto it (parsing, a sync call) shows here before it shows in latency percentiles.

A root task wakes every `interval` seconds; the gauge holds the largest lateness over the last `window` samples,
so a scrape every 10-30 s still sees a spike. Two timer wake-ups per second: cheap enough to leave on.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Callable

INTERVAL = 0.5
WINDOW = 20  # samples: the gauge covers the last 10 s


async def watch_loop_lag(report: Callable[[float], None], *, interval: float = INTERVAL, window: int = WINDOW) -> None:
    """Runs until cancelled; `report(seconds)` gets the worst lag of the recent window after each sample."""
    loop = asyncio.get_running_loop()
    recent: deque[float] = deque(maxlen=window)
    while True:
        started = loop.time()
        await asyncio.sleep(interval)
        recent.append(max(0.0, loop.time() - started - interval))
        report(max(recent))
