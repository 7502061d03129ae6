"""Standard mode (MIC assigns identities), black-box against the real nmi process: the objects are those MIC
would create. Budget: created 2 x 1 s, assigned 1 x 1 s."""

import threading
import time

import pytest

from fakes.background import BackgroundFakes
from fakes.kubeobjects import (make_assigned_identity, make_binding, make_deployment, make_exception,
                                   make_identity, make_pod, make_replicaset)

from tests.e2e.conftest import A, B, C, NODE_IDENTITY
from tests.e2e.harness import NmiProcess

NODE = "std-node"
NS = "std"
ID_A = make_identity("id-a", NS, client_id=A.client_id, resource_id=A.resource_id)
ID_B = make_identity("id-b", NS, client_id=B.client_id, resource_id=B.resource_id)
ID_OTHER_NS = make_identity("id-c", "elsewhere", client_id=C.client_id, resource_id=C.resource_id, namespaced=True)
BIND_A = make_binding("bind-a", NS, identity="id-a", selector="a")
BIND_B = make_binding("bind-b", NS, identity="id-b", selector="b")
BIND_C = make_binding("bind-c", "elsewhere", identity="id-c", selector="a")


def assigned(pod: str, identity: dict, binding: dict, status: str | None, *, ns: str = NS) -> dict:
    return make_assigned_identity(f"{pod}-{identity['metadata']['name']}", ns, pod=pod, pod_namespace=ns, node=NODE,
                                  identity=identity, binding=binding, status=status)


@pytest.fixture(scope="module")
def std(tmp_path_factory):
    fakes = BackgroundFakes([A, B, C, NODE_IDENTITY])
    fakes.start()
    for obj in (ID_A, ID_B, ID_OTHER_NS, BIND_A, BIND_B, BIND_C,
                make_pod("ready", NS, "127.0.0.30", NODE, labels={"aadpodidbinding": "a"}),
                assigned("ready", ID_A, BIND_A, "Assigned"),
                make_pod("legacy", NS, "127.0.0.31", NODE, labels={"aadpodidbinding": "a"}),
                assigned("legacy", ID_A, BIND_A, None),
                make_pod("nobinding", NS, "127.0.0.32", NODE, labels={"aadpodidbinding": "zzz"}),
                make_pod("sys", NS, "127.0.0.33", NODE, labels={"kind": "system"}),
                make_exception("sys", NS, pod_labels={"kind": "system"}),
                # The real MIC: Deployment mic -> ReplicaSet mic-7d9f5c -> pod, linked by UID.
                make_deployment("mic", "default", uid="uid-deploy-mic"),
                make_replicaset("mic-7d9f5c", "default", uid="uid-rs-mic", deployment="mic",
                                deployment_uid="uid-deploy-mic"),
                make_pod("mic-7d9f5c-abcde", "default", "127.0.0.34", NODE, replicaset="mic-7d9f5c",
                         replicaset_uid="uid-rs-mic", labels={"pod-template-hash": "7d9f5c"}),
                make_pod("mickey-7d9f5c-abcde", "default", "127.0.0.35", NODE, replicaset="mickey-7d9f5c",
                         labels={"pod-template-hash": "7d9f5c"}),
                # Forgeries, all in --MICNamespace, each by someone who may create pods / ReplicaSets there.
                make_pod("bare-mic-5f5f5f-aaaaa", "default", "127.0.0.40", NODE, replicaset="mic-5f5f5f",
                         replicaset_uid="uid-made-up", labels={"pod-template-hash": "5f5f5f"}),
                make_deployment("mickey", "default", uid="uid-deploy-mickey"),
                make_replicaset("mic-6e6e6e", "default", uid="uid-rs-of-mickey", deployment="mickey",
                                deployment_uid="uid-deploy-mickey"),
                make_pod("mic-6e6e6e-bbbbb", "default", "127.0.0.41", NODE, replicaset="mic-6e6e6e",
                         replicaset_uid="uid-rs-of-mickey", labels={"pod-template-hash": "6e6e6e"}),
                make_replicaset("mic-4d4d4d", "default", uid="uid-rs-orphan"),
                make_pod("mic-4d4d4d-ccccc", "default", "127.0.0.42", NODE, replicaset="mic-4d4d4d",
                         replicaset_uid="uid-rs-orphan", labels={"pod-template-hash": "4d4d4d"}),
                make_pod("mic-7d9f5c-ddddd", "default", "127.0.0.43", NODE, replicaset="mic-7d9f5c",
                         replicaset_uid="uid-forged", labels={"pod-template-hash": "7d9f5c"}),
                make_replicaset("mic-3c3c3c", "default", uid="uid-rs-mic-forged", deployment="mic",
                                deployment_uid="uid-forged-deployment"),
                make_pod("mic-3c3c3c-eeeee", "default", "127.0.0.44", NODE, replicaset="mic-3c3c3c",
                         replicaset_uid="uid-rs-mic-forged", labels={"pod-template-hash": "3c3c3c"})):
        fakes.put(obj)
    nmi = NmiProcess(tmp_path_factory.mktemp("std"), fakes, node=NODE, extra=[
        "--retry-attempts-for-created=2", "--retry-attempts-for-assigned=1", "--find-identity-retry-interval=1"])
    nmi.start()
    yield fakes, nmi
    try:
        assert nmi.stop() == 0
    finally:
        fakes.stop()


def test_assigned_identity_is_served_at_once(std):
    fakes, nmi = std
    answer = nmi.token(source="127.0.0.30")
    assert answer.status == 200 and answer.json["client_id"] == A.client_id


def test_assignment_without_status_from_old_mic_counts_as_assigned(std):
    fakes, nmi = std
    assert nmi.token(source="127.0.0.31").json["client_id"] == A.client_id


