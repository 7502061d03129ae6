"""SPEC §7 "Stale caches are not trusted" and the live-lookup bounds, on the pod index as a plain object:
injected clocks, scripted lookups held back by gates, no waiting."""

from __future__ import annotations

import asyncio

import pytest

from nmi.pod_index import PodIndex
from nmi.errors import CachesNotTrusted, PodConflict, PodNotFound, Unavailable
from nmi.freshness import FRESH, NOT_SYNCED, POD_CACHE, STALE, CacheHealth
from nmi.live_lookups import LookupGate, LookupLimits, NegativeCache, TokenBucket
from nmi.model import PodInfo

from .test_kube_cache import ScriptedLookup, pod


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def until(predicate, *, steps: int = 1000) -> None:
    """Let the loop run until `predicate()` holds (bounded in loop iterations, not time)."""
    for _ in range(steps):
        if predicate():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition not reached")


def synced_health(clock: Clock | None = None) -> CacheHealth:
    health = CacheHealth(clock=clock or Clock())
    health.track(POD_CACHE)
    health.listed(POD_CACHE)
    return health


# -- CacheHealth -------------------------------------------------------------------------------------

def test_a_cache_is_not_synced_until_listed_then_fresh_stale_on_failure_and_fresh_again_on_a_watch():
    clock = Clock()
    health = CacheHealth(clock=clock)
    health.track("pods")
    health.track("azureidentitybindings")
    assert health.state("pods") == NOT_SYNCED
    assert health.problems() == ["azureidentitybindings watch not synced yet", "pods watch not synced yet"]
    health.failed("pods", "list", "HTTP 500")
    assert health.problems()[1] == "pods watch not synced yet (list failing: HTTP 500)"
    health.listed("pods")
    health.listed("azureidentitybindings")
    assert health.state("pods") == FRESH and health.problems() == []
    health.failed("pods", "watch", "HTTP 500")
    clock.now += 7
    health.failed("pods", "watch", "ConnectionRefusedError")  # still failing: `since` is the first failure
    assert health.state("pods") == STALE
    assert health.problems() == ["pods watch stale for 7s (watch failing: ConnectionRefusedError)"]
    assert health.identity_problems() == []  # the pod cache is the pod index's business
    health.watching("pods")
    assert health.state("pods") == FRESH and health.problems() == []


def test_a_410_makes_the_cache_stale_until_the_relist_lands():
    health = synced_health()
    health.expired(POD_CACHE)
    assert health.state(POD_CACHE) == STALE and "relisting after 410" in health.problems()[0]
    health.listed(POD_CACHE)
    assert health.state(POD_CACHE) == FRESH


def test_an_untracked_cache_is_fresh_and_identity_problems_leave_out_pods():
    health = CacheHealth()
    assert health.state("azureassignedidentities") == FRESH  # not watched in managed mode
    health.track("azureidentities")
    health.track(POD_CACHE)
    assert health.identity_problems() == ["azureidentities watch not synced yet"]


# -- PodIndex under a stale or unsynced cache --------------------------------------------------------

async def test_before_the_first_sync_every_caller_gets_503_with_retry_after_and_no_lookup():
    health = CacheHealth()
    health.track(POD_CACHE)
    lookup = ScriptedLookup({"10.244.0.5": [pod("web")]})
    index = PodIndex(lookup, health=health)
    with pytest.raises(CachesNotTrusted) as caught:
        await index.pod_for_ip("10.244.0.5")
    assert caught.value.status == 503 and caught.value.retry_after and lookup.calls == []


