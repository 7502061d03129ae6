from __future__ import annotations

import os
from pathlib import Path

import pytest

from .kustomize_render import Manifest, render_kustomization

REPO = Path(__file__).resolve().parents[2]
DAEMONSET_DIR = REPO / "daemonset"
OVERLAYS = ("managed", "standard")
COMPONENTS = ("service-principal-secrets", "audit-events", "workload-identity", "exceptions/aks-addons",
              "exceptions/mic", "prometheus-operator", "startup-taint")
# How many objects each component adds to an overlay's rendering.
COMPONENT_OBJECTS = {"service-principal-secrets": 2, "audit-events": 2, "workload-identity": 4,
                     "exceptions/aks-addons": 1, "exceptions/mic": 1, "prometheus-operator": 1, "startup-taint": 4}


def render_overlay(mode: str) -> list[Manifest]:
    return render_kustomization(DAEMONSET_DIR / "overlays" / mode)


def write_overlay_with_components(mode: str, directory: Path, components: tuple[str, ...]) -> Path:
    """A user's kustomization: one of our overlays plus some of the opt-in components."""
    # kustomize refuses absolute paths, so refer to ours relative to the new directory
    overlay = os.path.relpath(DAEMONSET_DIR / "overlays" / mode, directory)
    paths = [os.path.relpath(DAEMONSET_DIR / "components" / name, directory) for name in components]
    (directory / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\n"
        "kind: Kustomization\n"
        f"resources:\n- {overlay}\n"
        + ("components:\n" + "".join(f"- {path}\n" for path in paths) if paths else "")
    )
    return directory


def find_one(objects: list[Manifest], kind: str, name: str) -> Manifest:
    matches = [obj for obj in objects if obj["kind"] == kind and obj["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind}/{name}, found {len(matches)}"
    return matches[0]


@pytest.fixture(params=OVERLAYS)
def mode(request: pytest.FixtureRequest) -> str:
    return request.param
