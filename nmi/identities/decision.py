"""What `resolve` reads and what it answers: the view of the caches, the policy, and the `Decision`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ..errors import AccessDenied, IdentityNotFound, NmiError
from ..model import Binding, Identity, PodIdentityException
from ..ports import IdentityCatalog, ServiceAccountDirectory, WorkloadDirectory
from .rules import denial

STANDARD = "standard"
MANAGED = "managed"

# Where the pod's identity comes from.
NODE = "node"  # the node's own identity, straight from IMDS (an AzurePodIdentityException, or MIC's own pod)
WORKLOAD = "workload"  # the workload identity bridge: the pod's ServiceAccount names a client ID
BINDINGS = "bindings"  # aad-pod-identity: the pod's bindings (managed mode) or MIC's assignments (standard mode)


class Policy(Protocol):
    """The settings resolution reads (`nmi.broker.BrokerPolicy` is one)."""

    @property
    def mode(self) -> str: ...
    @property
    def namespaced(self) -> bool: ...
    @property
    def mic_namespace(self) -> str: ...
    @property
    def workload_identity(self) -> bool: ...
    @property
    def workload_identity_tenant(self) -> str: ...
    @property
    def workload_identity_authority(self) -> str: ...


@dataclass(frozen=True, slots=True)
class View:
    """The watch caches resolution reads. `workloads` only in standard mode (the MIC check), `service_accounts`
    only with --workload-identity."""

    catalog: IdentityCatalog
    service_accounts: ServiceAccountDirectory | None = None
    workloads: WorkloadDirectory | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    source: str = BINDINGS
    ready: tuple[Identity, ...] = ()  # usable now, best first (managed: bound; standard: assigned by MIC)
    created: tuple[Identity, ...] = ()  # standard mode: MIC created the assignment, not assigned yet
    expected: tuple[Identity, ...] = ()  # standard mode: what the pod's active bindings refer to
    inactive: tuple[Binding, ...] = ()  # bindings outside their windows that would have answered the request
    through: tuple[Binding | None, ...] = ()  # per `ready` identity, the binding giving it (the audit trail)
    exception: PodIdentityException | None = None  # NODE: the exception matching the pod (None: MIC's pod)
    workload: Identity | None = None  # WORKLOAD: the ServiceAccount's identity (in `ready` if the request may use it)

    @property
    def pending(self) -> bool:
        """Standard mode: nothing usable yet, but MIC may still assign something (worth waiting for)."""
        return bool(self.created or self.expected)

    def binding_for(self, identity: Identity) -> Binding | None:
        for candidate, binding in zip(self.ready, self.through):
            if candidate is identity or candidate == identity:  # usually the very object: skip comparing fields
                return binding
        return None

    def refusal(self, now: float) -> NmiError:
        """Nothing usable and nothing to wait for: 403 naming the next window when only time-boxed bindings
        outside their windows would answer, else `Identity not found`."""
        if self.inactive:
            return AccessDenied(denial(self.inactive, now))
        return IdentityNotFound()
