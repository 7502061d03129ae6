"""Which watch caches nmi can trust right now (SPEC §7 "Stale caches are not trusted").

Each informer reports here, on the event loop. A cache is:

* **not synced** until its first list succeeds;
* **fresh** while every list and watch request since the last success has succeeded;
* **stale** from the moment a list or watch request fails — an HTTP error, connection refused or reset, a timeout,
  a stream cut mid-way, an ERROR event — or a 410 makes the informer relist, until the next list succeeds or a
  watch request is accepted again (a resumed watch replays what it missed from its resourceVersion).

A watch stream that ends normally (the server's `timeoutSeconds`) and is re-established, bookmarks, and a watch
on which nothing happens for a long time are healthy: quiet is not broken. The informer reports a failure as soon
as the request fails, so `/readyz` turns 503 at once (well within SPEC's 15 s); a blackholed API server is
noticed when the request's connect or read timeout fires.

What a stale cache means for callers is decided by its readers: the pod index confirms every caller by a live
lookup, and the broker refuses (503 + Retry-After) while any identity cache is stale or not synced.
Imports no foreign library.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

POD_CACHE = "pods"  # the pod informer's resource name; every other tracked cache feeds identity resolution

FRESH = "fresh"
NOT_SYNCED = "not synced"
STALE = "stale"


@dataclass
class _Cache:
    synced: bool = False
    problem: str = ""  # why the cache is stale; "" while fresh
    since: float = 0.0


class CacheHealth:
    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._caches: dict[str, _Cache] = {}
        # Caches not synced or stale, kept with every change: every token request asks, and all are fine nearly
        # always, so the answer is then one set lookup instead of a walk over every cache.
        self._untrusted: set[str] = set()

    def track(self, resource: str) -> None:
        self._caches.setdefault(resource, _Cache())
        self._recount(resource)

    def _recount(self, resource: str) -> None:
        cache = self._caches[resource]
        if cache.synced and not cache.problem:
            self._untrusted.discard(resource)
        else:
            self._untrusted.add(resource)

    # -- reported by the informers -------------------------------------------------------------------

    def listed(self, resource: str) -> None:
        cache = self._caches.setdefault(resource, _Cache())
        cache.synced, cache.problem = True, ""
        self._recount(resource)

    def watching(self, resource: str) -> None:
        self._caches.setdefault(resource, _Cache()).problem = ""
        self._recount(resource)

    def failed(self, resource: str, operation: str, reason: str) -> None:
        self._stale(resource, f"{operation} failing: {reason}")

    def expired(self, resource: str) -> None:
        self._stale(resource, "relisting after 410 Gone")

    def _stale(self, resource: str, problem: str) -> None:
        cache = self._caches.setdefault(resource, _Cache())
        if not cache.problem:
            cache.since = self._clock()
        cache.problem = problem
        self._recount(resource)

    # -- read by the pod index, the broker and /readyz ----------------------------------------------

    def state(self, resource: str) -> str:
        cache = self._caches.get(resource)
        if cache is None:
            return FRESH  # not watched in this mode
        if not cache.synced:
            return NOT_SYNCED
        return STALE if cache.problem else FRESH

    def problems(self, *, identity_only: bool = False) -> list[str]:
        """One line per cache that cannot be trusted, e.g. `pods watch stale for 3s (watch failing: HTTP 500)`."""
        untrusted = self._untrusted
        if not untrusted or (identity_only and len(untrusted) == 1 and POD_CACHE in untrusted):
            return []
        found = []
        for resource in sorted(self._caches):
            if identity_only and resource == POD_CACHE:
                continue
            cache = self._caches[resource]
            if not cache.synced:
                found.append(f"{resource} watch not synced yet" + (f" ({cache.problem})" if cache.problem else ""))
            elif cache.problem:
                found.append(f"{resource} watch stale for {self._clock() - cache.since:.0f}s ({cache.problem})")
        return found

    def identity_problems(self) -> list[str]:
        """The caches identity resolution reads (everything but pods)."""
        return self.problems(identity_only=True)
