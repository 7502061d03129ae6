"""The rules resolution applies, one object at a time: does a binding select a pod, is it active, is the pod
excepted or MIC's, which assignments count, and in which order identities come.

Upstream picked "the first" identity in informer cache order, which alternated between restarts. Here the
order is always: highest binding weight first, then identity namespace/name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

from ..model import (BINDING_LABEL, MIC_DEPLOYMENT, AssignedIdentity, Binding, Identity, PodIdentityException,
                     PodInfo, TokenRequest, Workload)
from ..windows import ANNOTATION as ACTIVE_WINDOWS_ANNOTATION
from ..windows import HORIZON_DAYS, Opening

ASSIGNED = "Assigned"
CREATED = "Created"
LEGACY_NO_STATE = ""  # written by MIC < 1.5: treated as assigned, as upstream does


@dataclass(frozen=True, slots=True)
class Candidate:
    identity: Identity
    weight: int = 0

    @property
    def order(self) -> tuple[int, str, str]:
        return (-self.weight, self.identity.namespace, self.identity.name)


def ordered(candidates: Iterable[Candidate]) -> list[Identity]:
    """Deterministic order without duplicates (the same identity through two bindings keeps its best weight)."""
    best: dict[tuple[str, str], Candidate] = {}
    for c in candidates:
        key = (c.identity.namespace, c.identity.name)
        if key not in best or c.weight > best[key].weight:
            best[key] = c
    return [c.identity for c in sorted(best.values(), key=lambda c: c.order)]


def is_excepted(pod: PodInfo, exceptions: Iterable[PodIdentityException]) -> bool:
    return exception_for(pod, exceptions) is not None


def exception_for(pod: PodInfo, exceptions: Iterable[PodIdentityException]) -> PodIdentityException | None:
    """The first exception in the pod's namespace one of whose labels the pod carries with an equal value
    (case-insensitive)."""
    for exc in exceptions:
        if exc.namespace != pod.namespace:
            continue
        for key, value in exc.pod_labels.items():
            if key in pod.labels and pod.labels[key].lower() == value.lower():
                return exc
    return None


def is_mic_pod(pod: PodInfo, *, mic_namespace: str, replicaset: Workload | None, deployment: Workload | None) -> bool:
    """Only a pod of the Deployment literally named `mic` in --MICNamespace, followed by UID through the watch
    caches: pod -> ReplicaSet (the one the pod's owner reference names, with that UID) -> Deployment `mic` (the one
    the ReplicaSet's controller reference names, with that UID).

    `replicaset` is the cached ReplicaSet named like the pod's owner, `deployment` the cached Deployment `mic`, both
    looked up in the pod's namespace. Upstream compared names only (ReplicaSet `mic…`, both written by whoever
    creates the pod): a bare pod with a made-up owner reference, or a Deployment named `mickey`, got the node's
    identities.
    """
    if pod.namespace.lower() != mic_namespace.lower() or not pod.replicaset or not pod.replicaset_uid:
        return False
    if replicaset is None or deployment is None:
        return False
    if (replicaset.namespace, replicaset.name, replicaset.uid) != (pod.namespace, pod.replicaset, pod.replicaset_uid):
        return False
    if (replicaset.owner_kind, replicaset.owner_name) != ("Deployment", MIC_DEPLOYMENT) or not replicaset.owner_uid:
        return False
    return (deployment.namespace, deployment.name, deployment.uid) == (pod.namespace, MIC_DEPLOYMENT,
                                                                       replicaset.owner_uid)


def binding_selector(pod: PodInfo) -> str:
    return pod.labels.get(BINDING_LABEL, "")


# Why a binding does not select a pod; "" when it does. Resolution and explain share this one rule.
NO_LABEL = "no-label"
OTHER_NAMESPACE = "other-namespace"
SELECTOR_MISMATCH = "selector-mismatch"


def mismatch(pod: PodInfo, binding: Binding, *, same_namespace: bool) -> str:
    """A pod without the `aadpodidbinding` label matches nothing (upstream matched bindings with an empty
    selector to every unlabelled pod)."""
    selector = binding_selector(pod)
    if not selector:
        return NO_LABEL
    if same_namespace and binding.namespace != pod.namespace:
        return OTHER_NAMESPACE
    if binding.selector != selector:
        return SELECTOR_MISMATCH
    return ""


def matching_bindings(pod: PodInfo, bindings: Iterable[Binding], *, same_namespace: bool) -> list[Binding]:
    """Bindings whose selector equals the pod's `aadpodidbinding` label."""
    if not binding_selector(pod):
        return []
    return [b for b in bindings if not mismatch(pod, b, same_namespace=same_namespace)]


