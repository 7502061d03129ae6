"""The token service: one token source for every identity type, behind nmi's cache.

    TokenService.get ─► TokenCache (hit: answered on the loop) ─► single flight ─► RetryPolicy (limits)
        type 0 / node ─► UpstreamGate (5 in flight, 20/s) ─► MsalAdapter.imds_token ─► IMDS
        type 1 / 2   ─► SecretReader ─► CredentialLoader ─► MsalAdapter.client_credential_token ─► Azure AD
        workload identity ─► AssertionCache (TokenRequest, pod-bound) ─► MsalAdapter.federated_token
                             with the ServiceAccount token as client_assertion ─► Azure AD

This module decides the cache keys and what each identity type fetches; the MSAL adapter makes the calls (in
its threads), nmi.tokens.failures says what a failure means to the caller.
"""

from __future__ import annotations

import asyncio
from typing import Hashable, cast

from ..errors import IdentityConfigurationError, TokenRefused
from ..model import USER_ASSIGNED_MSI, WORKLOAD_IDENTITY, AccessToken, Identity, TokenGrant
from ..ports import SecretReader, ServiceAccountTokenMinter
from .assertions import AssertionCache
from .cache import Fetch, TokenCache
from .config import CacheLimits, ImdsEndpoint, Runtime, UpstreamHooks, UpstreamLimits
from .credential_policy import CredentialPolicy, check_identity
from .credentials import Credential, CredentialLoader
from .failures import AAD_RETRY_STATUSES, IMDS_RETRY_STATUSES
from .limits import RetryPolicy, UpstreamGate
from .msal_adapter import MsalAdapter

_DEFAULT = ".default"


