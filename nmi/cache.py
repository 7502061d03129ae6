"""In-memory indexes fed by the watch informers: identity objects by namespace and by pod (pods by IP are
`nmi.pod_index`).

Every mutation happens on the event loop (the informer hands events over with call_soon_threadsafe), so
a reader never sees half an update and a check followed by `wait_changed` cannot miss a change.
Imports no foreign library.
"""

from __future__ import annotations

import asyncio
from typing import Callable, Generic, Hashable, Iterable, Protocol, TypeVar

from .model import AssignedIdentity, Binding, Identity, PodIdentityException, ServiceAccount

class Named(Protocol):
    """What ObjectStore keys its objects by (the frozen model types: read-only attributes)."""

    @property
    def namespace(self) -> str: ...
    @property
    def name(self) -> str: ...


T = TypeVar("T", bound=Named)
T_contra = TypeVar("T_contra", contravariant=True)


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
        # Sorted views, built on first read after a change (requests read far more often than watches write).
        # Readers get a fresh list each time, so the cached order cannot be changed through them.
        self._sorted_all: list[T] | None = None
        self._sorted_groups: dict[Hashable, list[T]] = {}

    def __len__(self) -> int:
        return len(self._by_key)

    def all(self) -> list[T]:
        if self._sorted_all is None:
            self._sorted_all = [self._by_key[key] for key in sorted(self._by_key)]
        return list(self._sorted_all)

    def get(self, namespace: str, name: str) -> T | None:
        return self._by_key.get((namespace, name))

    def group(self, group: Hashable) -> list[T]:
        members = self._sorted_groups.get(group)
        if members is None:
            found = self._groups.get(group, {})
            members = [found[key] for key in sorted(found)]
            if found:  # nothing is remembered for groups that do not exist
                self._sorted_groups[group] = members
        return list(members)

    def replace(self, items: Iterable[T]) -> None:
        self._by_key.clear()
        self._groups.clear()
        self._sorted_all = None
        self._sorted_groups.clear()
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
        group = self._group_of(item)
        self._by_key[key] = item
        self._groups.setdefault(group, {})[key] = item
        self._sorted_all = None
        self._sorted_groups.pop(group, None)

    def _remove(self, key: tuple[str, str]) -> bool:
        old = self._by_key.pop(key, None)
        if old is None:
            return False
        group = self._group_of(old)
        self._sorted_all = None
        self._sorted_groups.pop(group, None)
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


def _namespace(item: Identity | Binding | PodIdentityException | ServiceAccount) -> str:
    return item.namespace


def _assigned_pod(item: AssignedIdentity) -> tuple[str, str]:
    return (item.pod_namespace, item.pod)
