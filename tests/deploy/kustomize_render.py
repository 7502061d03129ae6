"""A deliberately small kustomize: just the features daemonset/ uses, so the manifests can be rendered
without a kustomize binary. Anything else in a kustomization is refused, so a new feature in the
manifests fails here loudly instead of being silently ignored; when `kubectl` is installed the tests also
compare this renderer's output with `kubectl kustomize`.

Supported: `resources` (files, or directories holding a kustomization), `components`, `patches` with a
`target` (kind/name) and a JSON6902 body (`add`/`replace`/`remove`/`test`), and `images` (newName/newTag/digest).
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import yaml

Manifest = dict[str, Any]

_KNOWN_KEYS = {"apiVersion", "kind", "resources", "components", "patches", "images"}


def render_kustomization(directory: Path) -> list[Manifest]:
    """Render the kustomization in `directory` into the list of objects kustomize would output."""
    return _render(directory.resolve(), expected_kind="Kustomization")


def apply_component(directory: Path, objects: list[Manifest]) -> list[Manifest]:
    """`objects` as a kustomization listing them as resources and `directory` as its last component renders."""
    combined = _apply_component(directory.resolve(), objects)
    _refuse_duplicates(combined, directory)
    return combined


def load_yaml_documents(path: Path) -> list[Manifest]:
    # The tests render every combination of components: parse each file once (keyed on its mtime), copy out.
    return copy.deepcopy(_parsed(str(path), path.stat().st_mtime_ns))


@functools.lru_cache(maxsize=512)
def _parsed(path: str, _mtime_ns: int) -> list[Manifest]:
    return [document for document in yaml.safe_load_all(Path(path).read_text()) if document]


def _render(directory: Path, *, expected_kind: str) -> list[Manifest]:
    (kustomization,) = load_yaml_documents(directory / "kustomization.yaml")
    unknown = set(kustomization) - _KNOWN_KEYS
    if unknown:
        raise NotImplementedError(f"{directory}: kustomization keys not supported here: {sorted(unknown)}")
    if kustomization.get("kind", "Kustomization") != expected_kind:
        raise ValueError(f"{directory}: expected kind {expected_kind}, got {kustomization.get('kind')}")

    objects: list[Manifest] = []
    for entry in kustomization.get("resources", []):
        objects.extend(_load_resource(directory / entry))
    for entry in kustomization.get("components", []):
        objects = _apply_component(directory / entry, objects)
    for patch in kustomization.get("patches", []):
        objects = [_patch_if_targeted(obj, patch, directory) for obj in objects]
    for image in kustomization.get("images", []):
        objects = [_set_image(obj, image) for obj in objects]
    _refuse_duplicates(objects, directory)
    return objects


def _load_resource(path: Path) -> list[Manifest]:
    if path.is_dir():
        return _render(path.resolve(), expected_kind="Kustomization")
    return load_yaml_documents(path)


def _apply_component(directory: Path, objects: list[Manifest]) -> list[Manifest]:
    # A component sees the objects accumulated so far: its resources are added, then its patches run
    # over everything.
    (component,) = load_yaml_documents(directory / "kustomization.yaml")
    if component.get("kind") != "Component":
        raise ValueError(f"{directory}: a component must have kind Component")
    unknown = set(component) - _KNOWN_KEYS
    if unknown:
        raise NotImplementedError(f"{directory}: component keys not supported here: {sorted(unknown)}")
    combined = list(objects)
    for entry in component.get("resources", []):
        combined.extend(_load_resource(directory / entry))
    for patch in component.get("patches", []):
        combined = [_patch_if_targeted(obj, patch, directory) for obj in combined]
    for image in component.get("images", []):
        combined = [_set_image(obj, image) for obj in combined]
    return combined


def _patch_if_targeted(obj: Manifest, patch: Manifest, directory: Path) -> Manifest:
    target = patch.get("target")
    if not target:
        raise NotImplementedError("patches without a target (strategic merge) are not supported here")
    if set(target) - {"kind", "name"}:
        raise NotImplementedError(f"patch target fields not supported here: {sorted(target)}")
    if target.get("kind", obj["kind"]) != obj["kind"]:
        return obj
    if target.get("name", obj["metadata"]["name"]) != obj["metadata"]["name"]:
        return obj
    body = patch["patch"] if "patch" in patch else (directory / patch["path"]).read_text()
    operations = yaml.safe_load(body)
    if not isinstance(operations, list):
        raise NotImplementedError("only JSON6902 patches (a list of operations) are supported here")
    patched = copy.deepcopy(obj)
    for operation in operations:
        _apply_json6902(patched, operation)
    return patched


def _apply_json6902(document: Manifest, operation: Manifest) -> None:
    *parent_tokens, last = [_unescape(token) for token in operation["path"].split("/")[1:]]
    parent: Any = document
    for token in parent_tokens:
        parent = parent[int(token)] if isinstance(parent, list) else parent[token]
    op = operation["op"]
    if op == "add":
        if isinstance(parent, list):
            index = len(parent) if last == "-" else int(last)
            parent.insert(index, copy.deepcopy(operation["value"]))
        else:
            parent[last] = copy.deepcopy(operation["value"])
    elif op == "replace":
        key: Any = int(last) if isinstance(parent, list) else last
        parent[key]  # a replace of a missing member is an error in RFC 6902
        parent[key] = copy.deepcopy(operation["value"])
    elif op == "test":
        key = int(last) if isinstance(parent, list) else last
        if parent[key] != operation["value"]:
            raise ValueError(f"JSON6902 test failed at {operation['path']}: {parent[key]!r} != {operation['value']!r}")
    elif op == "remove":
        del parent[int(last) if isinstance(parent, list) else last]
    else:
        raise NotImplementedError(f"JSON6902 op not supported here: {op}")


def _unescape(token: str) -> str:
    return token.replace("~1", "/").replace("~0", "~")


def _set_image(obj: Manifest, image: Manifest) -> Manifest:
    pod_spec = _pod_spec(obj)
    if pod_spec is None:
        return obj
    updated = copy.deepcopy(obj)
    for container in _pod_spec(updated).get("containers", []) + _pod_spec(updated).get("initContainers", []):
        name, tag, digest = _split_image(container["image"])
        if name != image["name"]:
            continue
        name = image.get("newName", name)
        tag = image.get("newTag", tag)
        digest = image.get("digest", digest)
        container["image"] = name + (f"@{digest}" if digest else f":{tag}" if tag else "")
    return updated


def _pod_spec(obj: Manifest) -> Manifest | None:
    if obj["kind"] == "Pod":
        return obj["spec"]
    template = obj.get("spec", {}).get("template")
    return template["spec"] if template else None


def _split_image(reference: str) -> tuple[str, str | None, str | None]:
    if "@" in reference:
        name, digest = reference.split("@", 1)
        return name, None, digest
    last_segment = reference.rsplit("/", 1)[-1]
    if ":" in last_segment:
        name, tag = reference.rsplit(":", 1)
        return name, tag, None
    return reference, None, None


def _refuse_duplicates(objects: list[Manifest], directory: Path) -> None:
    seen: set[tuple[str, str, str | None]] = set()
    for obj in objects:
        key = (obj["kind"], obj["metadata"]["name"], obj["metadata"].get("namespace"))
        if key in seen:
            raise ValueError(f"{directory}: duplicate object {key}")
        seen.add(key)
