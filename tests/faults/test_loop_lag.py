"""The event-loop lag gauge (for the soak and for operators): a loop blocked for a while shows as lag."""

from __future__ import annotations

import asyncio
import time

from nmi.loop_lag import watch_loop_lag
from nmi.metrics import Metrics
from tests.eventually import eventually


async def test_a_blocked_loop_shows_as_lag_and_the_gauge_is_exported():
    metrics = Metrics()
    samples: list[float] = []

    def report(seconds: float) -> None:
        samples.append(seconds)
        metrics.set_event_loop_lag(seconds)

    task = asyncio.create_task(watch_loop_lag(report, interval=0.01, window=1000))
    try:
        await eventually(lambda: len(samples) >= 2, timeout=10)
        time.sleep(0.3)  # noqa: ASYNC251 - the scenario: blocking work on the loop, as a bug would do
        count = len(samples)
        await eventually(lambda: len(samples) > count, timeout=10, interval=0.01)
    finally:
        task.cancel()
    assert samples[-1] >= 0.25  # the timer fired at least the blocked time late
    text = metrics.render()[0].decode()
    assert "nmi_event_loop_lag_seconds " in text and "nmi_event_loop_lag_seconds 0.0" not in text
