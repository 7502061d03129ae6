"""The MSAL adapter: the only module of nmi that imports `msal`. One call = one upstream attempt.

MSAL is synchronous and does network I/O even in its constructors, so every MSAL call runs in the thread pool
this adapter owns, reported to the metrics hooks. The ConfidentialClientApplications (one per identity, tenant
and credential version) are kept in an LRU here. nmi's TokenCache is the only token cache: MSAL gets caches that
keep nothing (its own would serve stale tokens to refresh-ahead, and its HTTP throttle cache would swallow
retries). MSAL's and requests' exceptions are caught here; nmi.tokens.failures maps them (and the answers).
"""

from __future__ import annotations

import asyncio
import functools
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, Callable, Hashable, Iterator, TypeVar

import msal
import requests

from ..model import AccessToken, Identity
from ..singleflight import Lru
from .config import ImdsEndpoint, UpstreamHooks, UpstreamLimits
from .credential_policy import authority_host, identity_label
from .credentials import ClientSecret, Credential
from .failures import discovery_failure, failure_from, unreachable
from .msal_http import AadHttpClient, Answer, ImdsHttpClient, aad_session, access_token_from, imds_session

T = TypeVar("T")
MAX_APPS = 256


class _KeepNothingTokenCache(msal.TokenCache):  # type: ignore[misc]  # msal ships no types: its classes are Any
    def add(self, event: Any, now: Any = None) -> None:
        return None


class _KeepNothingHttpCache(dict[Any, Any]):
    def __setitem__(self, key: Any, value: Any) -> None:
        return None


