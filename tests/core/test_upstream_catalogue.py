"""aad-pod-identity's own unit tests (reference/upstream-nmi.md §9.1, items 22-47), replayed against nmi.
Where SPEC deliberately differs, the test says so. Standard-mode waits use a 0.05 s budget instead of C=2/A=1/I=1."""

import pytest

from iptables.node import check_kubenet
from nmi.broker import MANAGED, STANDARD, BrokerPolicy, TokenBroker
from nmi.errors import IdentityNotAssigned, IdentityNotFound
from nmi.identities.rules import is_excepted
from nmi.kube.projection import project_pod
from nmi.logs import redact_client_id
from nmi.model import PodIdentityException, TokenRequest

from tests.core.doubles import Catalog, Pods, Tokens, assignment, binding, identity, pod

POD = pod("pod1", "10.0.0.1", label="sel")


def standard(*assignments, namespaced=False, p=POD, bindings=None):
    catalog = Catalog(bound=bindings if bindings is not None else [binding("b", "azid1", "sel")],
                      ids=[identity("azid1", "clientid1")], assignments=list(assignments))
    policy = BrokerPolicy(mode=STANDARD, namespaced=namespaced, wait_for_created=0.05, wait_total=0.08)
    return TokenBroker(Pods(p), catalog, Tokens(), policy=policy)


def ident(name, client_id, resource_id="", ns="default"):
    i = identity(name, client_id, ns=ns)
    return type(i)(namespace=i.namespace, name=i.name, client_id=client_id, resource_id=resource_id)


async def test_22_nothing_assigned_nothing_requested_is_an_error_after_the_wait():
    with pytest.raises(IdentityNotAssigned):  # SPEC: 404 after the budget (the pod has a binding, so MIC may act)
        await standard().for_caller("10.0.0.1", TokenRequest("r"))


async def test_23_assignments_without_state_are_used_first_one_deterministically():
    a1, a2 = ident("azid1", "clientid1"), ident("azid2", "clientid2")
    out = await standard(assignment(POD, a2, ""), assignment(POD, a1, "")).for_caller("10.0.0.1", TokenRequest("r"))
    assert out.identity.name == "azid1"


async def test_24_only_created_is_an_error_after_the_wait():
    created = [assignment(POD, ident(n, c), "Created") for n, c in (("azid3", "clientid3"), ("azid4", "clientid4"))]
    with pytest.raises(IdentityNotAssigned):
        await standard(*created).for_caller("10.0.0.1", TokenRequest("r"))


async def test_25_assigned_identities_first_one_is_used():
    out = await standard(assignment(POD, ident("azid5", "clientid5"), "Assigned"),
                         assignment(POD, ident("azid6", "clientid6"), "Assigned")).for_caller("10.0.0.1", TokenRequest("r"))
    assert out.identity.name == "azid5"


async def test_26_resource_id_is_not_used_to_match_a_client_id():
    broker = standard(assignment(POD, ident("azid1", "clientid1"), "Created"),
                      assignment(POD, ident("azid2", "clientid2", resource_id="clientid1"), "Assigned"))
    with pytest.raises(IdentityNotAssigned):
        await broker.for_caller("10.0.0.1", TokenRequest("r", client_id="clientid1"))


async def test_27_client_id_is_not_used_to_match_a_resource_id():
    broker = standard(assignment(POD, ident("azid1", "x", resource_id="resourceid1"), "Created"),
                      assignment(POD, ident("azid2", "resourceid1", resource_id="resourceid2"), "Assigned"))
    with pytest.raises(IdentityNotAssigned):
        await broker.for_caller("10.0.0.1", TokenRequest("r", resource_id="resourceid1"))


async def test_28_29_requested_identity_among_assigned_is_used():
    broker = standard(assignment(POD, ident("azid1", "clientid1", resource_id="resourceid1"), "Created"),
                      assignment(POD, ident("azid2", "clientid2", resource_id="resourceid2"), "Assigned"))
    assert (await broker.for_caller("10.0.0.1", TokenRequest("r", client_id="clientid2"))).identity.name == "azid2"
    assert (await broker.for_caller("10.0.0.1", TokenRequest("r", resource_id="resourceid2"))).identity.name == "azid2"


