"""`resolve`: the one pure decision — what a pod gets for one token request at one instant, from the watch caches,
before any token is fetched. The broker acts on the `Decision` (fetch, wait for MIC, or refuse); `nmi explain`
shows it.

The rules, in order:
1. an AzurePodIdentityException matching the pod, or (standard mode) the pod of the MIC Deployment: the node's own
   identity (the token route only; /host/token has no such shortcut, as upstream);
2. --workload-identity: a pod no binding serves, labelled for workload identity, whose ServiceAccount names a
   client ID, gets that identity;
3. the pod's bindings: managed mode AzureIdentityBinding -> AzureIdentity; standard mode what MIC assigned.
Time-boxed bindings are applied here, before the token cache is consulted: a binding outside its windows does not
exist for resolution, so no token cached through it while it was active can be served.
"""

from __future__ import annotations

from typing import Sequence

from ..model import (MIC_DEPLOYMENT, WORKLOAD_IDENTITY, WORKLOAD_IDENTITY_USE_LABEL, AssignedIdentity, Binding,
                     Identity, PodInfo, TokenRequest)
from ..ports import IdentityCatalog
from . import rules
from .decision import MANAGED, NODE, STANDARD, WORKLOAD, Decision, Policy, View


def resolve(pod: PodInfo, view: View, request: TokenRequest, policy: Policy, *, now: float,
            node_identity_allowed: bool = True) -> Decision:
    """`now` is wall-clock epoch seconds (active windows are wall-clock times)."""
    catalog = view.catalog
    managed = policy.mode == MANAGED
    if node_identity_allowed:
        exception = rules.exception_for(pod, catalog.exceptions(pod.namespace))
        if exception is not None or _is_mic_pod(pod, view, policy):
            return Decision(source=NODE, exception=exception)
    bindings = PodBindings(pod, catalog, same_namespace=managed or policy.namespaced)
    workload = _workload_identity(pod, view, policy, bindings)
    if workload is not None:
        # Only the ServiceAccount's own client ID: a resource ID cannot name it, another client ID is not its.
        other = request.resource_id or (request.client_id and request.client_id.lower() != workload.client_id.lower())
        return Decision(source=WORKLOAD, workload=workload, ready=() if other else (workload,),
                        through=() if other else (None,))
    if managed:
        return _managed(pod, request, catalog, bindings, now)
    return _standard(pod, request, catalog, bindings, namespaced=policy.namespaced, now=now)


class PodBindings:
    """The bindings selecting one pod: matched here only, each at most once per decision."""

    __slots__ = ("_pod", "_catalog", "_same_namespace", "_all", "_by_namespace")

    def __init__(self, pod: PodInfo, catalog: IdentityCatalog, *, same_namespace: bool) -> None:
        self._pod, self._catalog, self._same_namespace = pod, catalog, same_namespace
        self._all: list[Binding] | None = None
        self._by_namespace: dict[str, list[Binding]] = {}

    def all(self) -> list[Binding]:
        """Every binding selecting the pod (only the pod's namespace's in managed mode or namespaced)."""
        if self._all is None:
            scope = self._pod.namespace if self._same_namespace else None
            self._all = rules.matching_bindings(self._pod, self._catalog.bindings(scope),
                                                same_namespace=self._same_namespace)
        return self._all

    def in_namespace(self, namespace: str) -> list[Binding]:
        if self._all is not None:
            return [b for b in self._all if b.namespace == namespace]
        found = self._by_namespace.get(namespace)
        if found is None:
            found = self._by_namespace[namespace] = rules.matching_bindings(
                self._pod, self._catalog.bindings(namespace), same_namespace=self._same_namespace)
        return found

    def giving(self, identity: Identity, now: float) -> Binding | None:
        """The active binding that gives the pod this identity: highest weight, then name (the audit trail)."""
        mine = [b for b in self.in_namespace(identity.namespace)
                if b.identity_name == identity.name and rules.is_active(b, now)]
        return max(mine, key=lambda b: (b.weight, b.name), default=None)


