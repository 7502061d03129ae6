"""Bounds on the live pod lookups callers can cause (SPEC §7 "No input stalls the daemon").

A caller whose address is not in the pod cache costs one pod list against the API server, and whoever reaches
nmi's port chooses that address. So the lookups unknown callers trigger are bounded, all together:

* a global token bucket: 10 lookups/s, bursts of 20 (a node's pods rarely start faster than that);
* at most 4 lookups in flight (the reader's thread pool); a lookup waits at most 1 s for a slot;
* one lookup per address at a time (single flight); a cancelled caller never cancels it;
* a negative result — no live pod with that address, or a failed or refused lookup — is remembered for 2 s in an
  LRU of at most 4,096 addresses, so one address costs at most one list per 2 s, and memory stays bounded
  whatever the number of addresses. A watch event that brings a pod with that address forgets the entry.

Every refusal is 503 + Retry-After (`PodNotFound`), like any caller nmi cannot identify.
Imports no foreign library.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Awaitable, Callable, Generic, TypeVar

from .errors import NmiError, PodNotFound, Unavailable
from .singleflight import Lru, SingleFlight

R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class LookupLimits:
    rate: float = 10.0  # lookups per second, all addresses together
    burst: int = 20
    concurrency: int = 4
    slot_wait: float = 1.0  # seconds a lookup may wait for a free slot
    negative_ttl: float = 2.0
    negative_limit: int = 4096


class TokenBucket:
    def __init__(self, rate: float, burst: int, clock: Callable[[], float]) -> None:
        self._rate, self._burst, self._clock = rate, float(burst), clock
        self._tokens = float(burst)
        self._at = clock()

    def take(self) -> bool:
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + max(0.0, now - self._at) * self._rate)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


class NegativeCache:
    """Addresses recently found to name no pod (or whose lookup failed): a bounded LRU with a TTL."""

    def __init__(self, ttl: float, limit: int, clock: Callable[[], float]) -> None:
        self._ttl, self._clock = ttl, clock
        self._until: Lru[str, float] = Lru(limit)

    def __len__(self) -> int:
        return len(self._until)

    def __contains__(self, ip: str) -> bool:
        until = self._until.peek(ip)
        if until is None:
            return False
        if self._clock() < until:
            return True
        self._until.pop(ip)
        return False

    def add(self, ip: str) -> None:
        self._until.put(ip, self._clock() + self._ttl)

    def discard(self, ip: str) -> None:
        self._until.pop(ip)


class LookupGate(Generic[R]):
    """Wraps a live lookup with the bounds above. `gate(ip)` returns the lookup's result or raises PodNotFound."""

    def __init__(self, lookup: Callable[[str], Awaitable[R]], *, limits: LookupLimits = LookupLimits(),
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._lookup = lookup
        self._limits = limits
        self._bucket = TokenBucket(limits.rate, limits.burst, clock)
        self._slots = asyncio.Semaphore(limits.concurrency)
        self._flights: SingleFlight[str, R] = SingleFlight(on_done=_retrieve)
        self.negative = NegativeCache(limits.negative_ttl, limits.negative_limit, clock)
        self.started = 0  # lookups actually made (metrics, tests)
        self.refused = 0  # lookups the rate limit turned away

    async def __call__(self, ip: str) -> R:
        if ip in self.negative:
            raise PodNotFound()
        if ip not in self._flights:
            if not self._bucket.take():
                self.refused += 1
                raise PodNotFound("Too many unknown callers at once; the caller's pod could not be looked up",
                                  retry_after=1)
            self.started += 1
        task = self._flights.start(ip, lambda: self._bounded(ip))
        try:
            return await asyncio.shield(task)
        except NmiError as exc:
            self.negative.add(ip)
            raise PodNotFound(f"No pod on this node is known with the caller's IP address ({exc.description})") from exc

    async def _bounded(self, ip: str) -> R:
        try:
            await asyncio.wait_for(self._slots.acquire(), self._limits.slot_wait)
        except TimeoutError:
            raise Unavailable("too many pod lookups in flight") from None
        try:
            return await self._lookup(ip)
        finally:
            self._slots.release()


def _retrieve(ip: str, done: asyncio.Task[object]) -> None:
    if not done.cancelled():
        done.exception()  # retrieved here too: every caller may have been cancelled meanwhile
