"""`DecisionMemo`: the token route's hot path resolves a pod once, not on every request.

A cached-token request is answered in ~100 µs, and resolving the pod (its exceptions, bindings, identities, MIC's
assignments, the workload identity bridge) was a good part of it, redone for every request although nothing it
reads had changed. A decision depends only on

* the pod: `PodInfo` objects are immutable and the pod index replaces the object on every change, so the object
  itself (held here, so its id cannot be reused while remembered) stands for the pod's version — a relabelled pod,
  or another pod on a reused IP, is another object;
* the request's selectors (client_id, resource_id, object_id; not the resource) and whether the node's identity may
  answer (the token route, not /host/token);
* the caches resolution reads, through their change counters: the catalog's `generation` (AzureIdentities,
  bindings, exceptions, AzureAssignedIdentities, ServiceAccounts) and, in standard mode, the workloads' (MIC's
  ReplicaSets and Deployment);
* the wall clock, through the active windows of time-boxed bindings. A window opens and closes at a whole minute
  of its zone's local time, and every zone's offset is a whole number of seconds, so whether a binding is active
  cannot change within one whole second: a decision is remembered for the second it was made in, no longer.

Any change to any of these starts a fresh memo (SPEC §7: a removed binding or identity, a relabelled pod, a
reused IP never get the old answer). Without the change counters (a catalog that has none) nothing is remembered.
"""

from __future__ import annotations

from typing import Any, Callable

from ..model import PodInfo, TokenRequest
from .decision import Decision, View

MAX_ENTRIES = 1024  # decisions per (generation, second); one per pod and selector in practice


class DecisionMemo:
    __slots__ = ("_view", "_state", "_entries")

    def __init__(self, view: View) -> None:
        self._view = view
        self._state: tuple[Any, ...] | None = None
        self._entries: dict[tuple[Any, ...], tuple[PodInfo, Decision]] = {}

    def _generations(self) -> tuple[Any, ...] | None:
        view = self._view
        catalog = getattr(view.catalog, "generation", None)
        if catalog is None:
            return None
        counters = [catalog]
        shared: object = view.catalog  # the daemon's catalog is its ServiceAccount directory too
        for source in (view.service_accounts, view.workloads):
            if source is not None and source is not shared:
                generation = getattr(source, "generation", None)
                if generation is None:
                    return None
                counters.append(generation)
        return tuple(counters)

    def decide(self, pod: PodInfo, request: TokenRequest, *, node_identity_allowed: bool, now: float,
               resolve: Callable[[], Decision]) -> Decision:
        """The remembered decision for this pod and request, or `resolve()`'s, remembered."""
        generations = self._generations()
        if generations is None:
            return resolve()
        state = (generations, int(now // 1))
        if state != self._state:  # something resolution reads changed, or a new second began
            self._entries.clear()
            self._state = state
        key = (id(pod), request.client_id, request.resource_id, request.object_id, node_identity_allowed)
        remembered = self._entries.get(key)
        if remembered is not None and remembered[0] is pod:
            return remembered[1]
        decision = resolve()
        if len(self._entries) >= MAX_ENTRIES:
            self._entries.clear()
        self._entries[key] = (pod, decision)
        return decision
