"""How nmi treats its upstreams (IMDS, Azure AD): rate and concurrency limits, retries, error mapping.

Pure asyncio and policy: no HTTP library here. An upstream attempt either returns a value or raises
`UpstreamFailure`; `RetryPolicy` decides whether to try again and turns the last failure into the
`NmiError` the caller sees. Time is injected (`clock`, `sleep`) so the policy is tested without waiting.
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import random
import re
from collections import deque
from contextlib import asynccontextmanager
from typing import AsyncIterator, Awaitable, Callable, TypeVar

from . import errors

T = TypeVar("T")
Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

# IMDS "error handling" guidance: 404 and 410 mean IMDS is updating, 429 throttled, 5xx transient.
IMDS_RETRY_STATUSES = frozenset({404, 408, 410, 429}) | frozenset(range(500, 600))
# Azure AD: only throttling and server errors are worth repeating; any other 4xx is a final answer.
AAD_RETRY_STATUSES = frozenset({408, 429}) | frozenset(range(500, 600))

DEFAULT_RETRY_AFTER = 5
MAX_DESCRIPTION = 400
_JWT_LIKE = re.compile(r"eyJ[\w-]{4,}\.[\w-]{4,}\.[\w-]*")
_ERROR_CODE = re.compile(r"[^A-Za-z0-9_.-]")


class UpstreamFailure(Exception):
    """One failed attempt. `status` is None for transport failures (refused, reset, timeout)."""

    def __init__(self, status: int | None, error: str = "", description: str = "", *,
                 retry_after: float | None = None) -> None:
        super().__init__(f"upstream status {status}: {error}")
        self.status, self.error, self.description, self.retry_after = status, error, description, retry_after


def parse_retry_after(value: str | None, *, now: float) -> float | None:
    """Retry-After as seconds: delta-seconds or an HTTP date (RFC 9110)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)


def safe_description(text: str, *, secret: str = "") -> str:
    """An upstream error_description fit to pass on: one line, bounded, nothing token- or secret-shaped.

    Azure AD and IMDS descriptions carry no secrets, but nmi cannot prove that for every upstream, so the
    secret in use and anything that looks like a JWT are blanked out anyway."""
    text = " ".join(str(text).split())
    if secret:
        text = text.replace(secret, "[redacted]")
    text = _JWT_LIKE.sub("[redacted]", text)
    return text if len(text) <= MAX_DESCRIPTION else text[: MAX_DESCRIPTION - 3] + "..."


def to_nmi_error(failure: UpstreamFailure, *, upstream: str, retry_statuses: frozenset[int]) -> errors.NmiError:
    """The SPEC §2 table: 429 → 429, other refusals → 403, transient → 503, each with a Retry-After."""
    retry_after = max(1, math.ceil(failure.retry_after)) if failure.retry_after is not None else DEFAULT_RETRY_AFTER
    detail = f": {failure.description}" if failure.description else ""
    if failure.status is None:
        return errors.Unavailable(f"{upstream} could not be reached{detail}", retry_after=retry_after)
    if failure.status == 429:
        return errors.Throttled(f"{upstream} is throttling token requests{detail}", retry_after=retry_after)
    if failure.status in retry_statuses or failure.status >= 500:
        return errors.Unavailable(f"{upstream} answered {failure.status}{detail}", retry_after=retry_after)
    if 400 <= failure.status < 500:
        code = _ERROR_CODE.sub("", failure.error)[:64] or "invalid_request"
        return errors.TokenRefused(f"{upstream} refused the token request{detail}", error=code)
    return errors.Unavailable(f"{upstream} answered unexpected status {failure.status}", retry_after=retry_after)


class RetryPolicy:
    """Exponential backoff with jitter inside a bounded total time; honours Retry-After."""

    def __init__(self, *, clock: Clock, sleep: Sleep, budget: float = 10.0, max_attempts: int = 5,
                 base_delay: float = 1.0, max_delay: float = 4.0, rng: random.Random | None = None,
                 attempt_timeout: float | None = None) -> None:
        self._clock, self._sleep = clock, sleep
        self._budget, self._max_attempts = budget, max_attempts
        # With it, no caller waits past budget + attempt_timeout, however long an attempt queues for a slot.
        self._attempt_timeout = attempt_timeout
        self._base, self._cap = base_delay, max_delay
        self._rng = rng or random.Random()

    def backoff(self, attempt: int) -> float:
        # Jitter upwards only: IMDS asks for at least ~1 s between retries of a 5xx.
        return min(self._cap, self._base * 2**attempt) * (1.0 + 0.5 * self._rng.random())

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
