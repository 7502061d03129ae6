"""The fake API server's state: objects, a global resourceVersion, an event history and live watchers.

Plain Python, no HTTP: `apiserver.py` puts the wire protocol on top. Semantics follow the real API server
where nmi depends on them: every change bumps one global resourceVersion; a watch replays the history
after its resourceVersion and then follows live changes; selectors turn changes that move an object in or
out of the selection into ADDED/DELETED; history older than the last compaction is gone (410).

Like the real API server's watch cache, each object is encoded to JSON once, when it is stored: a list answers
with those bytes joined (`list_encoded`), so serving a page costs about what a real server spends, not a deep
copy and a re-encoding of every object on every page. Stored objects are never handed out (callers get copies),
so the bytes cannot go stale.
"""

from __future__ import annotations

import asyncio
import bisect
import copy
import itertools
import json
from dataclasses import dataclass, field
from typing import Any, Callable

# plural → (kind, apiVersion)
RESOURCES: dict[str, tuple[str, str]] = {
    "pods": ("Pod", "v1"),
    "secrets": ("Secret", "v1"),
    "serviceaccounts": ("ServiceAccount", "v1"),
    "replicasets": ("ReplicaSet", "apps/v1"),
    "deployments": ("Deployment", "apps/v1"),
    "events": ("Event", "v1"),
    "azureidentities": ("AzureIdentity", "aadpodidentity.k8s.io/v1"),
    "azureidentitybindings": ("AzureIdentityBinding", "aadpodidentity.k8s.io/v1"),
    "azureassignedidentities": ("AzureAssignedIdentity", "aadpodidentity.k8s.io/v1"),
    "azurepodidentityexceptions": ("AzurePodIdentityException", "aadpodidentity.k8s.io/v1"),
}
PLURAL_OF_KIND = {kind: plural for plural, (kind, _) in RESOURCES.items()}

Matcher = Callable[[dict[str, Any]], bool]


class TooOld(Exception):
    def __init__(self, requested: int, oldest: int) -> None:
        super().__init__(f"too old resource version: {requested} ({oldest})")


@dataclass(frozen=True, slots=True)
class Change:
    rv: int
    plural: str
    type: str  # ADDED, MODIFIED, DELETED
    old: dict[str, Any] | None
    new: dict[str, Any]


@dataclass(eq=False)
class Watcher:
    plural: str
    namespace: str | None
    matches: Matcher
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)

    def offer(self, change: Change) -> None:
        event = self.translate(change)
        if event is not None:
            self.queue.put_nowait(("event", event))

    def translate(self, change: Change) -> dict[str, Any] | None:
        if change.plural != self.plural:
            return None
        if self.namespace and change.new["metadata"]["namespace"] != self.namespace:
            return None
        was = change.old is not None and self.matches(change.old)
        now = self.matches(change.new)
        if change.type == "DELETED":
            kind = "DELETED" if was or now else None
        elif was and now:
            kind = "MODIFIED"
        elif now:
            kind = "ADDED"
        elif was:
            kind = "DELETED"  # moved out of the selection
        else:
            kind = None
        return None if kind is None else {"type": kind, "object": change.new}


