from nmi.identities import rules
from nmi.model import PodIdentityException, TokenRequest, Workload

from tests.core.doubles import assignment, binding, identity, pod


def test_managed_resolution_is_deterministic_by_weight_then_name():
    p = pod("app", "10.0.0.5", label="sel")
    ids = [identity("zeta", "c-z"), identity("alpha", "c-a"), identity("mid", "c-m")]
    bindings = [binding("b1", "zeta", "sel", weight=5), binding("b2", "alpha", "sel"), binding("b3", "mid", "sel")]
    for _ in range(3):
        assert [i.name for i in rules.managed_identities(p, bindings, ids)] == ["zeta", "alpha", "mid"]
        assert [i.name for i in rules.managed_identities(p, list(reversed(bindings)), list(reversed(ids)))] == [
            "zeta", "alpha", "mid"]


def test_managed_resolution_ignores_other_namespaces_and_selectors():
    p = pod("app", "10.0.0.5", label="sel")
    ids = [identity("a", "c1", ns="other"), identity("b", "c2")]
    bindings = [binding("b1", "a", "sel", ns="other"), binding("b2", "b", "different")]
    assert rules.managed_identities(p, bindings, ids) == []


def test_pod_without_label_matches_no_binding_even_with_empty_selector():
    p = pod("app", "10.0.0.5")
    assert rules.managed_identities(p, [binding("b", "a", "")], [identity("a", "c")]) == []


def test_selection_by_client_id_and_resource_id_is_case_insensitive():
    ids = [identity("a", "AAAA-1111"), identity("b", "bbbb-2222")]
    assert rules.select(ids, TokenRequest("r", client_id="aaaa-1111")) == [ids[0]]
    assert rules.select(ids, TokenRequest("r", resource_id=ids[1].resource_id.upper())) == [ids[1]]
    assert rules.select(ids, TokenRequest("r", client_id="nope")) == []
    assert rules.select(ids, TokenRequest("r")) == ids


def test_exception_matches_label_value_case_insensitively_in_same_namespace():
    p = pod("app", "1.1.1.1", labels={"app": "Mic"})
    assert rules.is_excepted(p, [PodIdentityException("default", "e", {"app": "mic"})])
    assert not rules.is_excepted(p, [PodIdentityException("other", "e", {"app": "mic"})])
    assert not rules.is_excepted(p, [PodIdentityException("default", "e", {"App": "mic"})])
    assert not rules.is_excepted(p, [PodIdentityException("default", "e", {})])


MIC_RS = Workload("default", "mic-5d9", "uid-rs", "Deployment", "mic", "uid-deploy")
MIC_DEPLOY = Workload("default", "mic", "uid-deploy")


def mic_pod(**kw):
    options = dict(replicaset="mic-5d9", replicaset_uid="uid-rs", labels={"pod-template-hash": "5d9"})
    options.update(kw)
    return pod("mic-5d9-x", "1.1.1.1", **options)


def test_mic_shortcut_for_the_pod_of_deployment_mic_by_uid_through_its_replicaset():
    assert rules.is_mic_pod(mic_pod(), mic_namespace="Default", replicaset=MIC_RS, deployment=MIC_DEPLOY)
    assert rules.is_mic_pod(mic_pod(labels={}), mic_namespace="default", replicaset=MIC_RS, deployment=MIC_DEPLOY)


def test_attack_forged_mic_owner_chains_get_no_node_identity():
    forged = {
        "bare pod naming a ReplicaSet nobody created": (mic_pod(), None, MIC_DEPLOY),
        "forged ReplicaSet UID": (mic_pod(replicaset_uid="uid-forged"), MIC_RS, MIC_DEPLOY),
        "owner reference without UID": (mic_pod(replicaset_uid=""), MIC_RS, MIC_DEPLOY),
        "ReplicaSet of Deployment mickey": (mic_pod(), Workload("default", "mic-5d9", "uid-rs", "Deployment", "mickey",
                                                                "uid-deploy"), MIC_DEPLOY),
        "ReplicaSet of no Deployment": (mic_pod(), Workload("default", "mic-5d9", "uid-rs"), MIC_DEPLOY),
        "ReplicaSet owned by something else named mic": (
            mic_pod(), Workload("default", "mic-5d9", "uid-rs", "StatefulSet", "mic", "uid-deploy"), MIC_DEPLOY),
        "Deployment mic was replaced (UID differs)": (mic_pod(), MIC_RS, Workload("default", "mic", "uid-new")),
        "no Deployment mic": (mic_pod(), MIC_RS, None),
        "the chain in another namespace": (mic_pod(ns="team"), Workload("team", "mic-5d9", "uid-rs", "Deployment",
                                                                         "mic", "uid-deploy"),
                                           Workload("team", "mic", "uid-deploy")),
        "ReplicaSet of another name": (mic_pod(replicaset="mic-other"), MIC_RS, MIC_DEPLOY),
    }
    for what, (p, rs, deploy) in forged.items():
        assert not rules.is_mic_pod(p, mic_namespace="default", replicaset=rs, deployment=deploy), what


def test_standard_assignment_buckets_and_namespaced_filter():
    p = pod("app", "1.1.1.1", label="sel")
    a, b, c = identity("a", "ca"), identity("b", "cb", ns="other"), identity("c", "cc", namespaced=True, ns="x")
    state = rules.standard_assignment(p, [assignment(p, a, "Assigned"), assignment(p, b, "Created"),
                                          assignment(p, c, "Assigned")], namespaced=False)
    assert state.assigned == (a,) and state.created == (b,)
    state = rules.standard_assignment(p, [assignment(p, b, "Assigned")], namespaced=True)
    assert state.assigned == ()


def test_legacy_assignments_without_status_count_as_assigned_and_unassigned_never():
    p = pod("app", "1.1.1.1")
    a, b = identity("a", "ca"), identity("b", "cb")
    state = rules.standard_assignment(p, [assignment(p, a, ""), assignment(p, b, "Unassigned")], namespaced=False)
    assert state.assigned == (a,) and state.created == ()
