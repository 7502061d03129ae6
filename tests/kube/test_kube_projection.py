"""Raw Kubernetes JSON → value types: the fields nmi relies on, and tolerance of malformed objects."""

from __future__ import annotations

import pytest

from fakes.apiserver import (
    make_assigned_identity,
    make_binding,
    make_exception,
    make_identity,
    make_pod,
)
from nmi.kube.projection import (
    UNSUPPORTED_TYPE,
    object_key,
    project_assigned_identity,
    project_binding,
    project_exception,
    project_identity,
    project_pod,
)
from nmi.model import SecretRef


def test_a_pod_projects_the_fields_token_brokering_needs():
    raw = make_pod("web-5d9", "team", ip="10.244.0.7", labels={"aadpodidbinding": "web"}, phase="Pending",
                   uid="u-1", replicaset="web-5d", host_network=True, service_account="web-sa")
    raw["metadata"]["resourceVersion"] = "42"
    pod = project_pod(raw)
    assert (pod.namespace, pod.name, pod.uid, pod.ip, pod.phase) == ("team", "web-5d9", "u-1", "10.244.0.7", "Pending")
    assert dict(pod.labels) == {"aadpodidbinding": "web"}
    assert (pod.replicaset, pod.host_network, pod.service_account) == ("web-5d", True, "web-sa")
    assert pod.resource_version == "42" and pod.live and not pod.deleting


def test_the_first_replicaset_owner_is_matched_case_insensitively():
    raw = make_pod("mic-1")
    raw["metadata"]["ownerReferences"] = [
        {"kind": "Job", "name": "j"}, {"kind": "replicaSet", "name": "mic-abc"}, {"kind": "ReplicaSet", "name": "x"}]
    assert project_pod(raw).replicaset == "mic-abc"


def test_a_pod_with_a_deletion_timestamp_is_deleting_and_not_live():
    pod = project_pod(make_pod("web", deleting=True))
    assert pod.deleting and not pod.live


def test_a_pod_without_ip_or_status_yet_is_kept_without_an_ip():
    raw = make_pod("web", ip="")
    del raw["status"]
    pod = project_pod(raw)
    assert (pod.ip, pod.phase, pod.service_account) == ("", "Pending", "default")


def test_an_identity_projects_every_spec_field_and_the_namespaced_annotation():
    raw = make_identity("sp", "team", type=1, client_id="cid", resource_id="/rid", tenant_id="tid",
                        auxiliary_tenant_ids=["t2", "t3"], ad_endpoint="https://login.example/", secret="sp-secret",
                        namespaced=True)
    raw["metadata"]["uid"] = "u-9"
    identity = project_identity(raw)
    assert (identity.namespace, identity.name, identity.type, identity.client_id) == ("team", "sp", 1, "cid")
    assert (identity.resource_id, identity.tenant_id, identity.auxiliary_tenant_ids) == ("/rid", "tid", ("t2", "t3"))
    assert identity.ad_endpoint == "https://login.example/" and identity.uid == "u-9"
    assert identity.client_password == SecretRef(namespace="team", name="sp-secret")
    assert identity.namespaced


@pytest.mark.parametrize(("value", "expected"), [(None, 0), (2, 2), ("1", 1), ("msi", UNSUPPORTED_TYPE), (True, UNSUPPORTED_TYPE)])
def test_an_identity_type_is_read_tolerantly(value, expected):
    raw = make_identity("id")
    if value is None:
        del raw["spec"]["type"]
    else:
        raw["spec"]["type"] = value
    assert project_identity(raw).type == expected


def test_a_secret_reference_without_namespace_defaults_to_the_identity_namespace():
    raw = make_identity("sp", "team", type=1, secret="s")
    del raw["spec"]["clientPassword"]["namespace"]
    assert project_identity(raw).client_password == SecretRef(namespace="team", name="s")


def test_only_the_exact_namespaced_annotation_value_counts():
    raw = make_identity("id")
    raw["metadata"]["annotations"] = {"aadpodidentity.k8s.io/Behavior": "Namespaced"}
    assert not project_identity(raw).namespaced


@pytest.mark.parametrize(("weight", "expected"), [(None, 0), (5, 5), ("7", 7), ("heavy", 0), (2.9, 2)])
def test_a_binding_weight_may_be_missing_or_a_string(weight, expected):
    binding = project_binding(make_binding("b", "team", identity="id", selector="sel", weight=weight))
    assert (binding.identity_name, binding.selector, binding.weight) == ("id", "sel", expected)