async def test_attack_ip_reuse_while_the_pod_watch_is_broken_never_yields_the_deleted_pods_identity():
    """The finding: the watch fails, the victim pod is deleted unseen, a pod of another namespace gets its IP.
    The stale cache still says `victim`; only the live lookup may answer, and it names the newcomer."""
    health = synced_health()
    victim = PodInfo(namespace="bank", name="victim", uid="u-victim", ip="10.244.0.5", resource_version="10")
    newcomer = PodInfo(namespace="attacker", name="evil", uid="u-evil", ip="10.244.0.5", resource_version="20")
    lookup = ScriptedLookup({"10.244.0.5": [newcomer]})
    index = PodIndex(lookup, health=health)
    index.replace([victim])
    health.failed(POD_CACHE, "watch", "HTTP 500")
    assert (await index.pod_for_ip("10.244.0.5")).key == "attacker/evil"
    assert lookup.calls == ["10.244.0.5"]  # confirmed live although the cache had an answer

    lookup.answers.clear()  # the newcomer is gone too: nobody owns the IP
    index.gate.negative.discard("10.244.0.5")
    with pytest.raises(PodNotFound) as caught:
        await index.pod_for_ip("10.244.0.5")
    assert caught.value.retry_after


async def test_stale_cache_and_a_failing_live_lookup_is_503_never_the_cached_pod():
    health = synced_health()

    async def unreachable(ip: str) -> list[PodInfo]:
        raise Unavailable("The Kubernetes API server could not be reached")

    index = PodIndex(unreachable, health=health)
    index.replace([pod("victim")])
    health.failed(POD_CACHE, "watch", "HTTP 500")
    with pytest.raises(PodNotFound) as caught:
        await index.pod_for_ip("10.244.0.5")
    assert caught.value.status == 503 and caught.value.retry_after
    health.watching(POD_CACHE)  # recovered: the cache answers again
    assert (await index.pod_for_ip("10.244.0.5")).name == "victim"


async def test_stale_cache_confirmations_never_write_the_stale_cache():
    health = synced_health()
    index = PodIndex(ScriptedLookup({"10.244.0.6": [pod("new", "10.244.0.6")]}), health=health)
    health.failed(POD_CACHE, "watch", "HTTP 500")
    assert (await index.pod_for_ip("10.244.0.6")).name == "new"
    assert index.pod_by_name("default", "new") is None  # left for the resumed watch or relist


async def test_stale_cache_two_live_pods_on_one_ip_are_a_conflict():
    health = synced_health()
    index = PodIndex(ScriptedLookup({"10.244.0.5": [pod("a"), pod("b")]}), health=health)
    health.failed(POD_CACHE, "list", "HTTP 500")
    with pytest.raises(PodConflict):
        await index.pod_for_ip("10.244.0.5")


async def test_a_stale_cache_without_live_lookups_refuses():
    health = synced_health()
    index = PodIndex(health=health)
    index.replace([pod("victim")])
    health.expired(POD_CACHE)
    with pytest.raises(CachesNotTrusted):
        await index.pod_for_ip("10.244.0.5")


async def test_a_live_lookup_landing_after_a_relist_never_reinserts_the_deleted_pod():
    """Issue 10 item 7, deterministically: the lookup reads the pod, the pod is deleted, the watch expires and
    relists without it — then the lookup's answer lands. No later event would ever remove a re-inserted pod."""
    lookup = ScriptedLookup({"10.244.0.5": [pod("gone", rv="10")]})
    lookup.gate = asyncio.Event()
    index = PodIndex(lookup)
    waiting = asyncio.create_task(index.pod_for_ip("10.244.0.5"))
    await until(lambda: lookup.calls == ["10.244.0.5"])  # the lookup is in flight
    index.replace([pod("bystander", "10.244.0.9", rv="30")])  # 410 → relist at a newer state, `gone` absent
    lookup.gate.set()
    with pytest.raises(PodNotFound):
        await waiting
    assert index.pod_by_name("default", "gone") is None
    assert index.live_pods_with_ip("10.244.0.5") == []


async def test_a_live_lookup_without_a_relist_meanwhile_is_still_kept():
    lookup = ScriptedLookup({"10.244.0.5": [pod("new", rv="10")]})
    lookup.gate = asyncio.Event()
    index = PodIndex(lookup)
    waiting = asyncio.create_task(index.pod_for_ip("10.244.0.5"))
    await until(lambda: lookup.calls == ["10.244.0.5"])
    index.upsert(pod("bystander", "10.244.0.9", rv="30"))  # a watch event is no relist
    lookup.gate.set()
    assert (await waiting).name == "new"
    assert index.pod_by_name("default", "new") is not None


