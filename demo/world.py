"""The demo cluster: one node, three pods, two user-assigned identities bound in managed mode."""

from __future__ import annotations

from dataclasses import dataclass

from fakes.imds import VmIdentity
from fakes.kubeobjects import make_binding, make_identity, make_pod

NODE = "demo-node"
NAMESPACE = "demo"
SUBSCRIPTION = "/subscriptions/00000000-0000-0000-0000-00000000d3m0/resourcegroups/demo/providers"


@dataclass(frozen=True)
class DemoPod:
    name: str
    ip: str
    identity: str | None  # AzureIdentity name it is bound to, or None


@dataclass(frozen=True)
class DemoIdentity:
    name: str
    client_id: str
    object_id: str

    @property
    def resource_id(self) -> str:
        return f"{SUBSCRIPTION}/Microsoft.ManagedIdentity/userAssignedIdentities/{self.name}"


IDENTITIES = (
    DemoIdentity("frontend-id", "a1b2c3d4-0000-4000-8000-00000000f00d", "0b1ec7f0-0000-4000-8000-00000000f00d"),
    DemoIdentity("backend-id", "b2c3d4e5-0000-4000-8000-0000000000be", "0b1ec7be-0000-4000-8000-0000000000be"),
)


def pods_for(ips: list[str]) -> list[DemoPod]:
    names = (("frontend", "frontend-id"), ("backend", "backend-id"), ("unbound", None))
    return [DemoPod(name, ip, identity) for (name, identity), ip in zip(names, ips)]


def vm_identities() -> list[VmIdentity]:
    return [VmIdentity(client_id=i.client_id, object_id=i.object_id, resource_id=i.resource_id) for i in IDENTITIES]


def cluster_objects(pods: list[DemoPod]) -> list[dict]:
    objects = []
    for identity in IDENTITIES:
        objects.append(make_identity(identity.name, NAMESPACE, client_id=identity.client_id,
                                     resource_id=identity.resource_id))
        objects.append(make_binding(f"{identity.name}-binding", NAMESPACE, identity=identity.name,
                                    selector=identity.name.removesuffix("-id")))
    for pod in pods:
        labels = {"app": pod.name}
        if pod.identity:
            labels["aadpodidbinding"] = pod.identity.removesuffix("-id")
        objects.append(make_pod(pod.name, NAMESPACE, pod.ip, NODE, labels=labels))
    return objects
