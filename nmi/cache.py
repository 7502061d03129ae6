"""In-memory indexes fed by the watch informers: pods by IP, identity objects by namespace and by pod.

Every mutation happens on the event loop (the informer hands events over with call_soon_threadsafe), so
a reader never sees half an update and a check followed by `wait_changed` cannot miss a change.
Imports no foreign library.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from typing import Awaitable, Callable, Generic, Hashable, Iterable, Protocol, TypeVar

from .errors import NmiError, PodConflict, PodNotFound
from .model import AssignedIdentity, Binding, Identity, PodIdentityException, PodInfo, ServiceAccount

log = logging.getLogger(__name__)

T = TypeVar("T")
T_contra = TypeVar("T_contra", contravariant=True)
LiveLookup = Callable[[str], Awaitable[list[PodInfo]]]


class Store(Protocol[T_contra]):
    """What an informer feeds: a full snapshot after each list, then single changes."""

    def replace(self, items: Iterable[T_contra]) -> None: ...
    def upsert(self, item: T_contra) -> None: ...
    def discard(self, namespace: str, name: str) -> None: ...


class ObjectStore(Generic[T]):
    """Objects keyed by namespace/name, also grouped by `group_of` (e.g. namespace, or the pod they name)."""

    def __init__(self, group_of: Callable[[T], Hashable], *, on_change: Callable[[], None] | None = None) -> None:
        self._group_of = group_of
        self._on_change = on_change
        self._by_key: dict[tuple[str, str], T] = {}
        self._groups: dict[Hashable, dict[tuple[str, str], T]] = {}

    def __len__(self) -> int:
        return len(self._by_key)

    def all(self) -> list[T]:
        return [self._by_key[key] for key in sorted(self._by_key)]

    def get(self, namespace: str, name: str) -> T | None:
        return self._by_key.get((namespace, name))

    def group(self, group: Hashable) -> list[T]:
        members = self._groups.get(group, {})
        return [members[key] for key in sorted(members)]

    def replace(self, items: Iterable[T]) -> None:
        self._by_key.clear()
        self._groups.clear()
        for item in items:
            self._insert(item)
        self._changed()

    def upsert(self, item: T) -> None:
        self._remove((item.namespace, item.name))
        self._insert(item)
        self._changed()

    def discard(self, namespace: str, name: str) -> None:
        if self._remove((namespace, name)):
            self._changed()

    def _insert(self, item: T) -> None:
        key = (item.namespace, item.name)
        self._by_key[key] = item
        self._groups.setdefault(self._group_of(item), {})[key] = item

    def _remove(self, key: tuple[str, str]) -> bool:
        old = self._by_key.pop(key, None)
        if old is None:
            return False
        group = self._group_of(old)
        members = self._groups.get(group, {})
        members.pop(key, None)
        if not members:
            self._groups.pop(group, None)
        return True

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change()


class IdentityIndex:
    """`nmi.ports.IdentityCatalog` over the four CRD stores. Results are sorted by namespace/name."""

    def __init__(self, *, on_change: Callable[[], None] | None = None) -> None:
        self.on_change = on_change
        self.generation = 0
        self.bindings_generation = 0  # lets a reader skip re-reading bindings when something else changed
        self._changed_event = asyncio.Event()
        self.identity_store: ObjectStore[Identity] = ObjectStore(_namespace, on_change=self._changed)
        self.binding_store: ObjectStore[Binding] = ObjectStore(_namespace, on_change=self._bindings_changed)
        self.exception_store: ObjectStore[PodIdentityException] = ObjectStore(_namespace, on_change=self._changed)
        self.assigned_store: ObjectStore[AssignedIdentity] = ObjectStore(_assigned_pod, on_change=self._changed)
        # Fed only with --workload-identity (an empty store otherwise): also `nmi.ports.ServiceAccountDirectory`.
        self.service_account_store: ObjectStore[ServiceAccount] = ObjectStore(_namespace, on_change=self._changed)

    def identities(self, namespace: str) -> list[Identity]:
        return self.identity_store.group(namespace)

    def bindings(self, namespace: str | None) -> list[Binding]:
        """One namespace's bindings, or every namespace's with None (standard mode, not namespaced)."""
        return self.binding_store.all() if namespace is None else self.binding_store.group(namespace)

    def binding(self, namespace: str, name: str) -> Binding | None:
        return self.binding_store.get(namespace, name)

    def exceptions(self, namespace: str) -> list[PodIdentityException]:
        return self.exception_store.group(namespace)

    def assigned(self, namespace: str, pod_name: str) -> list[AssignedIdentity]:
        return self.assigned_store.group((namespace, pod_name))

    def service_account(self, namespace: str, name: str) -> ServiceAccount | None:
        return self.service_account_store.get(namespace, name)

    async def wait_changed(self, timeout: float) -> bool:
        event = self._changed_event
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def _bindings_changed(self) -> None:
        self.bindings_generation += 1
        self._changed()

    def _changed(self) -> None:
        self.generation += 1
        # Swap before setting: waiters hold the old event, later waiters wait for the next change.
        event, self._changed_event = self._changed_event, asyncio.Event()
        event.set()
        if self.on_change is not None:
            self.on_change()


class PodIndex:
    """`nmi.ports.PodDirectory`: this node's pods, live ones indexed by IP.

    Only live pods (Pending/Running, not deleting) own an IP, so a completed or deleted pod's IP passes to
    its successor. Live-lookup results are fed in unless the watch already knows a newer version or has
    seen the pod deleted (its UID is remembered), so a slow lookup can never resurrect a gone pod.
    """

    def __init__(
        self,
        live_lookup: LiveLookup | None = None,
        *,
        negative_ttl: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[], None] | None = None,
        on_conflict: Callable[[str, list[PodInfo]], None] | None = None,
        tombstone_limit: int = 4096,
    ) -> None:
        self._live_lookup = live_lookup
        self._negative_ttl = negative_ttl
        self._clock = clock
        self.on_change = on_change
        self.on_conflict = on_conflict
        self._tombstone_limit = tombstone_limit
        self._by_key: dict[str, PodInfo] = {}
        self._by_uid: dict[str, PodInfo] = {}
        self._by_ip: dict[str, dict[str, PodInfo]] = {}
        self._tombstones: OrderedDict[str, None] = OrderedDict()
        self._misses: dict[str, float] = {}
        self._lookups: dict[str, asyncio.Task[list[PodInfo]]] = {}
        self.live_lookups = 0

    @property
    def pods_indexed(self) -> int:
        return len(self._by_key)

    def pod_by_name(self, namespace: str, name: str) -> PodInfo | None:
        return self._by_key.get(f"{namespace}/{name}")

    def pod_by_uid(self, uid: str) -> PodInfo | None:
        return self._by_uid.get(uid)

    def live_pods_with_ip(self, ip: str) -> list[PodInfo]:
        owners = self._by_ip.get(ip, {})
        return [owners[key] for key in sorted(owners)]

    async def pod_for_ip(self, ip: str) -> PodInfo:
        owners = self.live_pods_with_ip(ip)
        if not owners and self._live_lookup is not None and not self._recent_miss(ip):
            await self._look_up_live(ip)
            owners = self.live_pods_with_ip(ip)
        if len(owners) == 1:
            return owners[0]
        if not owners:
            self._misses[ip] = self._clock() + self._negative_ttl
            raise PodNotFound()
        log.warning("pod IP conflict: %s is claimed by %s", ip, ", ".join(p.key for p in owners))
        if self.on_conflict is not None:
            self.on_conflict(ip, owners)
        raise PodConflict()

    # -- Store ---------------------------------------------------------------------------------------

    def replace(self, items: Iterable[PodInfo]) -> None:
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

    def _recent_miss(self, ip: str) -> bool:
        until = self._misses.get(ip)
        if until is None:
            return False
        if self._clock() < until:
            return True
        del self._misses[ip]
        return False

    async def _look_up_live(self, ip: str) -> None:
        task = self._lookups.get(ip)
        if task is None:
            # One lookup per IP however many requests miss at once; a cancelled caller does not cancel it.
            task = asyncio.ensure_future(self._live_lookup(ip))
            self._lookups[ip] = task
            task.add_done_callback(lambda _t: self._lookups.pop(ip, None))
            self.live_lookups += 1
        try:
            found = await asyncio.shield(task)
        except NmiError as exc:
            raise PodNotFound(f"No pod on this node is known with the caller's IP address ({exc.description})") from exc
        for pod in found:
            self.upsert(pod)

    def _insert(self, pod: PodInfo) -> None:
        self._by_key[pod.key] = pod
        if pod.uid:
            self._by_uid[pod.uid] = pod
        if pod.ip and pod.owns_ip:
            self._by_ip.setdefault(pod.ip, {})[pod.key] = pod
            self._misses.pop(pod.ip, None)

    def _remove(self, key: str, *, tombstone: bool = True) -> bool:
        old = self._by_key.pop(key, None)
        if old is None:
            return False
        if old.uid:
            self._by_uid.pop(old.uid, None)
            if tombstone:
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
        if self.on_change is not None:
            self.on_change()


def _older(incoming: str, stored: str) -> bool:
    # resourceVersions are opaque; compare only when both are integers (as etcd's are), else trust the event.
    if incoming.isdigit() and stored.isdigit():
        return int(incoming) < int(stored)
    return False


def _namespace(item: Identity | Binding | PodIdentityException | ServiceAccount) -> str:
    return item.namespace


def _assigned_pod(item: AssignedIdentity) -> tuple[str, str]:
    return (item.pod_namespace, item.pod)