def is_active(binding: Binding, now: float) -> bool:
    """Inside one of its active windows (always, without the annotation; never, with a malformed one)."""
    if binding.windows_error:
        return False
    return binding.windows is None or binding.windows.active_at(now)


def next_opening(binding: Binding, now: float) -> Opening | None:
    return binding.windows.next_opening(now) if binding.windows is not None else None


def managed_identities(pod: PodInfo, bindings: Iterable[Binding], identities: Iterable[Identity]) -> list[Identity]:
    """Managed mode: AzureIdentityBinding -> AzureIdentity, both in the pod's namespace."""
    return bound_identities(pod, matching_bindings(pod, bindings, same_namespace=True), identities)


def bound_identities(pod: PodInfo, matched: Iterable[Binding], identities: Iterable[Identity]) -> list[Identity]:
    weights: dict[str, int] = {}
    for b in matched:
        weights[b.identity_name] = max(weights.get(b.identity_name, b.weight), b.weight)
    return ordered(Candidate(i, weights[i.name]) for i in identities
                   if i.namespace == pod.namespace and i.name in weights)


@dataclass(frozen=True, slots=True)
class Assignment:
    """Standard mode: the pod's identities by MIC state, after the namespace filter."""

    assigned: tuple[Identity, ...]
    created: tuple[Identity, ...]


def visible_to(pod: PodInfo, identity: Identity, *, namespaced: bool) -> bool:
    if namespaced or identity.namespaced:
        return identity.namespace == pod.namespace
    return True


def pod_assignments(pod: PodInfo, assigned: Iterable[AssignedIdentity], *,
                    namespaced: bool) -> Iterator[tuple[AssignedIdentity, Identity]]:
    """The pod's AzureAssignedIdentities that count: for this pod, naming an identity it may see, Assigned (or
    without state) or Created. Other states (Unassigned...) give nothing."""
    for a in assigned:
        if a.pod != pod.name or a.pod_namespace != pod.namespace or a.identity is None:
            continue
        if not visible_to(pod, a.identity, namespaced=namespaced):
            continue
        if a.status in (ASSIGNED, LEGACY_NO_STATE, CREATED):
            yield a, a.identity


def standard_assignment(pod: PodInfo, assigned: Iterable[AssignedIdentity], *, namespaced: bool) -> Assignment:
    usable: list[Candidate] = []
    created: list[Candidate] = []
    for a, identity in pod_assignments(pod, assigned, namespaced=namespaced):
        (created if a.status == CREATED else usable).append(Candidate(identity, a.binding_weight))
    return Assignment(assigned=tuple(ordered(usable)), created=tuple(ordered(created)))


def _same(a: str, b: str) -> bool:
    return a.lower() == b.lower()


def requested(identity: Identity, request: TokenRequest) -> bool:
    """Does this identity answer the client_id / resource-id selector? Both compare case-insensitively
    (GUIDs and ARM resource IDs are case-insensitive). object_id needs a token and is handled by the broker."""
    if request.client_id:
        return _same(identity.client_id, request.client_id)
    if request.resource_id:
        return _same(identity.resource_id.rstrip("/"), request.resource_id.rstrip("/"))
    return True


def select(identities: Sequence[Identity], request: TokenRequest) -> list[Identity]:
    """The identities, in order, that may answer this request (object_id is not filtered here)."""
    if request.object_id:
        return list(identities)
    return [i for i in identities if requested(i, request)]


def denial(inactive: Sequence[Binding], now: float) -> str:
    """The 403 description: the binding whose next window opens first. Names only, never annotation text."""
    best: tuple[Binding, str, float] | None = None
    for binding in inactive:
        opening = next_opening(binding, now)
        if opening is not None and (best is None or opening.at < best[2]):
            best = (binding, opening.iso(), opening.at)
    if best is not None:
        return f"binding {best[0].namespace}/{best[0].name} is not active now; next window {best[1]}"
    binding = inactive[0]
    key = f"{binding.namespace}/{binding.name}"
    if binding.windows_error:
        return f"binding {key} is not active now; its {ACTIVE_WINDOWS_ANNOTATION} annotation is malformed"
    return f"binding {key} is not active now; no window opens in the next {HORIZON_DAYS} days"
