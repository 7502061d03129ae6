"""In-memory implementations of the broker's ports, for testing the use case and the HTTP layer alone.

(The real adapters are tested against fakes of the API server, IMDS and Azure AD in their own suites.)
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from nmi.errors import PodConflict, PodNotFound
from nmi.model import AccessToken, AssignedIdentity, Binding, Identity, PodIdentityException, PodInfo, TokenGrant


class Pods:
    def __init__(self, *pods: PodInfo) -> None:
        self.pods = list(pods)

    async def pod_for_ip(self, ip: str) -> PodInfo:
        live = [p for p in self.pods if p.ip == ip and p.live]
        if not live:
            raise PodNotFound()
        if len(live) > 1:
            raise PodConflict()
        return live[0]

    def cached_pod_for_ip(self, ip: str) -> PodInfo | None:
        return None  # always the awaiting way: these doubles test the use case, not its cached shortcut

    def pod_by_name(self, namespace: str, name: str) -> PodInfo | None:
        return next((p for p in self.pods if p.namespace == namespace and p.name == name), None)


@dataclass
class Catalog:
    bound: list[Binding] = field(default_factory=list)
    ids: list[Identity] = field(default_factory=list)
    excepts: list[PodIdentityException] = field(default_factory=list)
    assignments: list[AssignedIdentity] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    waits: int = 0

    def bindings(self, namespace):
        return [b for b in self.bound if namespace is None or b.namespace == namespace]

    def binding(self, namespace, name):
        return next((b for b in self.bound if b.namespace == namespace and b.name == name), None)

    def identities(self, namespace):
        return [i for i in self.ids if i.namespace == namespace]

    def exceptions(self, namespace):
        return [e for e in self.excepts if e.namespace == namespace]

    def assigned(self, namespace, pod_name):
        return [a for a in self.assignments if a.pod_namespace == namespace and a.pod == pod_name]

    def put_assignment(self, assignment: AssignedIdentity) -> None:
        self.assignments = [a for a in self.assignments if a.name != assignment.name] + [assignment]
        self.changed.set()

    async def wait_changed(self, timeout: float) -> bool:  # noqa: ASYNC109 - the port's signature (nmi.ports)
        self.waits += 1
        try:
            await asyncio.wait_for(self.changed.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False
        finally:
            self.changed.clear()


class Tokens:
    """Issues a distinct fake token per identity; `oid` is `oid-<client id>`."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.fail_with: Exception | None = None

    async def get(self, identity: Identity, resource: str) -> TokenGrant:
        self.calls.append((identity.key, resource))
        if self.fail_with:
            raise self.fail_with
        return TokenGrant((self._token(identity.client_id, resource),))

    async def get_for_node(self, resource: str, *, client_id: str = "", resource_id: str = "",
                           object_id: str = "") -> TokenGrant:
        self.calls.append(("node:" + (client_id or resource_id or object_id or "system"), resource))
        return TokenGrant((self._token(client_id or "node-system", resource),))

    def cached(self, identity: Identity, resource: str) -> TokenGrant | None:
        return None  # nothing is cached here: every call is counted

    def cached_for_node(self, resource: str, *, client_id: str = "", resource_id: str = "",
                        object_id: str = "") -> TokenGrant | None:
        return None

    def forget(self, keep_identity_keys: set[str]) -> None:
        pass

    @staticmethod
    def _token(client_id: str, resource: str) -> AccessToken:
        return AccessToken(access_token=f"tok-{client_id}-{resource}", expires_on=2_000_000_000, resource=resource,
                           client_id=client_id, object_id=f"oid-{client_id}", not_before=1_999_996_400)


def pod(name: str, ip: str, *, ns: str = "default", label: str | None = None, **kw) -> PodInfo:
    labels = dict(kw.pop("labels", {}))
    if label is not None:
        labels["aadpodidbinding"] = label
    return PodInfo(namespace=ns, name=name, uid=f"uid-{ns}-{name}", ip=ip, labels=labels, **kw)


def identity(name: str, client_id: str, *, ns: str = "default", **kw) -> Identity:
    return Identity(namespace=ns, name=name, client_id=client_id,
                    resource_id=f"/subscriptions/s/resourcegroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{name}",
                    **kw)


def binding(name: str, identity_name: str, selector: str, *, ns: str = "default", weight: int = 0) -> Binding:
    return Binding(namespace=ns, name=name, identity_name=identity_name, selector=selector, weight=weight)


def assignment(p: PodInfo, ident: Identity, status: str, *, weight: int = 0) -> AssignedIdentity:
    return AssignedIdentity(namespace=p.namespace, name=f"{p.name}-{ident.namespace}-{ident.name}", pod=p.name,
                            pod_namespace=p.namespace, node="node-1", status=status, identity=ident,
                            binding_weight=weight)
