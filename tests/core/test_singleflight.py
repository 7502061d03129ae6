"""The LRU map and single flight every cache of nmi is built from."""

from __future__ import annotations

import asyncio

import pytest

from nmi.singleflight import Lru, SingleFlight


def test_lru_drops_the_least_recently_used_and_peek_is_not_a_use():
    lru: Lru[str, int] = Lru(2)
    lru.put("a", 1)
    lru.put("b", 2)
    assert lru.peek("a") == 1  # looked at, not used: "a" stays the oldest
    lru.put("c", 3)
    assert ("a" in lru, "b" in lru, "c" in lru) == (False, True, True)
    assert lru.get("b") == 2  # used: now "c" is the oldest
    lru.put("d", 4)
    assert [key for key, _ in lru.items()] == ["b", "d"]
    lru.touch("b")
    assert [key for key, _ in lru.items()] == ["d", "b"]


def test_lru_drop_pop_and_clear():
    lru: Lru[str, int] = Lru(10)
    for value, key in enumerate("abcd"):
        lru.put(key, value)
    lru.drop(lambda _key, value: value % 2 == 1)
    assert [key for key, _ in lru.items()] == ["a", "c"]
    assert (lru.pop("a"), lru.pop("a"), len(lru)) == (0, None, 1)
    lru.clear()
    assert len(lru) == 0 and lru.get("c") is None


async def test_concurrent_callers_share_one_flight_and_its_failure():
    started = 0
    running, release = asyncio.Event(), asyncio.Event()

    async def work() -> int:
        nonlocal started
        started += 1
        running.set()
        await release.wait()
        raise ValueError("upstream said no")

    flights: SingleFlight[str, int] = SingleFlight()
    callers = [asyncio.ensure_future(flights.join("k", work)) for _ in range(50)]
    await asyncio.wait_for(running.wait(), 5)
    assert "k" in flights and started == 1
    release.set()
    outcomes = await asyncio.gather(*callers, return_exceptions=True)
    assert started == 1 and all(isinstance(o, ValueError) for o in outcomes)
    assert "k" not in flights and not flights  # the key is free for the next flight


async def test_a_caller_that_goes_away_does_not_cancel_the_flight_for_the_others():
    release = asyncio.Event()
    finished: list[tuple[str, int]] = []

    async def work() -> int:
        await release.wait()
        return 7

    flights: SingleFlight[str, int] = SingleFlight(on_done=lambda key, task: finished.append((key, task.result())))
    leaving = asyncio.ensure_future(flights.join("k", work))
    staying = asyncio.ensure_future(flights.join("k", work))
    await asyncio.sleep(0)
    assert "k" in flights
    leaving.cancel()
    release.set()
    assert await staying == 7
    with pytest.raises(asyncio.CancelledError):
        await leaving
    await flights.wait_idle()
    assert finished == [("k", 7)]


async def test_cancel_stops_every_running_flight():
    flights: SingleFlight[int, None] = SingleFlight()
    tasks = [flights.start(n, lambda: asyncio.Event().wait()) for n in range(3)]
    await flights.cancel()
    assert all(task.cancelled() for task in tasks) and not flights