class ClusterState:
    def __init__(self) -> None:
        self._rv = itertools.count(100)
        self.resource_version = next(self._rv)
        self.objects: dict[str, dict[tuple[str, str], dict[str, Any]]] = {plural: {} for plural in RESOURCES}
        self._encoded: dict[str, dict[tuple[str, str], bytes]] = {plural: {} for plural in RESOURCES}
        self._sorted: dict[str, list[tuple[str, str]]] = {}  # each plural's keys in order, until one comes or goes
        self.history: list[Change] = []
        self.compacted_at = 0
        self.watchers: set[Watcher] = set()
        self._uids = itertools.count(1)

    def put(self, obj: dict[str, Any], *, notify: bool = True) -> dict[str, Any]:
        """Create or replace an object (by kind, namespace, name). Returns the stored copy.
        `notify=False` keeps the change from open watchers (they missed it while disconnected)."""
        obj = copy.deepcopy(obj)
        plural = PLURAL_OF_KIND[obj["kind"]]
        meta = obj.setdefault("metadata", {})
        meta.setdefault("namespace", "default")
        key = (meta["namespace"], meta["name"])
        old = self.objects[plural].get(key)
        if old is not None and not meta.get("uid"):
            meta["uid"] = old["metadata"]["uid"]
        meta.setdefault("uid", f"uid-{next(self._uids):06d}")
        meta.setdefault("creationTimestamp", "2026-01-01T00:00:00Z")
        rv = next(self._rv)
        meta["resourceVersion"] = str(rv)
        encoded = _encode(obj)  # before the state changes: an object JSON cannot carry is refused here
        self.resource_version = rv
        if old is None:
            self._sorted.pop(plural, None)
        self.objects[plural][key] = obj
        self._encoded[plural][key] = encoded
        self._record(Change(self.resource_version, plural, "MODIFIED" if old else "ADDED", old, obj), notify=notify)
        return json.loads(encoded)  # a copy, decoded faster than deepcopy copies

    def delete(self, plural: str, namespace: str, name: str, *, notify: bool = True) -> bool:
        old = self.objects[plural].pop((namespace, name), None)
        if old is None:
            return False
        del self._encoded[plural][(namespace, name)]
        self._sorted.pop(plural, None)
        self.resource_version = next(self._rv)
        gone = copy.deepcopy(old)
        gone["metadata"]["resourceVersion"] = str(self.resource_version)
        self._record(Change(self.resource_version, plural, "DELETED", old, gone), notify=notify)
        return True

    def get(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        obj = self.objects[plural].get((namespace, name))
        return copy.deepcopy(obj) if obj is not None else None

    def list(self, plural: str, namespace: str | None, matches: Matcher, *, start: int = 0,
             limit: int | None = None) -> tuple[list[dict[str, Any]], bool]:
        """Copies of the matching objects in key order, from the `start`-th, at most `limit`; and whether more
        follow (only what is returned is copied, so paging through a big collection stays cheap)."""
        encoded, more = self.list_encoded(plural, namespace, matches, start=start, limit=limit)
        return [json.loads(item) for item in encoded], more

    def list_encoded(self, plural: str, namespace: str | None, matches: Matcher, *, start: int = 0,
                     limit: int | None = None) -> tuple[list[bytes], bool]:
        """`list`, as each object's JSON bytes (encoded when it was stored)."""
        keys = self._sorted.get(plural)
        if keys is None:
            keys = self._sorted[plural] = sorted(self.objects[plural])
        if namespace:  # keys sort by (namespace, name): the namespace's objects are one run
            keys = keys[bisect.bisect_left(keys, (namespace, "")):bisect.bisect_left(keys, (namespace + "\0", ""))]
        if matches is not match_everything:
            objects = self.objects[plural]
            keys = [key for key in keys if matches(objects[key])]
        stop = len(keys) if limit is None else start + limit
        encoded = self._encoded[plural]
        return [encoded[key] for key in keys[start:stop]], stop < len(keys)

    def compact(self) -> None:
        """Forget the history: any watch from a resourceVersion before now gets 410 Gone."""
        self.history.clear()
        self.resource_version = next(self._rv)
        self.compacted_at = self.resource_version

    def subscribe(self, watcher: Watcher, since: int | None) -> None:
        """Register a watcher and queue what it missed since `since` (None: synthetic ADDED for all)."""
        if since is None:
            for obj in self.list(watcher.plural, watcher.namespace, watcher.matches)[0]:
                watcher.queue.put_nowait(("event", {"type": "ADDED", "object": obj}))
        elif since < self.compacted_at:
            raise TooOld(since, self.compacted_at)
        else:
            for change in self.history:
                if change.rv > since:
                    watcher.offer(change)
        self.watchers.add(watcher)

    def unsubscribe(self, watcher: Watcher) -> None:
        self.watchers.discard(watcher)

    def _record(self, change: Change, *, notify: bool) -> None:
        self.history.append(change)
        if not notify:
            return
        for watcher in list(self.watchers):
            watcher.offer(change)


def _encode(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def match_everything(obj: dict[str, Any]) -> bool:
    """The matcher of empty selectors: a list with it skips matching altogether."""
    return True


def field_value(obj: dict[str, Any], path: str) -> str:
    node: Any = obj
    for part in path.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return "" if node is None else str(node)


def selector_matcher(field_selector: str, label_selector: str) -> Matcher:
    """Field selectors on any dotted path (`=`, `==`, `!=`, comma-joined); label selectors `k=v`, `k!=v`, `k`."""
    field_terms = _terms(field_selector)
    label_terms = _terms(label_selector)
    if not field_terms and not label_terms:
        return match_everything

    def matches(obj: dict[str, Any]) -> bool:
        labels = obj.get("metadata", {}).get("labels") or {}
        for path, op, value in field_terms:
            if (field_value(obj, path) == value) != (op == "="):
                return False
        for key, op, value in label_terms:
            if op == "exists":
                if key not in labels:
                    return False
            elif (labels.get(key) == value) != (op == "="):
                return False
        return True

    return matches


def _terms(selector: str) -> list[tuple[str, str, str]]:
    terms = []
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            terms.append((key.strip(), "!=", value.strip()))
        elif "=" in term:
            key, value = term.replace("==", "=", 1).split("=", 1)
            terms.append((key.strip(), "=", value.strip()))
        else:
            terms.append((term, "exists", ""))
    return terms