def test_client_id_in_another_case_is_served_not_404(std):
    fakes, nmi = std
    answer = nmi.token(source="127.0.0.30", client_id=A.client_id.upper())
    assert answer.status == 200 and answer.json["client_id"] == A.client_id  # upstream: 404 after a full wait


def test_request_is_answered_as_soon_as_mic_assigns_the_identity(std, tmp_path):
    """With a 30 s retry interval a poller would answer 30 s after the request at the earliest; nmi answers when
    the watch delivers the Assigned state (the test allows 20 s, an order of magnitude above what it needs)."""
    fakes, _ = std
    slow_poll = NmiProcess(tmp_path, fakes, node=NODE, extra=[
        "--retry-attempts-for-created=2", "--retry-attempts-for-assigned=1", "--find-identity-retry-interval=30"])
    slow_poll.start()
    try:
        fakes.put(make_pod("waiting", NS, "127.0.0.36", NODE, labels={"aadpodidbinding": "b"}))
        fakes.put(assigned("waiting", ID_B, BIND_B, "Created"))
        result = {}
        caller = threading.Thread(target=lambda: result.update(answer=slow_poll.token(source="127.0.0.36")))
        caller.start()
        time.sleep(0.8)
        assert "answer" not in result  # still waiting: the identity is only Created
        fakes.put(assigned("waiting", ID_B, BIND_B, "Assigned"))
        caller.join(20)
        assert result["answer"].status == 200 and result["answer"].json["client_id"] == B.client_id
    finally:
        assert slow_poll.stop() == 0


def test_identity_never_created_gives_404_after_the_created_budget(std):
    fakes, nmi = std
    fakes.put(make_pod("never", NS, "127.0.0.37", NODE, labels={"aadpodidbinding": "b"}))
    started = time.monotonic()
    answer = nmi.token(source="127.0.0.37")
    assert answer.status == 404 and answer.json["error"] == "identity_not_assigned"
    assert "CREATED" in answer.json["error_description"]
    assert time.monotonic() - started >= 1.9  # it did wait the created budget (2 x 1 s) first


def test_identity_created_but_never_assigned_gives_404_after_the_total_budget(std):
    fakes, nmi = std
    fakes.put(make_pod("stuck", NS, "127.0.0.38", NODE, labels={"aadpodidbinding": "b"}))
    fakes.put(assigned("stuck", ID_B, BIND_B, "Created"))
    started = time.monotonic()
    answer = nmi.token(source="127.0.0.38")
    assert answer.status == 404 and "ASSIGNED" in answer.json["error_description"]
    assert time.monotonic() - started >= 2.9  # the whole budget (3 x 1 s)


def test_pod_matching_no_binding_fails_fast(std):
    fakes, nmi = std
    answer = nmi.token(source="127.0.0.32")
    # 400 Identity not found is the fast path; a wait would have ended in 404 identity_not_assigned
    assert answer.status == 400 and answer.json["error_description"] == "Identity not found"


def test_requested_identity_no_binding_gives_fails_fast(std):
    fakes, nmi = std
    answer = nmi.token(source="127.0.0.30", client_id=B.client_id)
    assert answer.status == 400 and answer.json["error_description"] == "Identity not found"


def test_namespaced_identity_of_another_namespace_is_never_used(std):
    fakes, nmi = std
    fakes.put(assigned("ready", ID_OTHER_NS, BIND_C, "Assigned"))
    answer = nmi.token(source="127.0.0.30", client_id=C.client_id)
    assert answer.status != 200


def test_exception_pod_and_the_mic_deployment_get_node_identities(std):
    fakes, nmi = std
    assert nmi.token(source="127.0.0.33").json["client_id"] == NODE_IDENTITY.client_id
    assert nmi.token(source="127.0.0.33", msi_res_id=B.resource_id).json["client_id"] == B.client_id
    assert nmi.token(source="127.0.0.34").json["client_id"] == NODE_IDENTITY.client_id
    mickey = nmi.token(source="127.0.0.35")
    assert mickey.status == 400  # a Deployment merely named mic-something is not MIC


@pytest.mark.parametrize("source, forgery", [
    ("127.0.0.40", "bare pod: owner reference to a ReplicaSet mic-<hash> that does not exist, pod-template-hash label"),
    ("127.0.0.41", "ReplicaSet mic-6e6e6e owned by Deployment mickey"),
    ("127.0.0.42", "ReplicaSet mic-4d4d4d owned by no Deployment"),
    ("127.0.0.43", "the real ReplicaSet's name with a forged UID"),
    ("127.0.0.44", "ReplicaSet naming Deployment mic with a UID that is not the real one's"),
])
def test_attack_forged_mic_owner_chain_gets_no_node_identity(std, source, forgery):
    fakes, nmi = std
    answer = nmi.token(source=source)
    assert answer.status == 400, (forgery, answer.body)
    assert answer.json["error_description"] == "Identity not found"


def test_mic_check_watches_replicasets_and_deployment_mic_of_the_mic_namespace_only(std):
    fakes, nmi = std
    for resource, query in (("replicasets", {}), ("deployments", {"fieldSelector": "metadata.name=mic"})):
        requests = fakes.call(lambda: fakes.api.requests_for(resource))
        assert requests and all(r.path.startswith(f"/apis/apps/v1/namespaces/default/{resource}") for r in requests)
        assert all(r.query.get("fieldSelector") == query.get("fieldSelector") for r in requests)


def test_host_token_in_standard_mode(std):
    fakes, nmi = std
    answer = nmi.get("/host/token?resource=https%3A%2F%2Fvault.azure.net", headers={"podns": NS, "podname": "ready"})
    assert answer.status == 200 and answer.json["clientid"] == A.client_id