class MsalAdapter:
    def __init__(self, *, imds: ImdsEndpoint, limits: UpstreamLimits, hooks: UpstreamHooks,
                 clock: Callable[[], float]) -> None:
        self._clock = clock
        self._imds_url = imds.url
        self._timeout = limits.attempt_timeout
        self._hooks = hooks
        self._pool = ThreadPoolExecutor(max_workers=limits.max_workers, thread_name_prefix="nmi-msal")
        self._imds_session = imds_session(pool_size=limits.imds_concurrency)
        self._aad_session = aad_session(pool_size=limits.max_workers)
        self._aad = AadHttpClient(self._aad_session, timeout=limits.attempt_timeout)
        # Slow Azure AD calls must not take every worker thread and starve IMDS (and vice versa).
        self.aad_slots = asyncio.Semaphore(max(1, limits.max_workers - limits.imds_concurrency))
        # app key -> (credential fingerprint, owner, app); rebuilt when the credential changes.
        self._apps: Lru[Hashable, tuple[str, str, msal.ConfidentialClientApplication]] = Lru(MAX_APPS)

    async def imds_token(self, resource: str, *, client_id: str = "", resource_id: str = "",
                         object_id: str = "") -> AccessToken:
        """One IMDS attempt for this managed identity (none given: the VM's system-assigned one)."""
        imds_resource = resource.removesuffix("/.default")
        selector = _managed_identity(client_id, resource_id, object_id)
        return await self._in_thread("imds", self._imds_call, selector, imds_resource, resource, client_id)

    async def client_credential_token(self, identity: Identity, tenant: str, credential: Credential, *,
                                      app_key: Hashable, owner: str, scope: str, resource: str) -> AccessToken:
        """One Azure AD attempt with a client secret or certificate (service principal, types 1 and 2)."""
        if isinstance(credential, ClientSecret):
            client_credential: Any = credential.value
        else:
            # No SHA-1 "thumbprint" (deprecated by MSAL): from the certificate MSAL derives x5t#S256 and signs
            # PS256 as Azure AD now documents (RS256 + x5t for ADFS authorities), and sends x5c like upstream.
            client_credential = {"private_key": credential.private_key,
                                 "public_certificate": credential.certificate_pem}
        app = await self._app(app_key, credential.fingerprint, owner, identity, tenant or identity.tenant_id,
                              client_credential)
        secret = credential.value if isinstance(credential, ClientSecret) else ""
        return await self._in_thread("aad", self._aad_call, app, scope, resource, identity.client_id, secret)

    async def federated_token(self, identity: Identity, assertion: Callable[[], str], *, app_key: Hashable,
                              owner: str, scope: str, resource: str) -> AccessToken:
        """One Azure AD attempt with a ServiceAccount token as client_assertion (workload identity);
        `assertion` is called in the worker thread and must not do I/O."""
        app = await self._app(app_key, "federated", owner, identity, identity.tenant_id,
                              {"client_assertion": assertion})
        return await self._in_thread("aad", self._aad_call, app, scope, resource, identity.client_id, "")

    def forget(self, keep_owners: set[str]) -> None:
        self._apps.drop(lambda _key, known: known[1] not in keep_owners)

    async def close(self) -> None:
        # Calls already running end within attempt_timeout; wait for them off the loop, then close the pools.
        await asyncio.get_running_loop().run_in_executor(
            None, functools.partial(self._pool.shutdown, wait=True, cancel_futures=True))
        self._imds_session.close()
        self._aad_session.close()
        self._apps.clear()

    async def _app(self, key: Hashable, fingerprint: str, owner: str, identity: Identity, tenant: str,
                   client_credential: Any) -> msal.ConfidentialClientApplication:
        known = self._apps.peek(key)
        if known is not None and known[0] == fingerprint:
            self._apps.touch(key)
            return known[2]
        app = await self._in_thread("aad", self._build_app, identity, tenant, client_credential)
        self._apps.put(key, (fingerprint, owner, app))
        return app

    # -- in the worker threads ------------------------------------------------------------------------------

    def _imds_call(self, selector: dict[str, Any], imds_resource: str, resource: str, client_id: str) -> AccessToken:
        http = ImdsHttpClient(self._imds_session, self._imds_url, timeout=self._timeout)
        client = msal.ManagedIdentityClient(selector, http_client=http, token_cache=_KeepNothingTokenCache(),
                                            http_cache=_KeepNothingHttpCache())
        with self._foreign_errors(lambda: http.answer, not_json="IMDS answered with a body that is not JSON"):
            result = client.acquire_token_for_client(resource=imds_resource)
        raw = http.answer.json_object() if http.answer else {}
        if "access_token" not in result:
            raise failure_from(http.answer, result, self._clock())
        return access_token_from(result, raw, resource=resource, client_id=raw.get("client_id") or client_id,
                                 now=self._clock())

    def _build_app(self, identity: Identity, tenant: str, client_credential: Any) -> msal.ConfidentialClientApplication:
        self._aad.begin()
        try:
            # instance_discovery=False: never ask login.microsoftonline.com to vouch for the operator's adEndpoint.
            return msal.ConfidentialClientApplication(
                identity.client_id, client_credential=client_credential, authority=authority_host(identity) + tenant,
                http_client=self._aad, instance_discovery=False, token_cache=_KeepNothingTokenCache(),
                http_cache=_KeepNothingHttpCache())
        except requests.RequestException as exc:
            raise unreachable(exc) from None
        except (ValueError, msal.exceptions.MsalServiceError):
            failure = discovery_failure(self._aad.last_answer(), self._clock(), label=identity_label(identity),
                                        tenant=tenant)
            if failure is None:
                raise
            raise failure from None

    def _aad_call(self, app: msal.ConfidentialClientApplication, scope: str, resource: str, client_id: str,
                  secret: str) -> AccessToken:
        self._aad.begin()
        result: dict[str, Any] = {}
        with self._foreign_errors(self._aad.last_answer, not_json="Azure AD answered with a body that is not JSON"):
            try:
                result = app.acquire_token_for_client([scope])
            except msal.exceptions.MsalServiceError:  # MSAL raises on a 5xx token answer: read the answer below
                pass
        if "access_token" not in result:
            answer = self._aad.last_answer()
            raise failure_from(answer, result or (answer.json_object() if answer else {}), self._clock(), secret=secret)
        return access_token_from(result, {}, resource=resource, client_id=client_id, now=self._clock())

    @contextmanager
    def _foreign_errors(self, answer: Callable[[], Answer | None], *, not_json: str) -> Iterator[None]:
        """Around one token call: requests' exceptions (refused, reset, timed out) and a body MSAL could not parse
        (it re-raises JSONDecodeError as is) become UpstreamFailure; MSAL's other errors pass."""
        try:
            yield
        except requests.RequestException as exc:
            raise unreachable(exc) from None
        except ValueError:
            raise failure_from(answer(), {}, self._clock(), description=not_json) from None

    async def _in_thread(self, source: str, call: Callable[..., T], *args: Any) -> T:
        """One upstream call in a worker thread, reported to the metrics hooks (ok: it produced a result)."""
        started, ok = time.perf_counter(), False
        in_flight, observe = self._hooks.in_flight, self._hooks.observe
        if in_flight:
            in_flight(source, 1)
        try:
            result = await asyncio.get_running_loop().run_in_executor(self._pool, call, *args)
            ok = True
            return result
        finally:
            if in_flight:
                in_flight(source, -1)
            if observe:
                observe(source, time.perf_counter() - started, ok)


def _managed_identity(client_id: str, resource_id: str, object_id: str = "") -> dict[str, Any]:
    """MSAL sends these as IMDS's client_id, msi_res_id (mi_res_id is its alias) and object_id."""
    if client_id:
        return dict(msal.UserAssignedManagedIdentity(client_id=client_id))
    if resource_id:
        return dict(msal.UserAssignedManagedIdentity(resource_id=resource_id))
    if object_id:
        return dict(msal.UserAssignedManagedIdentity(object_id=object_id))
    return dict(msal.SystemAssignedManagedIdentity())