def test_an_assigned_identity_carries_its_embedded_identity_and_binding():
    identity = make_identity("id", "team", client_id="cid", namespaced=True)
    binding = make_binding("b", "team", identity="id", selector="sel", weight=4)
    raw = make_assigned_identity("web-id", "default", pod="web", pod_namespace="team", node="node-1",
                                 identity=identity, binding=binding, status="Created")
    assigned = project_assigned_identity(raw)
    assert (assigned.pod, assigned.pod_namespace, assigned.node, assigned.status) == ("web", "team", "node-1", "Created")
    assert assigned.identity.client_id == "cid" and assigned.identity.namespace == "team" and assigned.identity.namespaced
    assert (assigned.binding_name, assigned.binding_weight) == ("b", 4)


def test_an_assigned_identity_from_an_old_mic_has_no_status_and_maybe_no_ref():
    assigned = project_assigned_identity(make_assigned_identity("x", pod="web", identity=None, status=None))
    assert assigned.status == "" and assigned.identity is None and assigned.binding_name == ""


def test_an_exception_projects_its_pod_labels():
    exception = project_exception(make_exception("mic", "kube-system", pod_labels={"app": "mic"}))
    assert (exception.namespace, dict(exception.pod_labels)) == ("kube-system", {"app": "mic"})


@pytest.mark.parametrize("mangle", [
    lambda o: o.pop("metadata"),
    lambda o: o["metadata"].pop("name"),
    lambda o: o["metadata"].update(namespace=7),
    lambda o: o.update(spec="nope"),
    lambda o: o["metadata"].update(labels=["a"]),
    lambda o: o["metadata"].update(ownerReferences="rs"),
])
def test_a_malformed_pod_is_skipped_with_a_warning(mangle, caplog):
    raw = make_pod("web")
    mangle(raw)
    assert project_pod(raw) is None
    assert "skipping malformed Pod" in caplog.text


@pytest.mark.parametrize("projector", [project_identity, project_binding, project_assigned_identity, project_exception])
@pytest.mark.parametrize("raw", [None, "text", [], {"metadata": {"name": "x"}}, {"metadata": {"namespace": "n", "name": 3}}])
def test_malformed_crd_objects_are_skipped_never_raised(projector, raw):
    assert projector(raw) is None


def test_a_malformed_embedded_identity_skips_the_assigned_identity():
    raw = make_assigned_identity("x", pod="web", identity={"metadata": "broken"})
    assert project_assigned_identity(raw) is None


def test_non_string_label_values_are_dropped_not_fatal():
    raw = make_pod("web", labels={"a": "1"})
    raw["metadata"]["labels"]["b"] = 2
    assert dict(project_pod(raw).labels) == {"a": "1"}


def test_object_key_names_any_namespaced_object():
    assert object_key(make_binding("b", "team", identity="i", selector="s")) == ("team", "b")
    assert object_key({"metadata": {"name": "cluster-scoped"}}) is None
    assert object_key("garbage") is None


def test_a_binding_projects_its_active_windows_once_parsed():
    binding = project_binding(make_binding("b", "team", identity="id", selector="sel",
                                           active_windows="Mon-Fri 00:00-01:00 Europe/Berlin; Sat 10:00-12:00 UTC"))
    assert binding.windows_error == "" and [w.zone.key for w in binding.windows.windows] == ["Europe/Berlin", "UTC"]
    assert project_binding(make_binding("b", "team", identity="id", selector="sel")).windows is None


@pytest.mark.parametrize("annotation", ["Funday 00:00-01:00 UTC", "", "Mon 00:00-01:00 Nowhere/Atlantis", 42])
def test_a_malformed_active_windows_annotation_keeps_the_binding_with_the_reason(annotation):
    raw = make_binding("b", "team", identity="id", selector="sel")
    raw["metadata"]["annotations"] = {"aadpodidentity.k8s.io/active-windows": annotation}
    binding = project_binding(raw)
    assert binding is not None and binding.selector == "sel"
    assert binding.windows is None and binding.windows_error


def test_an_assigned_identity_keeps_mics_copy_of_the_binding_with_its_windows():
    identity = make_identity("id", "team", client_id="cid")
    binding = make_binding("b", "team", identity="id", selector="sel", active_windows="Sat 10:00-12:00 UTC")
    assigned = project_assigned_identity(make_assigned_identity("web-id", "default", pod="web", pod_namespace="team",
                                                                identity=identity, binding=binding))
    assert assigned.binding_namespace == "team" and assigned.binding.name == "b"
    assert assigned.binding.windows.windows[0].start == 600
