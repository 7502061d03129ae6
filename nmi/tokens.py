"""Tokens for identities: nmi's cache in front of MSAL. The only module that imports `msal`.

    TokenService.get ─► TokenCache (hit: answered on the loop) ─► single flight ─► RetryPolicy
        type 0 / node ─► UpstreamGate (5 in flight, 20/s) ─► worker thread: msal.ManagedIdentityClient ─► IMDS
        type 1 / 2   ─► SecretReader ─► worker thread: msal.ConfidentialClientApplication ─► Azure AD
        workload identity ─► AssertionCache (TokenRequest, pod-bound) ─► ConfidentialClientApplication
                             with the ServiceAccount token as client_assertion ─► Azure AD

MSAL is synchronous and does network I/O even in its constructors, so every MSAL call runs in a thread
pool this module owns. nmi's TokenCache is the only token cache: MSAL gets caches that keep nothing
(its own would serve stale tokens to refresh-ahead, and its HTTP throttle cache would swallow retries).
"""

from __future__ import annotations

import asyncio
import functools
import random
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Hashable, Mapping, TypeVar

import msal
import requests

from .credential_loader import CredentialLoader
from .errors import IdentityConfigurationError, TokenRefused
from .model import USER_ASSIGNED_MSI, WORKLOAD_IDENTITY, AccessToken, Identity, TokenGrant
from .ports import SecretReader, ServiceAccountTokenMinter
from .sa_assertions import AssertionCache
from .sp_credentials import (ClientCertificate, ClientSecret, CredentialPolicy, authority_host, check_identity,
                             identity_label)
from .token_cache import RefreshPolicy, TokenCache
from .upstream_http import (AadHttpClient, ImdsHttpClient, aad_session, access_token_from, failure_from,
                            imds_session)
from .upstream_limits import (AAD_RETRY_STATUSES, IMDS_RETRY_STATUSES, RetryPolicy,
                              UpstreamFailure, UpstreamGate)

T = TypeVar("T")
ObserveUpstream = Callable[[str, float, bool], None]  # (source, seconds, ok)
InFlightHook = Callable[[str, int], None]  # (source, +1 / -1)
_DEFAULT = ".default"


class _KeepNothingTokenCache(msal.TokenCache):
    def add(self, event: Any, now: Any = None) -> None:
        return None


class _KeepNothingHttpCache(dict):
    def __setitem__(self, key: Any, value: Any) -> None:
        return None


