"""The use case: from a caller (pod IP, or a named pod for /host/token) and a token request to a token.

`nmi.identities.resolve` decides; the broker only acts on the decision: it waits (standard mode: for MIC's
AzureAssignedIdentity to appear) and fetches the token. Depends only on the ports, the value types, the errors and
the pure resolution: no foreign library.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Callable, Sequence

from .errors import CachesNotTrusted, IdentityNotAssigned, IdentityNotFound, NmiError, Unavailable
from .identities import MANAGED, NODE, STANDARD, Decision, View, resolve
from .identities.memo import DecisionMemo
from .model import Binding, Identity, PodInfo, TokenGrant, TokenRequest
from .ports import (CacheFreshness, IdentityCatalog, PodDirectory, ServiceAccountDirectory, TokenSource,
                    WorkloadDirectory)

log = logging.getLogger(__name__)

__all__ = ["MANAGED", "STANDARD", "BrokerPolicy", "Outcome", "PodNotOnNode", "TokenBroker"]


class PodNotOnNode(NmiError):
    status = 404
    error = "not_found"
    default_description = "The pod is not known on this node"


@dataclass(frozen=True, slots=True)
class BrokerPolicy:
    """Also the `nmi.identities.Policy` resolution reads."""

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
        # workloads: standard mode, ReplicaSets/Deployments of --MICNamespace (the MIC check)
        self.view = View(catalog, service_accounts=service_accounts, workloads=workloads)
        self._memo = DecisionMemo(self.view)  # resolves each pod once per change of what resolution reads
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

    def decide(self, pod: PodInfo, request: TokenRequest, *, node_identity_allowed: bool = True) -> Decision:
        """`nmi.identities.resolve` over this broker's caches and policy, at the wall clock's now (also what
        `nmi explain` shows)."""
        now = self.wall_clock()
        return self._memo.decide(pod, request, node_identity_allowed=node_identity_allowed, now=now,
                                 resolve=lambda: resolve(pod, self.view, request, self._policy, now=now,
                                                         node_identity_allowed=node_identity_allowed))

    async def caller(self, ip: str) -> PodInfo:
        """The token route: the caller is whoever owns the TCP peer address."""
        self._require_trusted(identity_only=True)  # the pod index guards its own cache (live confirmation)
        return await self._pods.pod_for_ip(ip)

    def cached_caller(self, ip: str) -> PodInfo | None:
        """What `caller` answers without awaiting or raising (the pod cache's only live owner of the IP, while every
        cache can be trusted); None when `caller` would look further or refuse."""
        if self._caches is not None and self._caches.identity_problems():
            return None
        return self._pods.cached_pod_for_ip(ip)

    def cached_outcome(self, pod: PodInfo, request: TokenRequest) -> Outcome | None:
        """What `token_for` answers without awaiting: the same decision, and a token the cache holds; None when
        `token_for` would fetch, wait or refuse (the caller then asks `token_for`)."""
        if self._policy.mode == STANDARD and self._caches is not None and self._caches.identity_problems():
            return None
        decision = self.decide(pod, request)
        if decision.source == NODE:
            grant = self._tokens.cached_for_node(request.resource, client_id=request.client_id,
                                                 resource_id=request.resource_id, object_id=request.object_id)
            if grant is None:
                return None
            log.info("exception pod %s uses the node's identity", pod.key)
            return Outcome(pod, None, grant)
        if not decision.ready or request.object_id:
            return None
        identity = decision.ready[0]
        grant = self._tokens.cached(identity, request.resource)
        return Outcome(pod, identity, grant, decision.binding_for(identity)) if grant is not None else None

    def named_pod(self, namespace: str, name: str) -> PodInfo:
        """/host/token: a node process asks on behalf of a named pod, read from the cache only."""
        self._require_trusted(identity_only=False)
        pod = self._pods.pod_by_name(namespace, name)
        if pod is None or not pod.live:
            raise PodNotOnNode(f"Pod {namespace}/{name} is not running on this node")
        return pod

    async def for_caller(self, ip: str, request: TokenRequest) -> Outcome:
        return await self.token_for(await self.caller(ip), request)

    async def for_named_pod(self, namespace: str, name: str, request: TokenRequest) -> Outcome:
        # No exception shortcut for a named pod, as upstream.
        return await self.token_for(self.named_pod(namespace, name), request, node_identity_allowed=False)

    async def token_for(self, pod: PodInfo, request: TokenRequest, *, node_identity_allowed: bool = True) -> Outcome:
        """Acts on the decision: the node's identity from IMDS, a token for the best usable identity, waiting
        (standard mode, woken by the informer) while MIC may still assign one, or the decision's refusal."""
        standard = self._policy.mode == STANDARD
        start: float | None = None  # taken before the first wait: only standard mode ever waits
        while True:
            if standard:
                self._require_trusted(identity_only=True)  # a watch may break while we wait
            decision = self.decide(pod, request, node_identity_allowed=node_identity_allowed)
            if decision.source == NODE:
                return await self._for_node(pod, request)
            if decision.ready:
                return await self._fetch(pod, decision, request)
            if not decision.pending:
                raise decision.refusal(self.wall_clock())  # no binding can give this pod (this) identity now
            if start is None:
                start = self._clock()
            await self._wait_for_mic(pod, decision, start)

    def _require_trusted(self, *, identity_only: bool) -> None:
        """SPEC §7: no answer — token, `Identity not found` or the node's identity — from a cache that is not synced
        or stale: an identity or binding removed meanwhile could still be handed out. 503 + Retry-After instead."""
        if self._caches is None:
            return
        problems = self._caches.identity_problems() if identity_only else self._caches.problems()
        if problems:
            raise CachesNotTrusted(f"nmi's view of the cluster is not up to date ({'; '.join(problems)});"
                                   " retry later", retry_after=3)

    async def _for_node(self, pod: PodInfo, request: TokenRequest) -> Outcome:
        log.info("exception pod %s uses the node's identity", pod.key)
        # Whichever selector the pod gave goes to IMDS as IMDS's own: upstream dropped all but client_id, so
        # a pod asking for one VM identity by object or resource ID got the system-assigned one.
        grant = await self._tokens.get_for_node(request.resource, client_id=request.client_id,
                                                resource_id=request.resource_id, object_id=request.object_id)
        return Outcome(pod, None, grant)

    async def _fetch(self, pod: PodInfo, decision: Decision, request: TokenRequest) -> Outcome:
        if request.object_id:
            identity, grant = await self._by_object_id(decision.ready, request)
        else:
            identity = decision.ready[0]
            grant = await self._tokens.get(identity, request.resource)
        return Outcome(pod, identity, grant, decision.binding_for(identity))

    async def _by_object_id(self, candidates: Sequence[Identity], request: TokenRequest) -> tuple[Identity, TokenGrant]:
        """AzureIdentity carries no object ID: match the `oid` claim of tokens issued to the pod's own identities."""
        wanted = request.object_id.lower()
        for identity in candidates:
            grant = await self._tokens.get(identity, request.resource)
            if grant.primary.object_id.lower() == wanted:
                return identity, grant
        raise IdentityNotFound()

    async def _wait_for_mic(self, pod: PodInfo, decision: Decision, start: float) -> None:
        """Standard mode: wait until the caches change, or fail once the upstream budget is spent."""
        policy = self._policy
        elapsed = self._clock() - start
        if elapsed >= policy.wait_total:
            raise self._not_assigned(pod, "ASSIGNED")
        if not decision.created and elapsed >= policy.wait_for_created:
            raise self._not_assigned(pod, "CREATED")
        deadline = policy.wait_total if decision.created else policy.wait_for_created
        await self._catalog.wait_changed(timeout=max(0.0, deadline - elapsed))

    def _not_assigned(self, pod: PodInfo, state: str) -> NmiError:
        waited = self._policy.wait_total if state == "ASSIGNED" else self._policy.wait_for_created
        text = (f"Identity of pod {pod.key} is not in {state} state after {waited:.0f}s."
                " Check MIC pod logs for identity assignment errors")
        log.warning("%s", text)
        if self._policy.retry_after_while_waiting:
            return Unavailable(text, retry_after=20)
        return IdentityNotAssigned(text)