class TokenService:
    """Implements `nmi.ports.TokenSource`."""

    def __init__(self, secrets: SecretReader, *, imds: ImdsEndpoint = ImdsEndpoint(),
                 limits: UpstreamLimits = UpstreamLimits(), cache: CacheLimits = CacheLimits(),
                 credential_policy: CredentialPolicy = CredentialPolicy(), hooks: UpstreamHooks = UpstreamHooks(),
                 runtime: Runtime = Runtime(), service_account_tokens: ServiceAccountTokenMinter | None = None,
                 credentials: CredentialLoader | None = None) -> None:
        clock, sleep = runtime.clock, runtime.sleep
        self._secrets = secrets
        self._credential_policy = credential_policy
        self.credentials = credentials or CredentialLoader()
        # Workload identity bridge (opt-in): None leaves WORKLOAD_IDENTITY identities refused as misconfigured.
        self.assertions = AssertionCache(service_account_tokens, clock=clock) if service_account_tokens else None
        self._msal = MsalAdapter(imds=imds, limits=limits, hooks=hooks, clock=clock)
        self._cache = TokenCache(clock=clock, max_entries=cache.max_entries, policy=cache.refresh)
        self._retry = RetryPolicy(clock=clock, sleep=sleep, budget=limits.retry_budget,
                                  max_attempts=limits.max_attempts, base_delay=limits.retry_base_delay,
                                  rng=runtime.rng, attempt_timeout=limits.attempt_timeout)
        self._imds_gate = UpstreamGate(rate=limits.imds_rate, concurrency=limits.imds_concurrency, clock=clock,
                                       sleep=sleep)

    async def get(self, identity: Identity, resource: str) -> TokenGrant:
        key, fetch, owner = self._slot(identity, resource)
        return await self._cache.get(key, fetch, owner=owner)

    async def get_for_node(self, resource: str, *, client_id: str = "", resource_id: str = "",
                           object_id: str = "") -> TokenGrant:
        key, fetch = self._node_slot(resource, client_id=client_id, resource_id=resource_id, object_id=object_id)
        return await self._cache.get(key, fetch, owner=None)

    def cached(self, identity: Identity, resource: str) -> TokenGrant | None:
        """What `get` answers without awaiting (a usable cached token), else None."""
        key, fetch, owner = self._slot(identity, resource)
        return self._cache.hit(key, fetch, owner=owner)

    def cached_for_node(self, resource: str, *, client_id: str = "", resource_id: str = "",
                        object_id: str = "") -> TokenGrant | None:
        key, fetch = self._node_slot(resource, client_id=client_id, resource_id=resource_id, object_id=object_id)
        return self._cache.hit(key, fetch, owner=None)

    def _slot(self, identity: Identity, resource: str) -> tuple[Hashable, Fetch, str]:
        """The cache key, the fetch on a miss and the cache owner of this identity's token for `resource`."""
        check_identity(identity, self._credential_policy)
        if identity.type == WORKLOAD_IDENTITY:
            # Keyed by namespace and ServiceAccount: two ServiceAccounts federated to one client ID never share.
            owner = workload_owner_key(identity)
            key = (owner, identity.client_id.lower(), identity.tenant_id, identity.ad_endpoint, resource)
            return key, lambda: self._from_federation(identity, resource), owner
        return (_identity_cache_key(identity), resource), lambda: self._fetch(identity, resource), identity.key

    def _node_slot(self, resource: str, *, client_id: str, resource_id: str, object_id: str) -> tuple[Hashable, Fetch]:
        key = ("node", client_id.lower(), resource_id.lower(), object_id.lower(), resource)
        return key, lambda: self._from_imds(resource, client_id=client_id, resource_id=resource_id, object_id=object_id)

    def cached_tokens(self, identity: Identity | None) -> list[tuple[str, float, float]]:
        """(resource, age, seconds left) of the tokens cached for this identity (None: the node's own), for
        `nmi explain`; fetches nothing."""
        if identity is None:
            def match(key: Hashable) -> bool:
                return _parts(key)[0] == "node"
        elif identity.type == WORKLOAD_IDENTITY:
            prefix = (workload_owner_key(identity), identity.client_id.lower())

            def match(key: Hashable) -> bool:
                return _parts(key)[:2] == prefix
        else:
            wanted = _identity_cache_key(identity)

            def match(key: Hashable) -> bool:
                return _parts(key)[0] == wanted
        return sorted((cast(str, _parts(key)[-1]), age, left) for key, age, left in self._cache.ages(match))

    def forget(self, keep_identity_keys: set[str]) -> None:
        self._cache.forget(keep_identity_keys)
        self._msal.forget(keep_identity_keys)

    async def wait_idle(self) -> None:
        """Until background refreshes have finished (for tests and orderly shutdown)."""
        await self._cache.wait_idle()

    async def close(self) -> None:
        await self._cache.close()
        await self._msal.close()

    # -- fetching (runs once per cache miss or refresh) -------------------------------------------------

    async def _fetch(self, identity: Identity, resource: str) -> tuple[AccessToken, ...]:
        if identity.type == USER_ASSIGNED_MSI:
            return await self._from_imds(resource, client_id=identity.client_id, resource_id=identity.resource_id)
        assert identity.client_password is not None  # check_identity made sure
        ref = identity.client_password
        data = await self._secrets.read_secret(ref.namespace, ref.name)
        credential = await self.credentials.load(identity.type, ref, data)
        tenants = (identity.tenant_id, *identity.auxiliary_tenant_ids)
        # Primary tenant first, as upstream answers; gather keeps that order.
        return tuple(await asyncio.gather(*(self._from_aad(identity, t, credential, resource) for t in tenants)))

    async def _from_imds(self, resource: str, *, client_id: str, resource_id: str = "",
                         object_id: str = "") -> tuple[AccessToken, ...]:
        async def attempt() -> AccessToken:
            async with self._imds_gate.admitted():
                return await self._msal.imds_token(resource, client_id=client_id, resource_id=resource_id,
                                                   object_id=object_id)

        return (await self._retry.run(attempt, upstream="IMDS", retry_statuses=IMDS_RETRY_STATUSES),)

    async def _from_aad(self, identity: Identity, tenant: str, credential: Credential,
                        resource: str) -> AccessToken:
        async def attempt() -> AccessToken:
            async with self._msal.aad_slots:
                return await self._msal.client_credential_token(
                    identity, tenant, credential, app_key=(_identity_cache_key(identity), tenant),
                    owner=identity.key, scope=_scope(resource), resource=resource)

        return await self._retry.run(attempt, upstream=f"Azure AD (tenant {tenant})", retry_statuses=AAD_RETRY_STATUSES)

    async def _from_federation(self, identity: Identity, resource: str) -> tuple[AccessToken, ...]:
        assertions = self.assertions
        if assertions is None:
            raise IdentityConfigurationError("workload identity is not enabled (--workload-identity)")
        namespace, account, owner = identity.namespace, identity.service_account, workload_owner_key(identity)

        async def attempt() -> AccessToken:
            async with self._msal.aad_slots:
                # Fresh (or re-minted at 80 % of its life) before MSAL's callable reads it in the worker thread.
                await assertions.current(namespace, account, pod_name=identity.pod_name, pod_uid=identity.pod_uid)
                return await self._msal.federated_token(
                    identity, lambda: assertions.peek(namespace, account),
                    app_key=(owner, identity.tenant_id, identity.client_id.lower()), owner=owner,
                    scope=_scope(resource), resource=resource)

        upstream = f"Azure AD (tenant {identity.tenant_id})"
        try:
            return (await self._retry.run(attempt, upstream=upstream, retry_statuses=AAD_RETRY_STATUSES),)
        except TokenRefused as refused:
            if "AADSTS700024" not in refused.description:
                raise
            # Azure AD found the assertion expired (clock skew, or shortened by the API server): mint once more.
            assertions.forget(namespace, account)
            return (await self._retry.run(attempt, upstream=upstream, retry_statuses=AAD_RETRY_STATUSES),)


def _scope(resource: str) -> str:
    """Azure AD v2 scopes: the resource's `.default` scope, unless the caller already named it."""
    return resource if resource.endswith("/" + _DEFAULT) else resource + "/" + _DEFAULT


def workload_owner_key(identity: Identity) -> str:
    """The cache owner of a workload identity's tokens: its ServiceAccount (kept while the SA is annotated)."""
    return f"serviceaccount:{identity.namespace}/{identity.service_account}"


def _parts(key: Hashable) -> tuple[Hashable, ...]:
    """The token cache keys this service makes are tuples whose last item is the resource (see get, get_for_node)."""
    return cast("tuple[Hashable, ...]", key)


def _identity_cache_key(identity: Identity) -> Hashable:
    ref = identity.client_password
    return (identity.key, identity.type, identity.client_id.lower(), identity.resource_id.lower(), identity.tenant_id,
            identity.auxiliary_tenant_ids, identity.ad_endpoint, (ref.namespace, ref.name) if ref else None)
