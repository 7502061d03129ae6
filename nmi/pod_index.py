"""This node's pods, live ones indexed by IP: who is calling (SPEC §2 caller attribution, §7 stale caches).

Every mutation happens on the event loop (the informer hands events over with call_soon_threadsafe).
Imports no foreign library.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import OrderedDict
from typing import Awaitable, Callable, Iterable

from .errors import CachesNotTrusted, PodConflict, PodNotFound
from .freshness import FRESH, NOT_SYNCED, POD_CACHE, CacheHealth
from .live_lookups import LookupGate, LookupLimits
from .model import PodInfo

log = logging.getLogger(__name__)

LiveLookup = Callable[[str], Awaitable[list[PodInfo]]]


class PodIndex:
    """`nmi.ports.PodDirectory`: this node's pods, live ones indexed by IP.

    Only live pods (Pending/Running, not deleting) own an IP, so a completed or deleted pod's IP passes to
    its successor. Live-lookup results are fed in unless the watch already knows a newer version, has seen the
    pod deleted (its UID is remembered), or relisted after the lookup began (the relist is newer: SPEC §7), so a
    slow lookup can never resurrect a gone pod. Live lookups go through a `LookupGate` (rate limit, concurrency,
    bounded negative cache).

    With a `CacheHealth` (SPEC §7 "Stale caches are not trusted"): before the pod cache's first sync every caller
    gets 503 + Retry-After; while it is stale, the cache is not believed at all — every caller is confirmed by a
    live lookup (through the same gate) and answered from its result alone, or gets 503 + Retry-After.
    """

    def __init__(
        self,
        live_lookup: LiveLookup | None = None,
        *,
        negative_ttl: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_size: Callable[[int], None] | None = None,
        on_conflict: Callable[[str, list[PodInfo]], None] | None = None,
        tombstone_limit: int = 4096,
        health: CacheHealth | None = None,
        limits: LookupLimits = LookupLimits(),
    ) -> None:
        self._live_lookup = live_lookup
        if negative_ttl is not None:
            limits = dataclasses.replace(limits, negative_ttl=negative_ttl)
        self.gate = LookupGate(self._numbered_lookup, limits=limits, clock=clock) if live_lookup else None
        self.health = health
        self._lists = 0  # replace() calls: a live lookup begun before a relist is older than the relist
        self._on_size = on_size  # told the number of pods indexed after every change (the metric)
        self._on_conflict = on_conflict
        self._tombstone_limit = tombstone_limit
        self._by_key: dict[str, PodInfo] = {}
        self._by_ip: dict[str, dict[str, PodInfo]] = {}
        self._tombstones: OrderedDict[str, None] = OrderedDict()

    @property
    def pods_indexed(self) -> int:
        return len(self._by_key)

    def pod_by_name(self, namespace: str, name: str) -> PodInfo | None:
        return self._by_key.get(f"{namespace}/{name}")

    def live_pods_with_ip(self, ip: str) -> list[PodInfo]:
        owners = self._by_ip.get(ip)
        if not owners:
            return []
        if len(owners) == 1:  # the usual case: nothing to sort
            return list(owners.values())
        return [owners[key] for key in sorted(owners)]

    def cached_pod_for_ip(self, ip: str) -> PodInfo | None:
        if self.health is not None and self.health.state(POD_CACHE) != FRESH:
            return None
        owners = self._by_ip.get(ip)
        return next(iter(owners.values())) if owners is not None and len(owners) == 1 else None

    async def pod_for_ip(self, ip: str) -> PodInfo:
        state = self.health.state(POD_CACHE) if self.health is not None else FRESH
        if state == NOT_SYNCED:
            raise CachesNotTrusted("nmi is starting: its pod cache is not synced yet", retry_after=2)
        if state != FRESH:
            return self._only_owner(ip, await self._confirmed_live(ip))
        owners = self.live_pods_with_ip(ip)
        if not owners and self.gate is not None:
            owners = await self._look_up_live(ip)
        return self._only_owner(ip, owners)

    def _only_owner(self, ip: str, owners: list[PodInfo]) -> PodInfo:
        if len(owners) == 1:
            return owners[0]
        if not owners:
            if self.gate is not None:
                self.gate.negative.add(ip)
            raise PodNotFound()
        log.warning("pod IP conflict: %s is claimed by %s", ip, ", ".join(p.key for p in owners))
        if self._on_conflict is not None:
            self._on_conflict(ip, owners)
        raise PodConflict()

    # -- Store ---------------------------------------------------------------------------------------

    def replace(self, items: Iterable[PodInfo]) -> None:
        self._lists += 1
        fresh = {pod.key: pod for pod in items}
        for key, old in list(self._by_key.items()):
            if key not in fresh or fresh[key].uid != old.uid:
                self._remove(key)
        for pod in fresh.values():
            self._remove(pod.key, tombstone=False)
            self._insert(pod)
        self._changed()

    def upsert(self, item: PodInfo) -> None:
        if item.uid and item.uid in self._tombstones:
            return
        old = self._by_key.get(item.key)
        if old is not None and old.uid == item.uid and _older(item.resource_version, old.resource_version):
            return
        if old is not None:
            self._remove(item.key, tombstone=old.uid != item.uid)
        self._insert(item)
        self._changed()

    def discard(self, namespace: str, name: str) -> None:
        if self._remove(f"{namespace}/{name}"):
            self._changed()

    # -- internals -----------------------------------------------------------------------------------

    async def _numbered_lookup(self, ip: str) -> tuple[int, list[PodInfo]]:
        lists = self._lists  # taken before the request leaves: any later relist is newer than its answer
        assert self._live_lookup is not None  # the gate, our only caller, exists only with a live lookup
        return lists, await self._live_lookup(ip)

    async def _look_up_live(self, ip: str) -> list[PodInfo]:
        assert self.gate is not None  # called only when a live lookup is configured
        lists, found = await self.gate(ip)
        if self.health is not None and self.health.state(POD_CACHE) != FRESH:
            return _owners(found, ip)  # went stale meanwhile: answer from the live result, leave the cache alone
        if lists == self._lists:
            for pod in found:
                self.upsert(pod)
        # else: a relist landed while the lookup was in flight; it is newer, so the cache answers (SPEC §7).
        return self.live_pods_with_ip(ip)

    async def _confirmed_live(self, ip: str) -> list[PodInfo]:
        """Stale cache: only a successful live lookup may name the caller; the stale cache is not consulted."""
        if self.gate is None:
            raise CachesNotTrusted("nmi's pod cache is stale and no live lookup is configured")
        _, found = await self.gate(ip)
        return _owners(found, ip)

    def _insert(self, pod: PodInfo) -> None:
        key = pod.key  # one string for both maps (the property builds a new one on every call)
        self._by_key[key] = pod
        if pod.ip and pod.owns_ip:
            self._by_ip.setdefault(pod.ip, {})[key] = pod
            if self.gate is not None:
                self.gate.negative.discard(pod.ip)

    def _remove(self, key: str, *, tombstone: bool = True) -> bool:
        old = self._by_key.pop(key, None)
        if old is None:
            return False
        if old.uid and tombstone:
            self._tombstones[old.uid] = None
            while len(self._tombstones) > self._tombstone_limit:
                self._tombstones.popitem(last=False)
        owners = self._by_ip.get(old.ip)
        if owners is not None:
            owners.pop(key, None)
            if not owners:
                del self._by_ip[old.ip]
        return True

    def _changed(self) -> None:
        if self._on_size is not None:
            self._on_size(len(self._by_key))


def _owners(found: list[PodInfo], ip: str) -> list[PodInfo]:
    return sorted((p for p in found if p.ip == ip and p.owns_ip), key=lambda p: p.key)


def _older(incoming: str, stored: str) -> bool:
    # resourceVersions are opaque; compare only when both are integers (as etcd's are), else trust the event.
    if incoming.isdigit() and stored.isdigit():
        return int(incoming) < int(stored)
    return False
