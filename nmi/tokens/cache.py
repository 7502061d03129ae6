"""The token cache in front of every token source: hits, single flight, refresh ahead, LRU, forgetting.

Pure asyncio, no HTTP and no MSAL. A hit is answered on the event loop with no await and no thread hop.
Concurrent misses for one key share one fetch (a task the callers await through `shield`, so a caller that
goes away does not cancel the fetch for the others). A token nearing expiry is served while one background
fetch replaces it.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Awaitable, Callable, Hashable

from ..model import AccessToken, TokenGrant
from ..singleflight import Lru, SingleFlight

log = logging.getLogger(__name__)

Fetch = Callable[[], Awaitable[tuple[AccessToken, ...]]]


@dataclass(frozen=True, slots=True)
class RefreshPolicy:
    """When a cached token is still served, and when it is replaced ahead of expiry."""

    unusable_within: float = 60.0  # never hand out a token with less left: the caller needs time to use it
    refresh_floor: float = 300.0  # refresh when less than max(floor, fraction × lifetime) remains
    refresh_fraction: float = 0.1
    retry_refresh_after: float = 30.0  # after a failed background refresh, before trying again

    def refresh_at(self, obtained_at: float, expires_on: float) -> float:
        lifetime = max(0.0, expires_on - obtained_at)
        return expires_on - max(self.refresh_floor, self.refresh_fraction * lifetime)


@dataclass(slots=True)
class _Entry:
    tokens: tuple[AccessToken, ...]
    owner: str | None  # identity key for `forget`; None for the node's own identities
    expires_on: float
    refresh_at: float
    grant: TokenGrant  # what every hit answers: one object per entry, not one per request
    obtained_at: float = 0.0


class TokenCache:
    def __init__(self, *, clock: Callable[[], float], max_entries: int = 4096,
                 policy: RefreshPolicy = RefreshPolicy()) -> None:
        self._clock = clock
        self._policy = policy
        self._entries: Lru[Hashable, _Entry] = Lru(max_entries)
        self._fetching: SingleFlight[Hashable, tuple[AccessToken, ...]] = SingleFlight(on_done=self._fetch_done)

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, key: Hashable, fetch: Fetch, *, owner: str | None) -> TokenGrant:
        grant = self.hit(key, fetch, owner=owner)
        if grant is not None:
            return grant
        return TokenGrant(await asyncio.shield(self._start_fetch(key, fetch, owner)), cached=False)

    def hit(self, key: Hashable, fetch: Fetch, *, owner: str | None) -> TokenGrant | None:
        """The cached grant if it is still usable (starting its refresh ahead of expiry when due), else None: what
        `get` answers without awaiting."""
        entry = self._entries.peek(key)
        if entry is None:
            return None
        now = self._clock()
        if entry.expires_on - now < self._policy.unusable_within:
            return None
        self._entries.touch(key)
        if now >= entry.refresh_at and key not in self._fetching:
            # Push the next attempt out first, so a failing refresh is not restarted on every hit.
            entry.refresh_at = now + self._policy.retry_refresh_after
            self._start_fetch(key, fetch, owner)
        return entry.grant

    def ages(self, match: Callable[[Hashable], bool]) -> list[tuple[Hashable, float, float]]:
        """(key, age, seconds left) of the cached entries whose key matches, without touching the LRU order or
        fetching anything (for `nmi explain`)."""
        now = self._clock()
        return [(key, now - entry.obtained_at, entry.expires_on - now)
                for key, entry in self._entries.items() if match(key)]

    def forget(self, keep_owners: set[str]) -> None:
        """Drop the tokens of identities that no longer exist; the node's own tokens stay."""
        self._entries.drop(lambda _key, entry: entry.owner is not None and entry.owner not in keep_owners)

    async def wait_idle(self) -> None:
        """Until no fetch is running (tests and shutdown use it to observe background refreshes)."""
        await self._fetching.wait_idle()

    async def close(self) -> None:
        await self._fetching.cancel()
        self._entries.clear()

    def _start_fetch(self, key: Hashable, fetch: Fetch, owner: str | None) -> asyncio.Task[tuple[AccessToken, ...]]:
        """The fetch running for `key`, or a new one (single flight)."""
        return self._fetching.start(key, lambda: self._fill(key, fetch, owner), name=f"token-fetch {owner}")

    async def _fill(self, key: Hashable, fetch: Fetch, owner: str | None) -> tuple[AccessToken, ...]:
        tokens = await fetch()
        obtained_at = self._clock()
        expires_on = float(min(t.expires_on for t in tokens))
        if expires_on - obtained_at >= self._policy.unusable_within:
            self._entries.put(key, _Entry(tokens, owner, expires_on, self._policy.refresh_at(obtained_at, expires_on),
                                          TokenGrant(tokens, cached=True), obtained_at))
        return tokens

    def _fetch_done(self, key: Hashable, task: asyncio.Task[tuple[AccessToken, ...]]) -> None:
        if task.cancelled():
            return
        failure = task.exception()  # always retrieved: nobody may be left awaiting a background refresh
        if failure is not None and key in self._entries:
            log.warning("background token refresh failed for %s: %s", task.get_name().removeprefix("token-fetch "),
                        failure)