# -- the live-lookup bounds --------------------------------------------------------------------------

def test_the_token_bucket_allows_a_burst_then_the_rate():
    clock = Clock()
    bucket = TokenBucket(10.0, 20, clock)
    assert sum(bucket.take() for _ in range(100)) == 20
    clock.now += 0.5
    assert sum(bucket.take() for _ in range(100)) == 5
    clock.now += 3600  # refills up to the burst, no further
    assert sum(bucket.take() for _ in range(100)) == 20


def test_the_negative_cache_is_a_bounded_lru_with_a_ttl():
    clock = Clock()
    cache = NegativeCache(ttl=2.0, limit=8, clock=clock)
    for n in range(1000):
        cache.add(f"10.0.{n // 256}.{n % 256}")
    assert len(cache) == 8
    assert "10.0.3.231" in cache and "10.0.0.0" not in cache  # the newest kept, the oldest evicted
    clock.now += 2.0
    assert "10.0.3.231" not in cache


async def test_attack_200_unknown_addresses_cost_at_most_the_burst_plus_the_rate_in_pod_lists():
    """Issue 10 item 11: 200 source addresses used to be 200 pod lists. With the clock frozen only the burst
    passes; the rest are 503 + Retry-After without reaching the API server; the negative cache stays bounded."""
    clock = Clock()
    lookup = ScriptedLookup()
    limits = LookupLimits(rate=10.0, burst=20, negative_limit=64)
    index = PodIndex(lookup, clock=clock, limits=limits)
    answers = []
    for n in range(200):
        with pytest.raises(PodNotFound) as caught:
            await index.pod_for_ip(f"10.99.{n // 250}.{n % 250 + 1}")
        answers.append((caught.value.status, caught.value.retry_after is not None))
    assert set(answers) == {(503, True)}
    assert len(lookup.calls) == 20 and index.gate.refused == 180
    assert len(index.gate.negative) <= 64
    clock.now += 1.0  # one second later: ten more
    for n in range(200, 260):
        with pytest.raises(PodNotFound):
            await index.pod_for_ip(f"10.98.0.{n - 199}")
    assert len(lookup.calls) == 30


async def test_failed_lookups_are_remembered_so_one_address_cannot_hammer_the_api_server():
    clock = Clock()
    calls = []

    async def unreachable(ip: str) -> list[PodInfo]:
        calls.append(ip)
        raise Unavailable("The Kubernetes API server could not be reached")

    index = PodIndex(unreachable, clock=clock)
    for _ in range(50):
        with pytest.raises(PodNotFound):
            await index.pod_for_ip("10.244.0.77")
    assert calls == ["10.244.0.77"]
    clock.now += LookupLimits().negative_ttl
    with pytest.raises(PodNotFound):
        await index.pod_for_ip("10.244.0.77")
    assert len(calls) == 2


async def test_concurrent_lookups_are_bounded_and_a_caller_waits_at_most_the_slot_wait():
    started: list[str] = []
    release = asyncio.Event()

    async def slow(ip: str) -> list[PodInfo]:
        started.append(ip)
        await release.wait()
        return []

    gate = LookupGate(slow, limits=LookupLimits(concurrency=2, slot_wait=0.05))
    callers = [asyncio.create_task(gate(f"10.0.0.{n}")) for n in range(1, 6)]
    outcomes = await asyncio.wait_for(asyncio.gather(*callers[2:], return_exceptions=True), 5)
    assert len(started) == 2  # never more than the bound in flight
    assert all(isinstance(o, PodNotFound) and o.retry_after for o in outcomes)
    release.set()
    assert await asyncio.wait_for(asyncio.gather(*callers[:2]), 5) == [[], []]
