"""IMDS discipline: at most 20 calls in any second and 5 in flight per node, measured by an injected clock."""

from __future__ import annotations

import asyncio
import bisect

from nmi.model import Identity
from nmi.tokens.limits import SlidingWindowLimiter

IDENTITY = Identity("default", "id-1", client_id="cid-user-1")


def busiest_second(times: list[float]) -> int:
    times = sorted(times)
    return max(bisect.bisect_left(times, t + 1.0) - i for i, t in enumerate(times))


async def test_limiter_admits_at_most_20_in_any_second_and_keeps_the_pace(clock):
    limiter = SlidingWindowLimiter(20, 1.0, clock=clock, sleep=clock.sleep)
    admitted: list[float] = []

    async def one() -> None:
        await limiter.acquire()
        admitted.append(clock())

    await asyncio.gather(*(one() for _ in range(100)))

    assert len(admitted) == 100
    assert busiest_second(admitted) == 20
    assert admitted[-1] - admitted[0] >= 4.0  # 100 calls at 20/s need at least four further seconds


async def test_load_on_many_resources_stays_within_imds_rate_and_concurrency(imds, make_service, clock):
    imds.response_delay = 0.01  # calls overlap, so an uncapped client would exceed 5 in flight
    starts: list[float] = []
    balance: list[int] = []

    def in_flight(source: str, delta: int) -> None:
        balance.append(delta)
        if delta > 0:
            assert source == "imds"
            starts.append(clock())

    service = make_service(imds, in_flight=in_flight)
    resources = [f"https://resource-{n}.example" for n in range(60)]

    grants = await asyncio.gather(*(service.get(IDENTITY, r) for r in resources))

    assert [g.primary.resource for g in grants] == resources
    assert imds.token_requests == 60 and len(starts) == 60
    assert imds.max_in_flight <= 5
    assert busiest_second(starts) <= 20
    assert max(starts) - min(starts) >= 2.0
    assert sum(balance) == 0