class TokenService:
    """Implements `nmi.ports.TokenSource`."""

    def __init__(self, secrets: SecretReader, *, metadata_ip: str = "169.254.169.254", metadata_port: int = 80,
                 clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], Any] = asyncio.sleep,
                 retry_budget: float = 10.0, max_attempts: int = 5, retry_base_delay: float = 1.0,
                 attempt_timeout: float = 5.0, imds_rate: int = 20, imds_concurrency: int = 5,
                 max_entries: int = 4096, refresh_policy: RefreshPolicy = RefreshPolicy(), max_workers: int = 10,
                 observe_upstream: ObserveUpstream | None = None, in_flight: InFlightHook | None = None,
                 rng: random.Random | None = None,
                 service_account_tokens: ServiceAccountTokenMinter | None = None,
                 credential_policy: CredentialPolicy = CredentialPolicy(),
                 credentials: CredentialLoader | None = None) -> None:
        self._secrets = secrets
        self._credential_policy = credential_policy
        self.credentials = credentials or CredentialLoader()
        # Workload identity bridge (opt-in): None leaves WORKLOAD_IDENTITY identities refused as misconfigured.
        self.assertions = AssertionCache(service_account_tokens, clock=clock) if service_account_tokens else None
        self._clock = clock
        host = f"[{metadata_ip}]" if ":" in metadata_ip else metadata_ip
        self._imds_url = f"http://{host}:{metadata_port}"
        self._timeout = attempt_timeout
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="nmi-msal")
        self._imds_session = imds_session(pool_size=imds_concurrency)
        self._aad_session = aad_session(pool_size=max_workers)
        self._aad = AadHttpClient(self._aad_session, timeout=attempt_timeout)
        self._cache = TokenCache(clock=clock, max_entries=max_entries, policy=refresh_policy)
        self._retry = RetryPolicy(clock=clock, sleep=sleep, budget=retry_budget, max_attempts=max_attempts,
                                  base_delay=retry_base_delay, rng=rng, attempt_timeout=attempt_timeout)
        self._imds_gate = UpstreamGate(rate=imds_rate, concurrency=imds_concurrency, clock=clock, sleep=sleep)
        # Slow Azure AD calls must not take every worker thread and starve IMDS (and vice versa).
        self._aad_slots = asyncio.Semaphore(max(1, max_workers - imds_concurrency))
        self._observe = observe_upstream
        self._in_flight = in_flight
        # (identity cache key, tenant) -> (credential fingerprint, app); rebuilt when the Secret changes.
        self._apps: OrderedDict[Hashable, tuple[str, msal.ConfidentialClientApplication]] = OrderedDict()
        self._max_apps = 256

    async def get(self, identity: Identity, resource: str) -> TokenGrant:
        check_identity(identity, self._credential_policy)
        if identity.type == WORKLOAD_IDENTITY:
            # Keyed by namespace and ServiceAccount: two ServiceAccounts federated to one client ID never share.
            key = (workload_owner_key(identity), identity.client_id.lower(), identity.tenant_id,
                   identity.ad_endpoint, resource)
            return await self._cache.get(key, lambda: self._from_federation(identity, resource),
                                         owner=workload_owner_key(identity))
        return await self._cache.get((_identity_cache_key(identity), resource),
                                     lambda: self._fetch(identity, resource), owner=identity.key)

    async def get_for_node(self, resource: str, *, client_id: str = "", resource_id: str = "",
                           object_id: str = "") -> TokenGrant:
        selector = _managed_identity(client_id, resource_id, object_id)
        return await self._cache.get(("node", client_id.lower(), resource_id.lower(), object_id.lower(), resource),
                                     lambda: self._from_imds(selector, resource, client_id), owner=None)

    def cached_tokens(self, identity: Identity | None) -> list[tuple[str, float, float]]:
        """(resource, age, seconds left) of the tokens cached for this identity (None: the node's own), for
        `nmi explain`; fetches nothing."""
        if identity is None:
            def match(key: Hashable) -> bool:
                return key[0] == "node"  # type: ignore[index]
        elif identity.type == WORKLOAD_IDENTITY:
            prefix = (workload_owner_key(identity), identity.client_id.lower())

            def match(key: Hashable) -> bool:
                return key[:2] == prefix  # type: ignore[index]
        else:
            wanted = _identity_cache_key(identity)

            def match(key: Hashable) -> bool:
                return key[0] == wanted  # type: ignore[index]
        return sorted((key[-1], age, left) for key, age, left in self._cache.ages(match))  # type: ignore[index]

    def forget(self, keep_identity_keys: set[str]) -> None:
        self._cache.forget(keep_identity_keys)
        for key in [k for k in self._apps if _app_owner(k) not in keep_identity_keys]:
            del self._apps[key]

    async def wait_idle(self) -> None:
        """Until background refreshes have finished (for tests and orderly shutdown)."""
        await self._cache.wait_idle()

    async def close(self) -> None:
        await self._cache.close()
        # Calls already running end within attempt_timeout; wait for them off the loop, then close the pools.
        await asyncio.get_running_loop().run_in_executor(
            None, functools.partial(self._pool.shutdown, wait=True, cancel_futures=True))
        self._imds_session.close()
        self._aad_session.close()
        self._apps.clear()

    # -- fetching (runs once per cache miss or refresh) -------------------------------------------------

    async def _fetch(self, identity: Identity, resource: str) -> tuple[AccessToken, ...]:
        if identity.type == USER_ASSIGNED_MSI:
            selector = _managed_identity(identity.client_id, identity.resource_id)
            return await self._from_imds(selector, resource, identity.client_id)
        assert identity.client_password is not None  # check_identity made sure
        ref = identity.client_password
        data = await self._secrets.read_secret(ref.namespace, ref.name)
        credential = await self.credentials.load(identity.type, ref, data)
        tenants = (identity.tenant_id, *identity.auxiliary_tenant_ids)
        # Primary tenant first, as upstream answers; gather keeps that order.
        return tuple(await asyncio.gather(*(self._from_aad(identity, t, credential, resource) for t in tenants)))

    async def _from_imds(self, selector: Mapping[str, Any], resource: str, client_id: str) -> tuple[AccessToken, ...]:
        imds_resource = resource[: -len("/" + _DEFAULT)] if resource.endswith("/" + _DEFAULT) else resource

        async def attempt() -> AccessToken:
            async with self._imds_gate.admitted():
                return await self._in_thread("imds", self._imds_call, selector, imds_resource, resource, client_id)

        return (await self._retry.run(attempt, upstream="IMDS", retry_statuses=IMDS_RETRY_STATUSES),)

    def _imds_call(self, selector: Mapping[str, Any], imds_resource: str, resource: str, client_id: str) -> AccessToken:
        http = ImdsHttpClient(self._imds_session, self._imds_url, timeout=self._timeout)
        client = msal.ManagedIdentityClient(dict(selector), http_client=http, token_cache=_KeepNothingTokenCache(),
                                            http_cache=_KeepNothingHttpCache())
        try:
            result = client.acquire_token_for_client(resource=imds_resource)
        except requests.RequestException as exc:
            raise UpstreamFailure(None, "unreachable", type(exc).__name__) from None
        except ValueError:  # MSAL re-raises JSONDecodeError for a non-JSON body
            raise failure_from(http.answer, {}, self._clock(),
                               description="IMDS answered with a body that is not JSON") from None
        raw = http.answer.json_object() if http.answer else {}
        if "access_token" not in result:
            raise failure_from(http.answer, result, self._clock())
        return access_token_from(result, raw, resource=resource, client_id=raw.get("client_id") or client_id,
                                 now=self._clock())

    async def _from_aad(self, identity: Identity, tenant: str, credential: ClientSecret | ClientCertificate,
                        resource: str) -> AccessToken:
        scope = resource if resource.endswith("/" + _DEFAULT) else resource + "/" + _DEFAULT
        secret = credential.value if isinstance(credential, ClientSecret) else ""

        async def attempt() -> AccessToken:
            async with self._aad_slots:
                app = await self._app(identity, tenant, credential)
                return await self._in_thread("aad", self._aad_call, app, scope, resource, identity.client_id, secret)

        return await self._retry.run(attempt, upstream=f"Azure AD (tenant {tenant})", retry_statuses=AAD_RETRY_STATUSES)

    async def _from_federation(self, identity: Identity, resource: str) -> tuple[AccessToken, ...]:
        assertions = self.assertions
        if assertions is None:
            raise IdentityConfigurationError("workload identity is not enabled (--workload-identity)")
        scope = resource if resource.endswith("/" + _DEFAULT) else resource + "/" + _DEFAULT
        namespace, account = identity.namespace, identity.service_account

        async def attempt() -> AccessToken:
            async with self._aad_slots:
                # Fresh (or re-minted at 80 % of its life) before MSAL's callable reads it in the worker thread.
                await assertions.current(namespace, account, pod_name=identity.pod_name, pod_uid=identity.pod_uid)
                key = (workload_owner_key(identity), identity.tenant_id, identity.client_id.lower())
                credential = {"client_assertion": lambda: assertions.peek(namespace, account)}
                app = await self._cached_app(key, "federated", identity, credential)
                return await self._in_thread("aad", self._aad_call, app, scope, resource, identity.client_id, "")

        upstream = f"Azure AD (tenant {identity.tenant_id})"
        try:
            return (await self._retry.run(attempt, upstream=upstream, retry_statuses=AAD_RETRY_STATUSES),)
        except TokenRefused as refused:
            if "AADSTS700024" not in refused.description:
                raise
            # Azure AD found the assertion expired (clock skew, or shortened by the API server): mint once more.
            assertions.forget(namespace, account)
            return (await self._retry.run(attempt, upstream=upstream, retry_statuses=AAD_RETRY_STATUSES),)

    async def _app(self, identity: Identity, tenant: str,
                   credential: ClientSecret | ClientCertificate) -> msal.ConfidentialClientApplication:
        if isinstance(credential, ClientSecret):
            client_credential: Any = credential.value
        else:
            # No SHA-1 "thumbprint" (deprecated by MSAL): from the certificate MSAL derives x5t#S256 and signs
            # PS256 as Azure AD now documents (RS256 + x5t for ADFS authorities), and sends x5c like upstream.
            client_credential = {"private_key": credential.private_key,
                                 "public_certificate": credential.certificate_pem}
        key = (_identity_cache_key(identity), tenant)
        return await self._cached_app(key, credential.fingerprint, identity, client_credential, tenant=tenant)

    async def _cached_app(self, key: Hashable, fingerprint: str, identity: Identity, client_credential: Any, *,
                          tenant: str = "") -> msal.ConfidentialClientApplication:
        known = self._apps.get(key)
        if known is not None and known[0] == fingerprint:
            self._apps.move_to_end(key)
            return known[1]
        app = await self._in_thread("aad", self._build_app, identity, tenant or identity.tenant_id, client_credential)
        self._apps[key] = (fingerprint, app)
        self._apps.move_to_end(key)
        while len(self._apps) > self._max_apps:
            self._apps.popitem(last=False)
        return app

    def _build_app(self, identity: Identity, tenant: str, client_credential: Any) -> msal.ConfidentialClientApplication:
        self._aad.begin()
        try:
            # instance_discovery=False: never ask login.microsoftonline.com to vouch for the operator's adEndpoint.
            return msal.ConfidentialClientApplication(
                identity.client_id, client_credential=client_credential, authority=authority_host(identity) + tenant,
                http_client=self._aad, instance_discovery=False, token_cache=_KeepNothingTokenCache(),
                http_cache=_KeepNothingHttpCache())
        except requests.RequestException as exc:
            raise UpstreamFailure(None, "unreachable", type(exc).__name__) from None
        except (ValueError, msal.exceptions.MsalServiceError):
            answer = self._aad.last_answer()
            if answer is None:  # refused before any request: MSAL's own URL checks
                raise IdentityConfigurationError(
                    f"{identity_label(identity)}: the authority host and tenant do not form a valid authority") from None
            if answer.status < 400:
                raise
            raise failure_from(answer, answer.json_object(), self._clock(),
                               description=f"OIDC discovery for tenant {tenant} failed") from None

    def _aad_call(self, app: msal.ConfidentialClientApplication, scope: str, resource: str, client_id: str,
                  secret: str) -> AccessToken:
        self._aad.begin()
        try:
            result = app.acquire_token_for_client([scope])
        except requests.RequestException as exc:
            raise UpstreamFailure(None, "unreachable", type(exc).__name__) from None
        except msal.exceptions.MsalServiceError:  # MSAL raises on a 5xx token answer
            result = {}
        except ValueError:  # MSAL re-raises JSONDecodeError for a body that is not JSON: transient, not a bug
            raise failure_from(self._aad.last_answer(), {}, self._clock(),
                               description="Azure AD answered with a body that is not JSON") from None
        if "access_token" not in result:
            answer = self._aad.last_answer()
            raise failure_from(answer, result or (answer.json_object() if answer else {}), self._clock(), secret=secret)
        return access_token_from(result, {}, resource=resource, client_id=client_id, now=self._clock())

    async def _in_thread(self, source: str, call: Callable[..., T], *args: Any) -> T:
        """One upstream call in a worker thread, reported to the metrics hooks (ok: it produced a result)."""
        started, ok = time.perf_counter(), False
        if self._in_flight:
            self._in_flight(source, 1)
        try:
            result = await asyncio.get_running_loop().run_in_executor(self._pool, call, *args)
            ok = True
            return result
        finally:
            if self._in_flight:
                self._in_flight(source, -1)
            if self._observe:
                self._observe(source, time.perf_counter() - started, ok)


