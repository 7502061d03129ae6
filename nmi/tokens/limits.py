"""How nmi treats its upstreams (IMDS, Azure AD): rate and concurrency limits, and retries.

Pure asyncio and policy: no HTTP library here. An upstream attempt either returns a value or raises
`UpstreamFailure`; `RetryPolicy` decides whether to try again (with nmi's one backoff) and turns the last
failure into the `NmiError` the caller sees (nmi.tokens.failures). Time is injected (`clock`, `sleep`) so the
policy is tested without waiting.
"""

from __future__ import annotations

import asyncio
import random
from collections import deque
from contextlib import asynccontextmanager
from typing import AsyncIterator, Awaitable, Callable, TypeVar

from ..backoff import Backoff
from .failures import UpstreamFailure, to_nmi_error

T = TypeVar("T")
Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class RetryPolicy:
    """Exponential backoff with jitter inside a bounded total time; honours Retry-After."""

    def __init__(self, *, clock: Clock, sleep: Sleep, budget: float = 10.0, max_attempts: int = 5,
                 base_delay: float = 1.0, max_delay: float = 4.0, rng: random.Random | None = None,
                 attempt_timeout: float | None = None) -> None:
        self._clock, self._sleep = clock, sleep
        self._budget, self._max_attempts = budget, max_attempts
        # With it, no caller waits past budget + attempt_timeout, however long an attempt queues for a slot.
        self._attempt_timeout = attempt_timeout
        # Jitter upwards only: IMDS asks for at least ~1 s between retries of a 5xx.
        self._backoff = Backoff(base_delay, max_delay, jitter=(1.0, 1.5))
        self._rng = rng or random.Random()

    def backoff(self, attempt: int) -> float:
        """The pause after attempt number `attempt` (0 for the first) failed."""
        return self._backoff.delay(attempt + 1, self._rng.random)

    async def run(self, attempt: Callable[[], Awaitable[T]], *, upstream: str, retry_statuses: frozenset[int]) -> T:
        deadline = self._clock() + self._budget
        for number in range(self._max_attempts):
            try:
                return await self._bounded(attempt, deadline)
            except UpstreamFailure as failure:
                retryable = failure.status is None or failure.status in retry_statuses
                delay = max(self.backoff(number), failure.retry_after or 0.0)
                last = number + 1 >= self._max_attempts
                if not retryable or last or self._clock() + delay > deadline:
                    raise to_nmi_error(_with_hint(failure, delay), upstream=upstream,
                                       retry_statuses=retry_statuses) from None
            await self._sleep(delay)
        raise AssertionError("unreachable: the loop returns or raises")

    async def _bounded(self, attempt: Callable[[], Awaitable[T]], deadline: float) -> T:
        """One attempt, cut off once the budget and one attempt's time are spent (e.g. queued behind the
        upstream's concurrency cap while it hangs): the caller gets 503 + Retry-After, not an endless wait."""
        if self._attempt_timeout is None:
            return await attempt()
        limit = max(0.0, deadline - self._clock()) + self._attempt_timeout
        try:
            return await asyncio.wait_for(attempt(), limit)
        except TimeoutError:
            raise UpstreamFailure(None, "timeout", f"no answer within {limit:.1f}s") from None


def _with_hint(failure: UpstreamFailure, delay: float) -> UpstreamFailure:
    """Callers are told to come back after the upstream's own Retry-After, else after our next backoff."""
    if failure.retry_after is not None:
        return failure
    return UpstreamFailure(failure.status, failure.error, failure.description, retry_after=delay)


class SlidingWindowLimiter:
    """At most `limit` admissions in any window of `per` seconds; waiters are admitted in arrival order.

    A sliding log rather than a token bucket, because a bucket of 20 refilling at 20/s admits up to 40 in
    some one-second windows, and IMDS counts per second."""

    def __init__(self, limit: int, per: float, *, clock: Clock, sleep: Sleep) -> None:
        self._limit, self._per = limit, per
        self._clock, self._sleep = clock, sleep
        self._admitted: deque[float] = deque()
        self._queue = asyncio.Lock()  # FIFO: the lock wakes waiters in order

    async def acquire(self) -> None:
        async with self._queue:
            while True:
                now = self._clock()
                while self._admitted and now - self._admitted[0] >= self._per:
                    self._admitted.popleft()
                if len(self._admitted) < self._limit:
                    self._admitted.append(now)
                    return
                await self._sleep(self._per - (now - self._admitted[0]))


class UpstreamGate:
    """Per-node discipline for one upstream: a concurrency cap, then a rate limit, then the call.

    The semaphore is taken first so that an admitted call starts at once; taking the rate slot first would
    let calls queue behind the semaphore and then start in a burst."""

    def __init__(self, *, rate: int, per: float = 1.0, concurrency: int, clock: Clock, sleep: Sleep) -> None:
        self._semaphore = asyncio.Semaphore(concurrency)
        self._limiter = SlidingWindowLimiter(rate, per, clock=clock, sleep=sleep)

    @asynccontextmanager
    async def admitted(self) -> AsyncIterator[None]:
        async with self._semaphore:
            await self._limiter.acquire()
            yield
