"""The use case: from a caller (pod IP, or a named pod for /host/token) and a token request to a token.

Depends only on the ports, the value types, the errors and the pure resolution rules: no foreign library.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Callable

from . import identities as rules
from .errors import AccessDenied, CachesNotTrusted, IdentityNotAssigned, IdentityNotFound, NmiError, Unavailable
from .model import (WORKLOAD_IDENTITY, WORKLOAD_IDENTITY_USE_LABEL, Binding, Identity, PodInfo, TokenGrant,
                    TokenRequest)
from .ports import (CacheFreshness, IdentityCatalog, PodDirectory, ServiceAccountDirectory, TokenSource,
                    WorkloadDirectory)
from .resolution import Decision, denial, resolve

log = logging.getLogger(__name__)

STANDARD = "standard"
MANAGED = "managed"


class PodNotOnNode(NmiError):
    status = 404
    error = "not_found"
    default_description = "The pod is not known on this node"


@dataclass(frozen=True, slots=True)
class BrokerPolicy:
    mode: str = STANDARD
    namespaced: bool = False
    mic_namespace: str = "default"
    wait_for_created: float = 80.0  # --retry-attempts-for-created x --find-identity-retry-interval
    wait_total: float = 100.0  # (created + assigned attempts) x interval
    retry_after_while_waiting: bool = False  # --set-retry-after-header
    # Workload identity bridge: pods matching no binding, with an annotated ServiceAccount (--workload-identity*).
    workload_identity: bool = False
    workload_identity_tenant: str = ""
    workload_identity_authority: str = "https://login.microsoftonline.com/"


@dataclass(frozen=True, slots=True)
class Outcome:
    pod: PodInfo
    identity: Identity | None  # None: the node's own identity (exception or MIC pod)
    grant: TokenGrant
    binding: Binding | None = None  # the binding that gave the pod this identity (for the audit trail)


class TokenBroker:
    def __init__(self, pods: PodDirectory, catalog: IdentityCatalog, tokens: TokenSource, *,
                 policy: BrokerPolicy, clock: Callable[[], float] | None = None,
                 wall_clock: Callable[[], float] = time.time,
                 service_accounts: ServiceAccountDirectory | None = None,
                 workloads: WorkloadDirectory | None = None,
                 caches: CacheFreshness | None = None) -> None:
        self._pods = pods
        self._caches = caches
        self._workloads = workloads  # standard mode: ReplicaSets/Deployments of --MICNamespace (the MIC check)
        self._service_accounts = service_accounts
        self._catalog = catalog
        self._tokens = tokens
        self._policy = policy
        self._clock = clock or (lambda: asyncio.get_running_loop().time())
        self.wall_clock = wall_clock  # active windows of time-boxed bindings are wall-clock times

    @property
    def policy(self) -> BrokerPolicy:
        return self._policy

    @property
    def catalog(self) -> IdentityCatalog:
        return self._catalog

    def decide(self, pod: PodInfo, request: TokenRequest) -> Decision:
        """The pure resolution step, from the caches, at the wall clock's now (also what `nmi explain` shows)."""
        return resolve(pod, request, self._catalog, managed=self._policy.mode == MANAGED,
                       namespaced=self._policy.namespaced, now=self.wall_clock())

    async def for_caller(self, ip: str, request: TokenRequest) -> Outcome:
        """The token route: the caller is whoever owns the TCP peer address."""
        self._require_trusted(identity_only=True)  # the pod index guards its own cache (live confirmation)
        pod = await self._pods.pod_for_ip(ip)
        return await self._for_pod(pod, request, node_identity_allowed=True)

    async def for_named_pod(self, namespace: str, name: str, request: TokenRequest) -> Outcome:
        """/host/token: a node process asks on behalf of a named pod (no exception shortcut, as upstream)."""
        self._require_trusted(identity_only=False)  # the pod is read from the cache only
        pod = self._pods.pod_by_name(namespace, name)
        if pod is None or not pod.live:
            raise PodNotOnNode(f"Pod {namespace}/{name} is not running on this node")
        return await self._for_pod(pod, request, node_identity_allowed=False)

    def _require_trusted(self, *, identity_only: bool) -> None:
        """SPEC §7: no answer — token, `Identity not found` or the node's identity — from a cache that is not synced
        or stale: an identity or binding removed meanwhile could still be handed out. 503 + Retry-After instead."""
        if self._caches is None:
            return
        problems = self._caches.identity_problems() if identity_only else self._caches.problems()
        if problems:
            raise CachesNotTrusted(f"nmi's view of the cluster is not up to date ({'; '.join(problems)});"
                                   " retry later", retry_after=3)

    async def _for_pod(self, pod: PodInfo, request: TokenRequest, *, node_identity_allowed: bool) -> Outcome:
        try:
            return await self._resolve_and_get(pod, request, node_identity_allowed=node_identity_allowed)
        except NmiError as error:
            error.pod_key = pod.key
            raise

    async def _resolve_and_get(self, pod: PodInfo, request: TokenRequest, *, node_identity_allowed: bool) -> Outcome:
        if node_identity_allowed and self.uses_node_identity(pod):
            log.info("exception pod %s uses the node's identity", pod.key)
            # Whichever selector the pod gave goes to IMDS as IMDS's own: upstream dropped all but client_id, so
            # a pod asking for one VM identity by object or resource ID got the system-assigned one.
            grant = await self._tokens.get_for_node(request.resource, client_id=request.client_id,
                                                    resource_id=request.resource_id, object_id=request.object_id)
            return Outcome(pod, None, grant)
        workload = self.workload_identity(pod)
        if workload is not None:
            return await self._for_workload(pod, workload, request)
        candidates = await self._candidates(pod, request)
        if request.object_id:
            identity, grant = await self._by_object_id(candidates, request)
        else:
            identity = candidates[0]
            grant = await self._tokens.get(identity, request.resource)
        return Outcome(pod, identity, grant, self._binding_for(pod, identity))

    def workload_identity(self, pod: PodInfo) -> Identity | None:
        """The bridge applies only to a pod aad-pod-identity does not serve, labelled for workload identity, whose
        ServiceAccount names a client ID; None leaves every other pod to the usual rules."""
        policy = self._policy
        if not policy.workload_identity or self._service_accounts is None:
            return None
        if pod.labels.get(WORKLOAD_IDENTITY_USE_LABEL) != "true" or self._has_pod_identity(pod):
            return None
        account = self._service_accounts.service_account(pod.namespace, pod.service_account)
        if account is None or not account.client_id:
            return None
        return Identity(namespace=pod.namespace, name=account.name, type=WORKLOAD_IDENTITY,
                        client_id=account.client_id, tenant_id=account.tenant_id or policy.workload_identity_tenant,
                        ad_endpoint=policy.workload_identity_authority, service_account=account.name,
                        pod_name=pod.name, pod_uid=pod.uid)

    def _has_pod_identity(self, pod: PodInfo) -> bool:
        """Bindings win over the bridge, also outside their active windows (the pod is refused, not bridged)."""
        if self._policy.mode == MANAGED:
            return bool(rules.managed_identities(pod, self._catalog.bindings(pod.namespace),
                                                 self._catalog.identities(pod.namespace)))
        return bool(rules.matching_bindings(pod, self._catalog.bindings(None), same_namespace=self._policy.namespaced)
                    or list(self._catalog.assigned(pod.namespace, pod.name)))

    async def _for_workload(self, pod: PodInfo, identity: Identity, request: TokenRequest) -> Outcome:
        """Only the ServiceAccount's own client ID: a resource ID cannot name it, another client ID is not its."""
        if request.resource_id or (request.client_id and request.client_id.lower() != identity.client_id.lower()):
            raise IdentityNotFound()
        if request.object_id:
            identity, grant = await self._by_object_id([identity], request)
        else:
            grant = await self._tokens.get(identity, request.resource)
        return Outcome(pod, identity, grant)

    def _binding_for(self, pod: PodInfo, identity: Identity) -> Binding | None:
        bindings = rules.matching_bindings(pod, self._catalog.bindings(identity.namespace), same_namespace=False)
        now = self.wall_clock()
        mine = [b for b in bindings if b.identity_name == identity.name and rules.is_active(b, now)]
        return max(mine, key=lambda b: (b.weight, b.name), default=None)

    def uses_node_identity(self, pod: PodInfo) -> bool:
        if rules.is_excepted(pod, self._catalog.exceptions(pod.namespace)):
            return True
        # Managed mode has no MIC: only an AzurePodIdentityException gives a pod the node's identity there.
        if self._policy.mode != STANDARD or self._workloads is None or not pod.replicaset:
            return False
        return rules.is_mic_pod(pod, mic_namespace=self._policy.mic_namespace,
                                replicaset=self._workloads.replicaset(pod.namespace, pod.replicaset),
                                deployment=self._workloads.deployment(pod.namespace, rules.MIC_DEPLOYMENT))

    async def _by_object_id(self, candidates: list[Identity], request: TokenRequest) -> tuple[Identity, TokenGrant]:
        """AzureIdentity carries no object ID: match the `oid` claim of tokens issued to the pod's own identities."""
        wanted = request.object_id.lower()
        for identity in candidates:
            grant = await self._tokens.get(identity, request.resource)
            if grant.primary.object_id.lower() == wanted:
                return identity, grant
        raise IdentityNotFound()

    async def _candidates(self, pod: PodInfo, request: TokenRequest) -> list[Identity]:
        if self._policy.mode == MANAGED:
            decision = self.decide(pod, request)
            if not decision.ready:
                raise self._refusal(decision)
            return list(decision.ready)
        return await self._wait_for_assignment(pod, request)

    def _refusal(self, decision: Decision) -> NmiError:
        """Nothing usable and nothing to wait for: 403 naming the next window when only time-boxed bindings
        outside their windows would answer, else `Identity not found`."""
        if decision.inactive:
            return AccessDenied(denial(decision.inactive, self.wall_clock()))
        return IdentityNotFound()

    async def _wait_for_assignment(self, pod: PodInfo, request: TokenRequest) -> list[Identity]:
        """Wait, woken by the informer, until MIC assigns a matching identity or the upstream budget runs out."""
        policy = self._policy
        start = self._clock()
        while True:
            self._require_trusted(identity_only=True)  # a watch may break while we wait
            decision = self.decide(pod, request)
            if decision.ready:
                return list(decision.ready)
            created = decision.created
            if not decision.pending:
                raise self._refusal(decision)  # no binding can give this pod (this) identity now: fail fast
            elapsed = self._clock() - start
            if elapsed >= policy.wait_total:
                raise self._not_assigned(pod, "ASSIGNED")
            if not created and elapsed >= policy.wait_for_created:
                raise self._not_assigned(pod, "CREATED")
            deadline = policy.wait_total if created else policy.wait_for_created
            await self._catalog.wait_changed(timeout=max(0.0, deadline - elapsed))

    def _not_assigned(self, pod: PodInfo, state: str) -> NmiError:
        waited = self._policy.wait_total if state == "ASSIGNED" else self._policy.wait_for_created
        text = (f"Identity of pod {pod.key} is not in {state} state after {waited:.0f}s."
                " Check MIC pod logs for identity assignment errors")
        log.warning("%s", text)
        if self._policy.retry_after_while_waiting:
            return Unavailable(text, retry_after=20)
        return IdentityNotAssigned(text)