def _is_mic_pod(pod: PodInfo, view: View, policy: Policy) -> bool:
    # Managed mode has no MIC: only an AzurePodIdentityException gives a pod the node's identity there.
    if policy.mode != STANDARD or view.workloads is None or not pod.replicaset:
        return False
    return rules.is_mic_pod(pod, mic_namespace=policy.mic_namespace,
                            replicaset=view.workloads.replicaset(pod.namespace, pod.replicaset),
                            deployment=view.workloads.deployment(pod.namespace, MIC_DEPLOYMENT))


def _workload_identity(pod: PodInfo, view: View, policy: Policy, bindings: PodBindings) -> Identity | None:
    """The bridge applies only to a pod aad-pod-identity does not serve, labelled for workload identity, whose
    ServiceAccount names a client ID; None leaves every other pod to the usual rules."""
    if not policy.workload_identity or view.service_accounts is None:
        return None
    if pod.labels.get(WORKLOAD_IDENTITY_USE_LABEL) != "true" or _has_pod_identity(pod, view, policy, bindings):
        return None
    account = view.service_accounts.service_account(pod.namespace, pod.service_account)
    if account is None or not account.client_id:
        return None
    return Identity(namespace=pod.namespace, name=account.name, type=WORKLOAD_IDENTITY,
                    client_id=account.client_id, tenant_id=account.tenant_id or policy.workload_identity_tenant,
                    ad_endpoint=policy.workload_identity_authority, service_account=account.name,
                    pod_name=pod.name, pod_uid=pod.uid)


def _has_pod_identity(pod: PodInfo, view: View, policy: Policy, bindings: PodBindings) -> bool:
    """Bindings win over the bridge, also outside their active windows (the pod is refused, not bridged)."""
    if policy.mode == MANAGED:
        return bool(rules.bound_identities(pod, bindings.all(), view.catalog.identities(pod.namespace)))
    return bool(bindings.all() or list(view.catalog.assigned(pod.namespace, pod.name)))


def _ready(ready: Sequence[Identity], bindings: PodBindings, now: float) -> Decision:
    return Decision(ready=tuple(ready), through=tuple(bindings.giving(i, now) for i in ready))


def _managed(pod: PodInfo, request: TokenRequest, catalog: IdentityCatalog, bindings: PodBindings,
             now: float) -> Decision:
    matched = bindings.all()
    if not matched:
        return Decision()
    identities = list(catalog.identities(pod.namespace))
    awake = [b for b in matched if rules.is_active(b, now)]
    ready = rules.select(rules.bound_identities(pod, awake, identities), request)
    if ready or len(awake) == len(matched):
        return _ready(ready, bindings, now)
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


def _standard(pod: PodInfo, request: TokenRequest, catalog: IdentityCatalog, bindings: PodBindings, *,
              namespaced: bool, now: float) -> Decision:
    usable: list[rules.Candidate] = []
    created: list[rules.Candidate] = []
    asleep: dict[tuple[str, str], Binding] = {}
    awake_refs: set[tuple[str, str]] | None = None  # identities an active binding of the pod refers to
    for a, identity in rules.pod_assignments(pod, catalog.assigned(pod.namespace, pod.name), namespaced=namespaced):
        binding = binding_of(a, catalog)
        if binding is not None and not rules.is_active(binding, now):
            # MIC may have recorded only one of several bindings giving this identity: another active one
            # still makes it the pod's. Computed only when an inactive binding is met (off the usual path).
            if awake_refs is None:
                awake_refs = {(b.namespace, b.identity_name) for b in bindings.all() if rules.is_active(b, now)}
            if (identity.namespace, identity.name) not in awake_refs:
                if rules.select([identity], request):
                    asleep[(binding.namespace, binding.name)] = binding
                continue
        (created if a.status == rules.CREATED else usable).append(rules.Candidate(identity, a.binding_weight))
    ready = rules.select(rules.ordered(usable), request)
    if ready:
        return _ready(ready, bindings, now)
    waiting = rules.select(rules.ordered(created), request)
    if waiting:
        return Decision(created=tuple(waiting), inactive=tuple(asleep.values()))
    matched = bindings.all()
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
