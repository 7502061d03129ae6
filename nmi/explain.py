"""`/explain`: which identity a pod would get for a token request and why, or why not — answered from the daemon's
caches with the broker's own decision (`TokenBroker.decide`, i.e. `nmi.identities.resolve`), without fetching a
token.

Pure: a JSON-ready dict. The probe server serves it to loopback callers; `nmi explain` renders it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Protocol

from .broker import TokenBroker
from .identities import MANAGED, NODE, WORKLOAD, Decision, binding_of
from .identities import rules
from .model import AssignedIdentity, Binding, Identity, PodInfo, TokenRequest
from .windows import HORIZON_DAYS

MAX_BINDINGS = 100  # a namespace with thousands of bindings must not make the answer unbounded

# Verdict reasons (also per-binding reasons where they apply).
NOT_ON_NODE = "not-on-node"
POD_NOT_LIVE = "pod-not-live"
HOST_NETWORK = "host-network"
IP_CONFLICT = "ip-conflict"
CACHES_NOT_SYNCED = "caches-not-synced"
EXCEPTION = "exception"
MIC_POD = "mic-pod"
WORKLOAD_IDENTITY = "workload-identity"
BOUND = "bound"
NO_BINDING = "no-binding"
INACTIVE_WINDOW = "inactive-window"
MALFORMED_WINDOW = "malformed-window"
IDENTITY_MISSING = "identity-missing"
NOT_REQUESTED = "not-requested"
MIC_CREATED = "mic-created"  # standard mode: MIC created the assignment, not assigned yet
MIC_PENDING = "mic-pending"  # standard mode: no assignment for this binding yet
MIC_ASSIGNED = "mic-assigned"


class PodView(Protocol):
    def pod_by_name(self, namespace: str, name: str) -> PodInfo | None: ...
    def live_pods_with_ip(self, ip: str) -> list[PodInfo]: ...


class StateView(Protocol):
    @property
    def chain_installed(self) -> bool: ...
    @property
    def chain_required(self) -> bool: ...
    @property
    def caches_synced(self) -> bool: ...

    @property
    def ready(self) -> bool: ...
    def not_ready_because(self) -> list[str]: ...


CachedTokens = Callable[[Identity | None], list[tuple[str, float, float]]]


@dataclass(frozen=True, slots=True)
class Explainer:
    broker: TokenBroker
    pods: PodView
    state: StateView
    cached_tokens: CachedTokens | None = None

    def answer(self, query: Mapping[str, str]) -> dict[str, Any]:
        """For the probe server: the checked /explain query (namespace, pod, resource, client_id, msi_res_id)."""
        request = TokenRequest(resource=query.get("resource", ""), client_id=query.get("client_id", ""),
                               resource_id=query.get("msi_res_id", "") or query.get("mi_res_id", ""))
        return self.explain(query["namespace"], query["pod"], request)

    def explain(self, namespace: str, pod_name: str, request: TokenRequest) -> dict[str, Any]:
        policy = self.broker.policy
        report: dict[str, Any] = {
            "pod": f"{namespace}/{pod_name}", "mode": policy.mode,
            "request": {"resource": request.resource, "client_id": request.client_id,
                        "resource_id": request.resource_id},
            "chain": {"installed": self.state.chain_installed, "required": self.state.chain_required,
                      "caches_synced": self.state.caches_synced, "ready": self.state.ready,
                      "not_ready": self.state.not_ready_because()},
            "identity": None, "bindings": [], "token_cache": [],
        }
        pod = self.pods.pod_by_name(namespace, pod_name)
        if pod is None:
            return _verdict(report, 503, NOT_ON_NODE, f"no pod {namespace}/{pod_name} in this node's pod cache "
                            "(not scheduled here, not created yet, or deleted)")
        owners = self.pods.live_pods_with_ip(pod.ip) if pod.ip else []
        report["pod_info"] = {"ip": pod.ip, "phase": pod.phase, "deleting": pod.deleting,
                              "host_network": pod.host_network, "aadpodbinding_label": rules.binding_selector(pod),
                              "ip_owners": [p.key for p in owners]}
        report["bindings"], report["bindings_omitted"] = self._bindings(pod, request)
        if not self.state.caches_synced:
            return _verdict(report, 503, CACHES_NOT_SYNCED, "nmi's caches are not synced yet, or stale "
                            "(chain.not_ready names the watch)")
        if not pod.live:
            return _verdict(report, 503, POD_NOT_LIVE, f"the pod is {pod.phase}{', being deleted' if pod.deleting else ''}"
                            ": its address names no caller")
        if pod.host_network:
            return _verdict(report, 503, HOST_NETWORK, "a host-network pod shares the node's address: its calls "
                            "name no pod (use /host/token from the node)")
        if len(owners) > 1:
            return _verdict(report, 503, IP_CONFLICT, f"{len(owners)} live pods claim {pod.ip}: "
                            + ", ".join(p.key for p in owners))
        decision = self.broker.decide(pod, request)
        if decision.source == NODE:
            exception = decision.exception
            reason, why = ((EXCEPTION, f"AzurePodIdentityException {exception.namespace}/{exception.name} matches "
                            "the pod's labels") if exception is not None
                           else (MIC_POD, "the pod belongs to the MIC Deployment"))
            self._cache(report, None, request)
            return _verdict(report, 200, reason, why + ": it gets the node's identity straight from IMDS")
        workload = decision.workload
        if decision.source == WORKLOAD and workload is not None:
            report["identity"] = _identity(workload)
            if not decision.ready:
                return _verdict(report, 400, WORKLOAD_IDENTITY, "the request names an identity other than the "
                                "ServiceAccount's workload identity client ID")
            self._cache(report, workload, request)
            return _verdict(report, 200, WORKLOAD_IDENTITY, f"no binding selects the pod; ServiceAccount "
                            f"{pod.namespace}/{pod.service_account} names client ID {workload.client_id}")
        return self._by_bindings(report, pod, request, decision)

    def _by_bindings(self, report: dict[str, Any], pod: PodInfo, request: TokenRequest,
                     decision: Decision) -> dict[str, Any]:
        if decision.ready:
            chosen = decision.ready[0]
            report["identity"] = _identity(chosen)
            self._cache(report, chosen, request)
            return _verdict(report, 200, BOUND, f"identity {chosen.key} through the pod's bindings"
                            + (f" (first of {len(decision.ready)}: highest weight, then name)"
                               if len(decision.ready) > 1 else ""))
        if decision.pending:
            budget = self.broker.policy.wait_total if decision.created else self.broker.policy.wait_for_created
            reason = MIC_CREATED if decision.created else MIC_PENDING
            what = "created but not assigned yet" if decision.created else "not created yet"
            return _verdict(report, 404, reason, f"MIC's assignment is {what}: a request waits up to {budget:.0f}s "
                            "for it, then 404 (503 with --set-retry-after-header)")
        if decision.inactive:
            return _verdict(report, 403, INACTIVE_WINDOW, rules.denial(decision.inactive, self.broker.wall_clock()))
        if not rules.binding_selector(pod):
            return _verdict(report, 400, rules.NO_LABEL, "the pod has no aadpodidbinding label: no binding selects it")
        return _verdict(report, 400, NO_BINDING, "no usable binding gives the pod "
                        + ("the requested identity" if request.selects else "an identity"))

    def _bindings(self, pod: PodInfo, request: TokenRequest) -> tuple[list[dict[str, Any]], int]:
        """The pod namespace's bindings and any other binding with the pod's selector, each with why it counts
        or not."""
        catalog, policy = self.broker.catalog, self.broker.policy
        same_namespace = policy.mode == MANAGED or policy.namespaced
        selector = rules.binding_selector(pod)
        relevant = [b for b in catalog.bindings(None)
                    if b.namespace == pod.namespace or (selector and b.selector == selector)]
        now = self.broker.wall_clock()
        assigned = {(a.identity.namespace, a.identity.name): a for a in catalog.assigned(pod.namespace, pod.name)
                    if a.identity is not None}
        rows = [self._binding_row(pod, b, request, same_namespace=same_namespace, now=now, assigned=assigned)
                for b in relevant[:MAX_BINDINGS]]
        return rows, max(0, len(relevant) - MAX_BINDINGS)

    def _binding_row(self, pod: PodInfo, binding: Binding, request: TokenRequest, *, same_namespace: bool,
                     now: float, assigned: dict[tuple[str, str], AssignedIdentity]) -> dict[str, Any]:
        row: dict[str, Any] = {"binding": f"{binding.namespace}/{binding.name}", "identity": binding.identity_name,
                               "selector": binding.selector, "weight": binding.weight, "matched": False,
                               "next_window": None}
        reason = rules.mismatch(pod, binding, same_namespace=same_namespace)
        if reason:
            details = {rules.NO_LABEL: "the pod has no aadpodidbinding label",
                       rules.OTHER_NAMESPACE: f"in namespace {binding.namespace}, not the pod's",
                       rules.SELECTOR_MISMATCH: f"selector {binding.selector!r} is not the pod's label "
                                                f"{rules.binding_selector(pod)!r}"}
            return {**row, "reason": reason, "detail": details[reason]}
        row["matched"] = True
        if binding.windows_error:
            return {**row, "reason": MALFORMED_WINDOW, "detail": binding.windows_error}
        if not rules.is_active(binding, now):
            opening = rules.next_opening(binding, now)
            return {**row, "reason": INACTIVE_WINDOW, "next_window": opening.iso() if opening else None,
                    "detail": f"outside its active windows ({binding.windows.text if binding.windows else ''}); "
                              + (f"next window {opening.iso()}" if opening else f"none in {HORIZON_DAYS} days")}
        identity = next((i for i in self.broker.catalog.identities(binding.namespace)
                         if i.name == binding.identity_name), None)
        if identity is None:
            return {**row, "reason": IDENTITY_MISSING, "detail": f"no AzureIdentity {binding.namespace}/"
                                                                  f"{binding.identity_name}"}
        if not rules.select([identity], request):
            return {**row, "reason": NOT_REQUESTED, "detail": "its identity is not the one the request names"}
        if self.broker.policy.mode == MANAGED:
            return {**row, "reason": BOUND, "detail": f"gives identity {identity.key}"}
        assignment = assigned.get((identity.namespace, identity.name))
        if assignment is None:
            return {**row, "reason": MIC_PENDING, "detail": "no AzureAssignedIdentity for the pod yet"}
        if assignment.status == rules.CREATED:
            return {**row, "reason": MIC_CREATED, "detail": f"AzureAssignedIdentity {assignment.name} is Created, "
                                                             "not Assigned yet"}
        mic_binding = binding_of(assignment, self.broker.catalog)
        through = f" (through binding {mic_binding.namespace}/{mic_binding.name})" if mic_binding else ""
        return {**row, "reason": MIC_ASSIGNED, "detail": f"AzureAssignedIdentity {assignment.name} is "
                                                          f"{assignment.status or 'Assigned'}{through}"}

    def _cache(self, report: dict[str, Any], identity: Identity | None, request: TokenRequest) -> None:
        if self.cached_tokens is None:
            return
        entries: Iterable[tuple[str, float, float]] = self.cached_tokens(identity)
        report["token_cache"] = [{"resource": resource, "age_seconds": round(age, 1), "expires_in": round(left)}
                                 for resource, age, left in entries if not request.resource or resource == request.resource]


def _identity(identity: Identity) -> dict[str, Any]:
    return {"namespace": identity.namespace, "name": identity.name, "client_id": identity.client_id,
            "resource_id": identity.resource_id, "type": identity.type}


def _verdict(report: dict[str, Any], status: int, reason: str, summary: str) -> dict[str, Any]:
    report.update(status=status, reason=reason, summary=summary)
    return report
