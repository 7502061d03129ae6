"""Every object the kustomizations render is valid against the Kubernetes schemas (strict: unknown
fields are errors), and every custom resource against its CRD. Offline: kubernetes-validate bundles the
schemas."""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from .conftest import (
    COMPONENT_OBJECTS, COMPONENTS, DAEMONSET_DIR, OVERLAYS, render_kustomization, render_kustomizations,
    render_overlay, write_overlay_with_components,
)
from .crd_schema import Manifest, custom_resource_errors

# The oldest and the newest minor the bundled schemas know that a current cluster may run.
KUBERNETES_VERSIONS = ("1.29.0", "1.37.0")
CUSTOM_GROUP = "aadpodidentity.k8s.io"
# Custom resources of other projects that components create, validated against these CRDs (vendored).
FOREIGN_CRDS = (Path(__file__).parent / "schemas" / "monitoring.coreos.com_podmonitors.yaml",)
# Kinds that exist (as rendered, admissionregistration.k8s.io/v1) only from a later minor: validated there. The
# workload-identity component says it needs Kubernetes >= 1.30.
INTRODUCED_IN = {"ValidatingAdmissionPolicy": "1.30.0", "ValidatingAdmissionPolicyBinding": "1.30.0"}

# sha256 of the canonical JSON (sorted keys, no spaces) of each openAPIV3Schema in aad-pod-identity
# v1.8.17 (charts/aad-pod-identity/crds/crd.yaml, identical to config/crd/aadpodidentity.k8s.io.yaml).
UPSTREAM_SCHEMA_SHA256 = {
    "AzureAssignedIdentity": "61dc08c78d8834f15fe59c49b92f72fdabcd7e9da37ee26e241dac9fb79c78ca",
    "AzureIdentity": "85986e485d50fe108252a475ef9e1ea8892692b8c3f3d4f241d43ca082ca0c56",
    "AzureIdentityBinding": "ab552e99ca8141c85de636eab9790d117dda6dff65102f04a625e71ca0fa1c1d",
    "AzurePodIdentityException": "cb079e3a8ceba8ea81fab7c5ffdad35f53c630f6b164d95917851b1480732003",
}


def _crds() -> list[Manifest]:
    return render_kustomization(DAEMONSET_DIR / "crds")


def _known_crds() -> list[Manifest]:
    return _crds() + [crd for path in FOREIGN_CRDS for crd in yaml.safe_load_all(path.read_text()) if crd]


def _component_subsets() -> list[tuple[str, ...]]:
    return [subset for size in range(len(COMPONENTS) + 1) for subset in itertools.combinations(COMPONENTS, size)]


def _renderings(scratch: Path) -> dict[str, list[Manifest]]:
    """Every overlay with every combination of components, as a user's kustomization (in `scratch`) rendered by
    the real kustomize."""
    directories = {"crds": DAEMONSET_DIR / "crds", "examples": DAEMONSET_DIR / "examples"}
    for mode in OVERLAYS:
        directories[f"overlays/{mode}"] = DAEMONSET_DIR / "overlays" / mode
        for number, subset in enumerate(_component_subsets()[1:]):
            directory = scratch / f"{mode}-{number}"
            directory.mkdir()
            directories["+".join((f"overlays/{mode}",) + subset)] = write_overlay_with_components(
                mode, directory, subset)
    return dict(zip(directories, render_kustomizations(directories.values())))


@pytest.fixture(scope="module")
def renderings(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Manifest]]:
    return _renderings(tmp_path_factory.mktemp("renderings"))


def _schema_errors(obj: Manifest, version: str, crds: list[Manifest]) -> list[str]:
    group = obj["apiVersion"].rpartition("/")[0]
    if any(crd["spec"]["group"] == group for crd in crds):
        return custom_resource_errors(obj, crds)
    introduced = INTRODUCED_IN.get(obj["kind"], version)
    version = max(version, introduced, key=lambda v: tuple(map(int, v.split("."))))
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as error:
        return [f"{'/'.join(map(str, error.path))}: {error.message}"]
    return []