async def test_30_namespaced_mode_uses_only_the_pods_namespace():
    p8 = pod("pod8", "10.0.0.8", ns="testns", label="sel")
    broker = standard(assignment(p8, ident("azid2", "c2"), "Assigned"), assignment(p8, ident("azid1", "c1"), "Assigned"),
                      assignment(p8, ident("azid3", "c3", ns="testns"), "Assigned"), namespaced=True, p=p8,
                      bindings=[binding("b", "azid3", "sel", ns="testns")])
    assert (await broker.for_caller("10.0.0.8", TokenRequest("r"))).identity.name == "azid3"


def managed(*identities):
    catalog = Catalog(bound=[binding(f"b-{i.name}", i.name, "sel") for i in identities], ids=list(identities))
    return TokenBroker(Pods(POD), catalog, Tokens(), policy=BrokerPolicy(mode=MANAGED, namespaced=True))


async def test_33_managed_without_identities_is_identity_not_found():
    with pytest.raises(IdentityNotFound):  # SPEC fix: 400 at once (upstream 404)
        await managed().for_caller("10.0.0.1", TokenRequest("r"))


async def test_34_35_managed_selector_must_match_the_right_field():
    with pytest.raises(IdentityNotFound):
        await managed(ident("azid2", "clientid2", resource_id="clientid1")).for_caller(
            "10.0.0.1", TokenRequest("r", client_id="clientid1"))
    with pytest.raises(IdentityNotFound):
        await managed(ident("azid2", "clientid1", resource_id="resourceid2")).for_caller(
            "10.0.0.1", TokenRequest("r", client_id="resourceid1"))


async def test_36_37_38_managed_selection():
    broker = managed(ident("azid3", "clientid3", resource_id="resourceid3"))
    assert (await broker.for_caller("10.0.0.1", TokenRequest("r", client_id="clientid3"))).identity.name == "azid3"
    assert (await broker.for_caller("10.0.0.1", TokenRequest("r", resource_id="resourceid3"))).identity.name == "azid3"
    both = managed(ident("azid3", "c3"), ident("azid2", "c2"))
    assert (await both.for_caller("10.0.0.1", TokenRequest("r"))).identity.name == "azid2"  # deterministic: by name


def test_39_40_41_exceptions():
    p = pod("p", "1.1.1.1", labels={"foo": "except"})
    assert not is_excepted(pod("p", "1.1.1.1", labels={"foo": "bar"}), [])
    assert not is_excepted(p, [PodIdentityException("default", "e", {"foo": "notexcept"})])
    assert is_excepted(p, [PodIdentityException("default", "e1", {"foo": "notexcept"}),
                           PodIdentityException("default", "e2", {"foo": "except"})])


def test_42_redact_client_id():
    assert redact_client_id("aabc0000-a83v-9h4m-000j-2c0a66b0c1f9") == "aabc##### REDACTED #####c1f9"


def test_43_kubenet_detection(tmp_path):
    cni, kubenet = tmp_path / "cni", tmp_path / "kubenet"
    cni.write_text("KUBELET_FLAGS=--network-plugin=cni")
    kubenet.write_text("KUBELET_FLAGS=--network-plugin=kubenet")
    assert check_kubenet(cni, allow=False) is None
    assert check_kubenet(kubenet, allow=False) is not None
    assert check_kubenet(kubenet, allow=True) is None


def test_47_replicaset_name_from_owner_references():
    raw = {"metadata": {"name": "p", "namespace": "n", "uid": "u", "ownerReferences": [
        {"kind": "Kind0", "name": "test0"}, {"kind": "ReplicaSet", "name": "test1"}, {"kind": "Kind2", "name": "test2"}]},
        "spec": {"nodeName": "n1"}, "status": {"phase": "Running", "podIP": "1.2.3.4"}}
    assert project_pod(raw).replicaset == "test1"
