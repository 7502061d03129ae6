"""Pure: what a pod's bindings give it for one token request at one instant, before any token is fetched.

The broker acts on the `Decision` (serve, wait for MIC, or refuse); `nmi explain` shows it. Time-boxed bindings
are applied here, before the token cache is consulted: a binding outside its windows does not exist for
resolution, so no token cached through it while it was active can be served.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from . import identities as rules
from .model import AssignedIdentity, Binding, Identity, PodInfo, TokenRequest
from .ports import IdentityCatalog
from .windows import ANNOTATION as ACTIVE_WINDOWS_ANNOTATION
from .windows import HORIZON_DAYS


@dataclass(frozen=True, slots=True)
class Decision:
    ready: tuple[Identity, ...] = ()  # usable now, best first (managed: bound; standard: assigned by MIC)
    created: tuple[Identity, ...] = ()  # standard mode: MIC created the assignment, not assigned yet
    expected: tuple[Identity, ...] = ()  # standard mode: what the pod's active bindings refer to
    inactive: tuple[Binding, ...] = ()  # bindings outside their windows that would have answered the request

    @property
    def pending(self) -> bool:
        """Standard mode: nothing usable yet, but MIC may still assign something (worth waiting for)."""
        return bool(self.created or self.expected)


def resolve(pod: PodInfo, request: TokenRequest, catalog: IdentityCatalog, *, managed: bool, namespaced: bool,
            now: float) -> Decision:
    """`now` is wall-clock epoch seconds (active windows are wall-clock times)."""
    if managed:
        return _managed(pod, request, catalog, now)
    return _standard(pod, request, catalog, namespaced=namespaced, now=now)


def _managed(pod: PodInfo, request: TokenRequest, catalog: IdentityCatalog, now: float) -> Decision:
    matched = rules.matching_bindings(pod, catalog.bindings(pod.namespace), same_namespace=True)
    if not matched:
        return Decision()
    identities = list(catalog.identities(pod.namespace))
    awake = [b for b in matched if rules.is_active(b, now)]
    ready = rules.select(rules.bound_identities(pod, awake, identities), request)
    if ready or len(awake) == len(matched):
        return Decision(ready=tuple(ready))
    asleep = [b for b in matched if b not in awake
              and rules.select(rules.bound_identities(pod, [b], identities), request)]
    return Decision(inactive=tuple(asleep))


def binding_of(assignment: AssignedIdentity, catalog: IdentityCatalog) -> Binding | None:
    """The binding an AzureAssignedIdentity was made for: its current version, else MIC's copy of it."""
    if not assignment.binding_name:
        return assignment.binding
    namespace = assignment.binding_namespace or (assignment.identity.namespace if assignment.identity
                                                 else assignment.namespace)
    return catalog.binding(namespace, assignment.binding_name) or assignment.binding


def _standard(pod: PodInfo, request: TokenRequest, catalog: IdentityCatalog, *, namespaced: bool,
              now: float) -> Decision:
    usable: list[rules.Candidate] = []
    created: list[rules.Candidate] = []
    asleep: dict[tuple[str, str], Binding] = {}
    awake_refs: set[tuple[str, str]] | None = None  # identities an active binding of the pod refers to
    for a in catalog.assigned(pod.namespace, pod.name):
        if a.pod != pod.name or a.pod_namespace != pod.namespace or a.identity is None:
            continue
        if not rules.visible_to(pod, a.identity, namespaced=namespaced):
            continue
        if a.status not in (rules.ASSIGNED, rules.LEGACY_NO_STATE, rules.CREATED):
            continue
        binding = binding_of(a, catalog)
        if binding is not None and not rules.is_active(binding, now):
            # MIC may have recorded only one of several bindings giving this identity: another active one
            # still makes it the pod's. Computed only when an inactive binding is met (off the usual path).
            if awake_refs is None:
                awake_refs = {(b.namespace, b.identity_name) for b in rules.matching_bindings(
                    pod, catalog.bindings(None), same_namespace=namespaced) if rules.is_active(b, now)}
            if (a.identity.namespace, a.identity.name) not in awake_refs:
                if rules.select([a.identity], request):
                    asleep[(binding.namespace, binding.name)] = binding
                continue
        (created if a.status == rules.CREATED else usable).append(rules.Candidate(a.identity, a.binding_weight))
    ready = rules.select(rules.ordered(usable), request)
    if ready:
        return Decision(ready=tuple(ready))
    waiting = rules.select(rules.ordered(created), request)
    if waiting:
        return Decision(created=tuple(waiting), inactive=tuple(asleep.values()))
    matched = rules.matching_bindings(pod, catalog.bindings(None), same_namespace=namespaced)
    awake = [b for b in matched if rules.is_active(b, now)]
    for b in matched:
        if b not in awake and rules.select(expected_identities(pod, [b], catalog, namespaced=namespaced), request):
            asleep.setdefault((b.namespace, b.name), b)
    return Decision(expected=tuple(rules.select(expected_identities(pod, awake, catalog, namespaced=namespaced),
                                                request)),
                    inactive=tuple(asleep.values()))


def expected_identities(pod: PodInfo, matched: Sequence[Binding], catalog: IdentityCatalog, *,
                        namespaced: bool) -> list[Identity]:
    """Standard mode: identities the pod's bindings refer to, i.e. what MIC will assign."""
    wanted = {(b.namespace, b.identity_name): b.weight for b in matched}
    namespaces = {ns for ns, _ in wanted}
    found = [rules.Candidate(i, wanted[(i.namespace, i.name)])
             for ns in namespaces for i in catalog.identities(ns) if (i.namespace, i.name) in wanted]
    return [i for i in rules.ordered(found) if rules.visible_to(pod, i, namespaced=namespaced)]


def denial(inactive: Sequence[Binding], now: float) -> str:
    """The 403 description: the binding whose next window opens first. Names only, never annotation text."""
    best: tuple[Binding, str, float] | None = None
    for binding in inactive:
        opening = rules.next_opening(binding, now)
        if opening is not None and (best is None or opening.at < best[2]):
            best = (binding, opening.iso(), opening.at)
    if best is not None:
        return f"binding {best[0].namespace}/{best[0].name} is not active now; next window {best[1]}"
    binding = inactive[0]
    key = f"{binding.namespace}/{binding.name}"
    if binding.windows_error:
        return f"binding {key} is not active now; its {ACTIVE_WINDOWS_ANNOTATION} annotation is malformed"
    return f"binding {key} is not active now; no window opens in the next {HORIZON_DAYS} days"