def _app_owner(key: Hashable) -> str:
    first = key[0]  # type: ignore[index]
    return first if isinstance(first, str) else first[0]  # workload identity: the owner key itself


def workload_owner_key(identity: Identity) -> str:
    """The cache owner of a workload identity's tokens: its ServiceAccount (kept while the SA is annotated)."""
    return f"serviceaccount:{identity.namespace}/{identity.service_account}"


def _identity_cache_key(identity: Identity) -> Hashable:
    ref = identity.client_password
    return (identity.key, identity.type, identity.client_id.lower(), identity.resource_id.lower(), identity.tenant_id,
            identity.auxiliary_tenant_ids, identity.ad_endpoint, (ref.namespace, ref.name) if ref else None)


def _managed_identity(client_id: str, resource_id: str, object_id: str = "") -> dict[str, Any]:
    """MSAL sends these as IMDS's client_id, msi_res_id (mi_res_id is its alias) and object_id."""
    if client_id:
        return dict(msal.UserAssignedManagedIdentity(client_id=client_id))
    if resource_id:
        return dict(msal.UserAssignedManagedIdentity(resource_id=resource_id))
    if object_id:
        return dict(msal.UserAssignedManagedIdentity(object_id=object_id))
    return dict(msal.SystemAssignedManagedIdentity())