def strict_errors(objects: list[Manifest], version: str) -> dict[str, list[str]]:
    """Schema errors per object; each distinct object is validated once (most combinations share them)."""
    return {f"{obj['kind']}/{obj['metadata']['name']}": list(errors) for obj in objects
            if (errors := _validated(json.dumps(obj, sort_keys=True), version))}


@functools.lru_cache(maxsize=None)
def _validated(canonical: str, version: str) -> tuple[str, ...]:
    return tuple(_schema_errors(json.loads(canonical), version, _known_crds_once()))


@functools.lru_cache(maxsize=1)
def _known_crds_once() -> list[Manifest]:
    return _known_crds()


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_rendered_object_is_valid_in_strict_mode(renderings, version):
    failures = {f"{name}: {key}": errors for name, objects in renderings.items()
                for key, errors in strict_errors(objects, version).items()}
    assert failures == {}


def test_renderings_contain_the_objects_they_promise(renderings):
    assert len(renderings) == 2 + len(OVERLAYS) * 2 ** len(COMPONENTS)
    for mode in OVERLAYS:
        kinds = sorted(obj["kind"] for obj in renderings[f"overlays/{mode}"])
        mic_owners = ["Role", "RoleBinding"] if mode == "standard" else []  # the MIC owner chain, MIC's namespace
        assert kinds == sorted(["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "DaemonSet"] + mic_owners)
        for subset in _component_subsets():
            rendering = renderings["+".join((f"overlays/{mode}",) + subset)]
            assert len(rendering) == len(kinds) + sum(COMPONENT_OBJECTS[name] for name in subset)
    assert sorted(obj["kind"] for obj in renderings["crds"]) == ["CustomResourceDefinition"] * 4
    example_kinds = sorted(obj["kind"] for obj in renderings["examples"])
    assert example_kinds == ["AzureIdentity", "AzureIdentity", "AzureIdentityBinding", "Pod", "Secret"]


def test_no_nmi_kustomization_carries_the_crds(renderings):
    # `kubectl delete -k` of nmi must never delete a CRD: that would delete every AzureIdentity, binding and
    # assigned identity in the cluster, MIC's included.
    carrying = [name for name, objects in renderings.items() if name != "crds"
                and any(obj["kind"] == "CustomResourceDefinition" for obj in objects)]
    assert carrying == []


def test_exceptions_are_the_ones_upstream_shipped(renderings):
    objects = renderings["overlays/standard+exceptions/aks-addons+exceptions/mic"]
    exceptions = {(obj["metadata"]["namespace"], obj["metadata"]["name"]): obj["spec"]
                  for obj in objects if obj["kind"] == "AzurePodIdentityException"}
    # aad-pod-identity v1.8.17 deploy/infra/mic-exception.yaml (and the chart's aks-addon-exception)
    assert exceptions == {
        ("default", "mic-exception"): {"podLabels": {"app": "mic", "component": "mic"}},
        ("kube-system", "aks-addon-exception"): {"podLabels": {"kubernetes.azure.com/managedby": "aks"}},
    }


def test_podmonitor_scrapes_the_named_metrics_port_of_nmis_pods(renderings):
    objects = renderings["overlays/managed+prometheus-operator"]
    (monitor,) = [obj for obj in objects if obj["kind"] == "PodMonitor"]
    daemonset = next(obj for obj in objects if obj["kind"] == "DaemonSet")
    pod_labels = daemonset["spec"]["template"]["metadata"]["labels"]
    assert monitor["metadata"]["namespace"] == daemonset["metadata"]["namespace"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    (container,) = daemonset["spec"]["template"]["spec"]["containers"]
    assert (endpoint["port"], endpoint["path"]) == ("metrics", "/metrics")
    assert any(port["name"] == "metrics" for port in container["ports"])


def test_strict_validation_rejects_a_misspelt_podmonitor_field():
    monitor = yaml.safe_load((DAEMONSET_DIR / "components" / "prometheus-operator" / "podmonitor.yaml").read_text())
    monitor["spec"]["podMetricsEndpoints"][0]["prot"] = monitor["spec"]["podMetricsEndpoints"][0].pop("port")
    assert _schema_errors(monitor, KUBERNETES_VERSIONS[-1], _known_crds())


def test_strict_validation_rejects_an_unknown_field_in_the_daemonset():
    daemonset = next(obj for obj in render_overlay("managed") if obj["kind"] == "DaemonSet")
    daemonset["spec"]["template"]["spec"]["containers"][0]["readOnlyRootFileSystem"] = True  # misspelt
    assert _schema_errors(daemonset, KUBERNETES_VERSIONS[-1], _crds())


def test_custom_resource_validation_rejects_a_misspelt_field_and_a_wrong_type():
    identity = yaml.safe_load((DAEMONSET_DIR / "examples" / "azureidentity.yaml").read_text())
    identity["spec"]["clientId"] = identity["spec"].pop("clientID")
    identity["spec"]["type"] = "0"
    errors = custom_resource_errors(identity, _crds())
    assert any("clientId" in error for error in errors)
    assert any(error.startswith("spec/type") for error in errors)


def test_crd_schemas_are_identical_to_upstream_v1_8_17():
    digests = {}
    for crd in _crds():
        (version,) = crd["spec"]["versions"]
        canonical = json.dumps(version["schema"]["openAPIV3Schema"], sort_keys=True, separators=(",", ":"))
        digests[crd["spec"]["names"]["kind"]] = hashlib.sha256(canonical.encode()).hexdigest()
    assert digests == UPSTREAM_SCHEMA_SHA256


def test_crds_serve_and_store_aadpodidentity_v1_namespaced():
    for crd in _crds():
        spec = crd["spec"]
        assert crd["metadata"]["name"] == f"{spec['names']['plural']}.{CUSTOM_GROUP}"
        assert spec["group"] == CUSTOM_GROUP and spec["scope"] == "Namespaced"
        assert [(v["name"], v["served"], v["storage"]) for v in spec["versions"]] == [("v1", True, True)]
        # the API server refuses CRDs in *.k8s.io groups without this annotation
        assert crd["metadata"]["annotations"]["api-approved.kubernetes.io"].startswith("unapproved")


def test_demo_pod_is_bound_to_the_example_identity():
    objects = render_kustomization(DAEMONSET_DIR / "examples")
    pod = next(obj for obj in objects if obj["kind"] == "Pod")
    binding = next(obj for obj in objects if obj["kind"] == "AzureIdentityBinding")
    identities = {obj["metadata"]["name"]: obj for obj in objects if obj["kind"] == "AzureIdentity"}
    assert pod["metadata"]["labels"]["aadpodidbinding"] == binding["spec"]["selector"]
    identity = identities[binding["spec"]["azureIdentity"]]
    assert identity["metadata"]["namespace"] == binding["metadata"]["namespace"] == pod["metadata"]["namespace"]
    assert identity["spec"]["type"] == 0


# Every kustomization of daemonset/ (components aside: they render only on a kustomization), found rather than
# listed, so a new one is rendered and validated too.
KUSTOMIZATIONS = sorted(str(path.parent.relative_to(DAEMONSET_DIR)) for path in DAEMONSET_DIR.rglob("kustomization.yaml")
                        if yaml.safe_load(path.read_text()).get("kind", "Kustomization") == "Kustomization")


def test_every_kustomization_is_found():
    assert {f"overlays/{mode}" for mode in OVERLAYS} | {"base", "crds", "examples", "uninstall"} <= set(KUSTOMIZATIONS)


@pytest.mark.parametrize("target", KUSTOMIZATIONS)
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_kustomization_renders_with_kubectl_kustomize_to_valid_objects(target, version):
    objects = render_kustomization(DAEMONSET_DIR / target)
    assert objects and strict_errors(objects, version) == {}
