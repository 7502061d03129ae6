"""The cache in front of the token sources: single flight, refresh ahead, expiry, LRU, forgetting."""

from __future__ import annotations

import asyncio

import pytest

from nmi.errors import Unavailable
from nmi.model import AccessToken, Identity
from nmi.tokens.cache import RefreshPolicy, TokenCache

ARM = "https://management.azure.com/"
IDENTITY = Identity("default", "id-1", client_id="cid-user-1")


async def test_500_concurrent_requests_for_one_key_make_exactly_one_upstream_call(imds, make_service):
    imds.response_delay = 0.05  # keep the first call in flight while the others arrive
    service = make_service(imds)

    grants = await asyncio.gather(*(service.get(IDENTITY, ARM) for _ in range(500)))

    assert imds.token_requests == 1
    assert len({g.primary.access_token for g in grants}) == 1


async def test_token_is_refreshed_in_the_background_ahead_of_expiry(imds, make_service, clock):
    imds.token_lifetime = 3600
    service = make_service(imds)
    first = (await service.get(IDENTITY, ARM)).primary

    clock.advance(3600 - 400)  # 400 s left: more than max(300 s, 10% of 3600 s), not yet due
    assert (await service.get(IDENTITY, ARM)).cached
    await service.wait_idle()
    assert imds.token_requests == 1

    clock.advance(100)  # 300 s left: due for refresh; the caller still gets the cached token at once
    due = await service.get(IDENTITY, ARM)
    assert due.cached and due.primary == first
    await service.wait_idle()
    assert imds.token_requests == 2

    refreshed = await service.get(IDENTITY, ARM)
    assert refreshed.cached and refreshed.primary != first
    assert refreshed.primary.expires_on == int(clock.now) + 3600
    assert imds.token_requests == 2


async def test_token_with_less_than_a_minute_left_is_not_served(imds, make_service, clock):
    service = make_service(imds, refresh_policy=RefreshPolicy(refresh_floor=0, refresh_fraction=0))
    first = (await service.get(IDENTITY, ARM)).primary

    clock.advance(3599 - 59)
    grant = await service.get(IDENTITY, ARM)

    assert not grant.cached and grant.primary != first
    assert imds.token_requests == 2


def token(name: str, expires_on: float) -> tuple[AccessToken, ...]:
    return (AccessToken(access_token=name, expires_on=int(expires_on), resource=ARM),)


class CountingFetch:
    def __init__(self, clock, *, lifetime: float = 3600) -> None:
        self.clock, self.lifetime, self.calls = clock, lifetime, 0
        self.fail_with: Exception | None = None
        self.release = asyncio.Event()
        self.release.set()

    async def __call__(self):
        self.calls += 1
        await self.release.wait()
        if self.fail_with:
            raise self.fail_with
        return token(f"token-{self.calls}", self.clock() + self.lifetime)


async def test_concurrent_followers_share_the_leaders_error(clock):
    cache = TokenCache(clock=clock)
    fetch = CountingFetch(clock)
    fetch.release.clear()
    fetch.fail_with = Unavailable("IMDS answered 500", retry_after=3)

    waiting = [asyncio.ensure_future(cache.get("k", fetch, owner="o")) for _ in range(20)]
    await asyncio.sleep(0)
    fetch.release.set()
    results = await asyncio.gather(*waiting, return_exceptions=True)

    assert fetch.calls == 1
    assert all(r is fetch.fail_with for r in results)
    assert len(cache) == 0


async def test_caller_that_goes_away_does_not_cancel_the_fetch_for_others(clock):
    cache = TokenCache(clock=clock)
    fetch = CountingFetch(clock)
    fetch.release.clear()
    leaver = asyncio.ensure_future(cache.get("k", fetch, owner="o"))
    stayer = asyncio.ensure_future(cache.get("k", fetch, owner="o"))
    await asyncio.sleep(0)

    leaver.cancel()
    fetch.release.set()

    assert (await stayer).primary.access_token == "token-1"
    assert fetch.calls == 1


async def test_failed_background_refresh_keeps_serving_and_retries_later(clock):
    cache = TokenCache(clock=clock)
    fetch = CountingFetch(clock)
    await cache.get("k", fetch, owner="o")
    clock.advance(3600 - 200)
    fetch.fail_with = Unavailable("down")

    assert (await cache.get("k", fetch, owner="o")).primary.access_token == "token-1"
    await cache.wait_idle()
    assert (await cache.get("k", fetch, owner="o")).cached
    await cache.wait_idle()
    assert fetch.calls == 2  # no new refresh on every hit right after a failure

    clock.advance(31)
    fetch.fail_with = None
    await cache.get("k", fetch, owner="o")
    await cache.wait_idle()
    assert fetch.calls == 3
    assert (await cache.get("k", fetch, owner="o")).primary.access_token == "token-3"


async def test_least_recently_used_entry_is_evicted_when_full(clock):
    cache = TokenCache(clock=clock, max_entries=2)
    fetch = CountingFetch(clock)
    await cache.get("a", fetch, owner="o")
    await cache.get("b", fetch, owner="o")
    await cache.get("a", fetch, owner="o")  # a is now the most recently used

    await cache.get("c", fetch, owner="o")

    assert len(cache) == 2
    assert (await cache.get("a", fetch, owner="o")).cached
    assert not (await cache.get("b", fetch, owner="o")).cached


async def test_forget_drops_entries_of_vanished_identities_only(clock):
    cache = TokenCache(clock=clock)
    fetch = CountingFetch(clock)
    for key, owner in (("a", "ns/a"), ("b", "ns/b"), ("node", None)):
        await cache.get(key, fetch, owner=owner)

    cache.forget({"ns/b"})

    assert [(await cache.get(k, fetch, owner=o)).cached for k, o in (("a", "ns/a"), ("b", "ns/b"), ("node", None))] \
        == [False, True, True]


@pytest.mark.parametrize("lifetime, due_after", [(3600, 3600 - 360), (86400, 86400 - 8640), (1200, 900)])
def test_refresh_is_due_at_the_larger_of_five_minutes_and_a_tenth_of_the_lifetime(lifetime, due_after):
    assert RefreshPolicy().refresh_at(0.0, float(lifetime)) == due_after
