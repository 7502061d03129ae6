"""RBAC grants nmi exactly what it reads in each mode: read-only, no wildcards; Secrets only with the
service-principal-secrets component, Events only with the audit-events component, which also turns
the audit on, and ServiceAccounts and their tokens only with the workload-identity component, which also turns
the bridge on."""

from __future__ import annotations

from pathlib import Path

from .conftest import OVERLAYS, find_one, render_kustomization, render_overlay, write_overlay_with_components
from .crd_schema import Manifest

GROUP = "aadpodidentity.k8s.io"
COMMON_GRANTS = {("", "pods", "list"), ("", "pods", "watch"),
                 (GROUP, "azurepodidentityexceptions", "list"), (GROUP, "azurepodidentityexceptions", "watch")}
MODE_GRANTS = {
    "managed": {(GROUP, "azureidentities", "list"), (GROUP, "azureidentities", "watch"),
                (GROUP, "azureidentitybindings", "list"), (GROUP, "azureidentitybindings", "watch")},
    "standard": {(GROUP, "azureassignedidentities", "list"), (GROUP, "azureassignedidentities", "watch"),
                 # bindings and identities too: a pod no binding matches fails fast instead of waiting for MIC
                 (GROUP, "azureidentities", "list"), (GROUP, "azureidentities", "watch"),
                 (GROUP, "azureidentitybindings", "list"), (GROUP, "azureidentitybindings", "watch")},
}


def _grants(objects: list[Manifest]) -> set[tuple[str, str, str]]:
    """(apiGroup, resource, verb) granted to nmi's ServiceAccount through ClusterRoleBindings."""
    roles = {obj["metadata"]["name"]: obj for obj in objects if obj["kind"] == "ClusterRole"}
    grants = set()
    for binding in (obj for obj in objects if obj["kind"] == "ClusterRoleBinding"):
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "nmi", "namespace": "kube-system"}]
        assert binding["roleRef"]["kind"] == "ClusterRole"
        for rule in roles[binding["roleRef"]["name"]]["rules"]:
            assert "resourceNames" not in rule and "nonResourceURLs" not in rule
            grants |= {(g, r, v) for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    return grants


def test_each_mode_grants_only_the_reads_that_mode_makes(mode):
    assert _grants(render_overlay(mode)) == COMMON_GRANTS | MODE_GRANTS[mode]


def _namespaced_grants(objects: list[Manifest]) -> set[tuple[str, str, str, str, tuple[str, ...]]]:
    """(namespace, apiGroup, resource, verb, resourceNames) granted to nmi's ServiceAccount through RoleBindings."""
    roles = {(obj["metadata"]["namespace"], obj["metadata"]["name"]): obj for obj in objects if obj["kind"] == "Role"}
    grants = set()
    for binding in (obj for obj in objects if obj["kind"] == "RoleBinding"):
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "nmi", "namespace": "kube-system"}]
        assert binding["roleRef"]["kind"] == "Role"
        namespace = binding["metadata"]["namespace"]
        for rule in roles[(namespace, binding["roleRef"]["name"])]["rules"]:
            names = tuple(rule.get("resourceNames", ()))
            grants |= {(namespace, g, r, v, names) for g in rule["apiGroups"] for r in rule["resources"]
                       for v in rule["verbs"]}
    return grants


def test_standard_mode_watches_replicasets_and_the_deployment_mic_in_mics_namespace_only(mode):
    """The MIC owner chain: no get, nothing cluster-wide, Deployments by the one name nmi watches."""
    expected = {("default", "apps", "replicasets", "list", ()), ("default", "apps", "replicasets", "watch", ()),
                ("default", "apps", "deployments", "list", ("mic",)),
                ("default", "apps", "deployments", "watch", ("mic",))}
    assert _namespaced_grants(render_overlay(mode)) == (expected if mode == "standard" else set())


def test_secrets_are_readable_by_name_only_with_the_component(mode, tmp_path: Path):
    without = _grants(render_overlay(mode))
    directory = write_overlay_with_components(mode, tmp_path, ("service-principal-secrets",))
    with_component = _grants(render_kustomization(directory))
    assert not any(resource == "secrets" for _, resource, _ in without)
    assert with_component - without == {("", "secrets", "get")}


def _args(objects: list[Manifest]) -> list[str]:
    return find_one(objects, "DaemonSet", "nmi")["spec"]["template"]["spec"]["containers"][0]["args"]


def test_events_are_granted_exactly_when_the_audit_is_on(mode, tmp_path: Path):
    without = render_overlay(mode)
    with_audit = render_kustomization(write_overlay_with_components(mode, tmp_path, ("audit-events",)))
    assert not any(resource == "events" for _, resource, _ in _grants(without))
    assert "--audit-events=false" in _args(without)
    assert _grants(with_audit) - _grants(without) == {("", "events", "create")}
    assert "--audit-events=true" in _args(with_audit)
    assert not any(arg.startswith("--audit-events=false") for arg in _args(with_audit))


def test_service_account_tokens_are_granted_exactly_when_the_bridge_is_on(mode, tmp_path: Path):
    without = render_overlay(mode)
    with_bridge = render_kustomization(write_overlay_with_components(mode, tmp_path, ("workload-identity",)))
    assert not any(resource.startswith("serviceaccounts") for _, resource, _ in _grants(without))
    assert not any(arg.startswith("--workload-identity") for arg in _args(without))
    assert _grants(with_bridge) - _grants(without) == {("", "serviceaccounts", "list"), ("", "serviceaccounts", "watch"),
                                                       ("", "serviceaccounts/token", "create")}
    assert _args(with_bridge) == _args(without) + ["--workload-identity=true"]


def test_bindings_name_the_daemonsets_service_account():
    for mode in OVERLAYS:
        objects = render_overlay(mode)
        account = find_one(objects, "ServiceAccount", "nmi")
        daemonset = find_one(objects, "DaemonSet", "nmi")
        assert daemonset["spec"]["template"]["spec"]["serviceAccountName"] == account["metadata"]["name"]
        assert daemonset["metadata"]["namespace"] == account["metadata"]["namespace"] == "kube-system"
