"""The protocols the broker depends on. Adapters (informer/cache, tokens) implement them; tests may fake them.

The broker imports only this module, `model` and `errors`: no foreign library.
"""

from __future__ import annotations

from typing import Iterable, Mapping, Protocol

from .model import (AssignedIdentity, Binding, Identity, PodIdentityException, PodInfo, ServiceAccount,
                    ServiceAccountToken, TokenGrant, Workload)


class PodDirectory(Protocol):
    async def pod_for_ip(self, ip: str) -> PodInfo:
        """The live (Pending/Running, not deleting) pod on this node with this IP.

        On a cache miss makes one bounded live lookup against the API server before giving up.
        Raises errors.PodNotFound (503 + Retry-After) or errors.PodConflict (two live pods share the IP).
        """

    def cached_pod_for_ip(self, ip: str) -> PodInfo | None:
        """What `pod_for_ip` answers without awaiting or raising: the IP's only live owner while the pod cache is
        fresh; None whenever `pod_for_ip` would look further, wait or refuse."""

    def pod_by_name(self, namespace: str, name: str) -> PodInfo | None:
        """From the cache only."""


class IdentityCatalog(Protocol):
    def bindings(self, namespace: str | None) -> Iterable[Binding]:
        """Bindings of one namespace, or of all namespaces with None (standard mode without namespacing)."""

    def binding(self, namespace: str, name: str) -> Binding | None:
        """One binding by name (the current version: time-boxed bindings are checked against it)."""

    def identities(self, namespace: str) -> Iterable[Identity]: ...
    def exceptions(self, namespace: str) -> Iterable[PodIdentityException]: ...
    def assigned(self, namespace: str, pod_name: str) -> Iterable[AssignedIdentity]: ...

    # ASYNC109 (use the caller's asyncio.timeout) does not fit: expiry is an answer (False), not an error.
    async def wait_changed(self, timeout: float) -> bool:  # noqa: ASYNC109
        """Wait until any identity object changes (event-driven, woken by the informer). False on timeout."""


class CacheFreshness(Protocol):
    """Which watch caches can be trusted now (SPEC §7): see nmi.freshness for what makes one stale."""

    def problems(self) -> list[str]:
        """One line per cache not synced or stale; empty when every cache can be trusted."""

    def identity_problems(self) -> list[str]:
        """The same, for the caches identity resolution reads (every cache but the pods')."""


class ServiceAccountDirectory(Protocol):
    def service_account(self, namespace: str, name: str) -> ServiceAccount | None:
        """From the ServiceAccount watch cache only (workload identity bridge)."""


class WorkloadDirectory(Protocol):
    """ReplicaSets and Deployments of --MICNamespace, from watch caches (standard mode: the MIC check)."""

    def replicaset(self, namespace: str, name: str) -> Workload | None: ...
    def deployment(self, namespace: str, name: str) -> Workload | None: ...


class ServiceAccountTokenMinter(Protocol):
    async def mint_token(self, namespace: str, service_account: str, *, pod_name: str,
                         pod_uid: str) -> ServiceAccountToken:
        """TokenRequest for the workload identity audience, bound to the pod. Raises
        errors.IdentityConfigurationError naming the ServiceAccount when refused (403/404 or the pod is gone),
        errors.Unavailable when the API server cannot be reached."""


class SecretReader(Protocol):
    async def read_secret(self, namespace: str, name: str) -> Mapping[str, bytes]:
        """Live GET of a Secret's decoded data (a model.SecretData, with its resourceVersion). Raises errors.IdentityConfigurationError naming the Secret
        when it does not exist, errors.Unavailable when the API server cannot be reached."""


class TokenSource(Protocol):
    async def get(self, identity: Identity, resource: str) -> TokenGrant:
        """A token for this identity and resource: from the cache, or one upstream call shared by all
        concurrent callers. Raises NmiError subclasses (TokenRefused, Throttled, Unavailable,
        IdentityConfigurationError)."""

    async def get_for_node(self, resource: str, *, client_id: str = "", resource_id: str = "",
                           object_id: str = "") -> TokenGrant:
        """Straight from IMDS for the node's own identities (exception pods, MIC), at most one selector given:
        forwarded as IMDS's client_id, msi_res_id or object_id."""

    def cached(self, identity: Identity, resource: str) -> TokenGrant | None:
        """What `get` answers without awaiting (a usable cached token), else None. May raise what `get` raises
        before it fetches (IdentityConfigurationError)."""

    def cached_for_node(self, resource: str, *, client_id: str = "", resource_id: str = "",
                        object_id: str = "") -> TokenGrant | None:
        """What `get_for_node` answers without awaiting, else None."""

    def forget(self, keep_identity_keys: set[str]) -> None:
        """Drop cached tokens of identities no longer present."""
