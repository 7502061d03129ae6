"""Frozen value types that cross module boundaries.

Everything the informer projects out of raw Kubernetes JSON, everything the IMDS parser produces and
everything a token source returns is one of these. They carry no behaviour beyond small derived views.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Iterator, Mapping

if TYPE_CHECKING:
    from .windows import ActiveWindows

EMPTY: Mapping[str, str] = MappingProxyType({})

# AzureIdentity spec.type values (aadpodidentity.k8s.io/v1).
USER_ASSIGNED_MSI = 0
SERVICE_PRINCIPAL = 1
SERVICE_PRINCIPAL_CERTIFICATE = 2
# nmi-only, never in a CRD: a pod without aad-pod-identity binding, served through workload identity
# federation for its ServiceAccount (--workload-identity).
WORKLOAD_IDENTITY = 100

# azure-workload-identity's names (the azwi webhook requires the pod label with exactly "true").
WORKLOAD_IDENTITY_USE_LABEL = "azure.workload.identity/use"
WORKLOAD_IDENTITY_CLIENT_ID_ANNOTATION = "azure.workload.identity/client-id"
WORKLOAD_IDENTITY_TENANT_ID_ANNOTATION = "azure.workload.identity/tenant-id"

NAMESPACED_ANNOTATION = "aadpodidentity.k8s.io/Behavior"
BINDING_LABEL = "aadpodidbinding"
# The Deployment whose pods get the node's identity in standard mode (MIC itself); the watch reads only it.
MIC_DEPLOYMENT = "mic"


@dataclass(frozen=True, slots=True)
class PodInfo:
    """A pod on this node as far as token brokering cares."""

    namespace: str
    name: str
    uid: str
    ip: str
    phase: str = "Running"
    labels: Mapping[str, str] = field(default_factory=lambda: EMPTY)
    replicaset: str = ""  # name of the ReplicaSet owner (the controller one if marked), "" if none
    replicaset_uid: str = ""  # that owner reference's UID: the MIC check follows UIDs, never names alone
    deleting: bool = False  # metadata.deletionTimestamp is set
    host_network: bool = False
    service_account: str = "default"
    # metadata.resourceVersion: lets the index tell a live-lookup result from a newer watch event.
    resource_version: str = field(default="", compare=False)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def live(self) -> bool:
        """Pending or Running and not being deleted."""
        return self.phase in ("Pending", "Running") and not self.deleting

    @property
    def owns_ip(self) -> bool:
        """The only pods a caller's address may identify: live, with an address of their own. Host-network pods
        share the node's address with every process on the node, so a call from it names no pod."""
        return self.live and not self.host_network


@dataclass(frozen=True, slots=True)
class Workload:
    """A ReplicaSet or Deployment as far as the MIC check cares: who it is (UID) and who controls it."""

    namespace: str
    name: str
    uid: str
    owner_kind: str = ""  # the controlling owner reference ("" if none)
    owner_name: str = ""
    owner_uid: str = ""


@dataclass(frozen=True, slots=True)
class SecretRef:
    namespace: str
    name: str


class SecretData(Mapping[str, bytes]):
    """A Secret's decoded data, and the resourceVersion it was read at (credentials are parsed once per version).
    Compares equal to a plain dict of the same data; its repr never shows the content."""

    __slots__ = ("_data", "resource_version")

    def __init__(self, data: Mapping[str, bytes], resource_version: str = "") -> None:
        self._data = dict(data)
        self.resource_version = resource_version

    def __getitem__(self, key: str) -> bytes:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"SecretData(keys={sorted(self._data)}, resource_version={self.resource_version!r})"


@dataclass(frozen=True, slots=True)
class Identity:
    """An AzureIdentity (possibly the copy embedded in an AzureAssignedIdentity)."""

    namespace: str
    name: str
    type: int = USER_ASSIGNED_MSI
    client_id: str = ""
    resource_id: str = ""
    tenant_id: str = ""
    auxiliary_tenant_ids: tuple[str, ...] = ()
    ad_endpoint: str = ""
    client_password: SecretRef | None = None
    namespaced: bool = False  # annotation aadpodidentity.k8s.io/Behavior: namespaced
    uid: str = ""
    # WORKLOAD_IDENTITY only: the ServiceAccount (in `namespace`) whose federated token is exchanged, and the
    # calling pod the minted ServiceAccount token is bound to. The pod is not part of the identity's equality.
    service_account: str = ""
    pod_name: str = field(default="", compare=False)
    pod_uid: str = field(default="", compare=False)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class ServiceAccount:
    """A ServiceAccount as far as the workload identity bridge cares: its azure.workload.identity annotations."""

    namespace: str
    name: str
    client_id: str = ""  # azure.workload.identity/client-id, "" when absent
    tenant_id: str = ""  # azure.workload.identity/tenant-id, "" when absent
    uid: str = ""


@dataclass(frozen=True, slots=True)
class ServiceAccountToken:
    """A token minted through the TokenRequest API (never logged: repr hides it)."""

    token: str = field(repr=False)
    expires_on: float  # epoch seconds, from status.expirationTimestamp


@dataclass(frozen=True, slots=True)
class Binding:
    """An AzureIdentityBinding."""

    namespace: str
    name: str
    identity_name: str  # spec.azureIdentity
    selector: str  # matched against the pod label aadpodidbinding
    weight: int = 0
    # aadpodidentity.k8s.io/active-windows, parsed once per binding version: None means always active; a
    # malformed annotation leaves None here and the reason in `windows_error` (never active).
    windows: ActiveWindows | None = None
    windows_error: str = ""


@dataclass(frozen=True, slots=True)
class AssignedIdentity:
    """An AzureAssignedIdentity written by MIC (standard mode)."""

    namespace: str
    name: str
    pod: str
    pod_namespace: str
    node: str
    status: str  # "", "Created", "Assigned", "Unassigned"
    identity: Identity | None
    binding_name: str = ""
    binding_weight: int = 0
    binding_namespace: str = ""  # azureBindingRef.metadata.namespace ("" when MIC did not write it)
    binding: Binding | None = None  # MIC's copy of the binding, used when the binding itself is gone


@dataclass(frozen=True, slots=True)
class PodIdentityException:
    """An AzurePodIdentityException."""

    namespace: str
    name: str
    pod_labels: Mapping[str, str] = field(default_factory=lambda: EMPTY)


@dataclass(frozen=True, slots=True)
class TokenRequest:
    """A parsed IMDS token request. At most one of the selectors is set."""

    resource: str
    client_id: str = ""
    resource_id: str = ""  # msi_res_id or mi_res_id
    object_id: str = ""
    api_version: str = ""

    @property
    def selects(self) -> bool:
        return bool(self.client_id or self.resource_id or self.object_id)


@dataclass(frozen=True, slots=True)
class AccessToken:
    """A token as issued upstream, with absolute times so remaining lifetime can be computed now."""

    access_token: str
    expires_on: int  # epoch seconds
    resource: str
    token_type: str = "Bearer"
    not_before: int | None = None
    client_id: str = ""
    object_id: str = ""  # the `oid` claim, read (not verified) from the JWT when it is one
    extra: Mapping[str, str] = field(default_factory=lambda: EMPTY, compare=False)


@dataclass(frozen=True, slots=True)
class TokenGrant:
    """What a token source answers: one token, or several for a service principal with auxiliary tenants
    (primary tenant first), and whether it came from the cache."""

    tokens: tuple[AccessToken, ...]
    cached: bool = False

    @property
    def primary(self) -> AccessToken:
        return self.tokens[0]
