"""The small cluster the fault suites run: two VM identities, a binding each, pods on 127.0.0.x playing callers."""

from __future__ import annotations

from fakes.imds import user_assigned
from fakes.kubeobjects import make_binding, make_identity, make_pod

NODE = "faults-node"
NS = "faults"
X = user_assigned("id-x", client_id="aaaaaaaa-1111-4111-8111-0000000000a1",
                  object_id="0a000000-0000-4000-8000-0000000000a1")
Y = user_assigned("id-y", client_id="bbbbbbbb-2222-4222-8222-0000000000b2",
                  object_id="0b000000-0000-4000-8000-0000000000b2")
BY_CLIENT_ID = {X.client_id: "id-x", Y.client_id: "id-y"}
MANAGED_FLAGS = ["--operation-mode=managed", "--forceNamespaced"]


def pod(name: str, ip: str, selector: str | None, **kwargs) -> dict:
    return make_pod(name, NS, ip, NODE, labels={"aadpodidbinding": selector} if selector else None, **kwargs)


def base_objects() -> list[dict]:
    return [make_identity("id-x", NS, client_id=X.client_id, resource_id=X.resource_id),
            make_identity("id-y", NS, client_id=Y.client_id, resource_id=Y.resource_id),
            make_binding("bind-x", NS, identity="id-x", selector="x"),
            make_binding("bind-y", NS, identity="id-y", selector="y")]
