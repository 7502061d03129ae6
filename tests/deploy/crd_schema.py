"""Validate custom resources against the openAPIV3Schema of their CRD, the way `kubectl apply
--validate=strict` would: unknown fields are errors (the API server would otherwise prune them silently)
and `nullable` allows null."""

from __future__ import annotations

import copy
from typing import Any

import jsonschema

Manifest = dict[str, Any]


def strict_json_schema(openapi_schema: Manifest) -> Manifest:
    """Translate a structural OpenAPI v3 schema into a JSON Schema that refuses unknown fields."""
    schema = copy.deepcopy(openapi_schema)
    _tighten(schema)
    return schema


def _tighten(node: Manifest) -> None:
    if node.pop("nullable", False) and "type" in node:
        node["type"] = [node["type"], "null"]
    if "properties" in node:
        node.setdefault("additionalProperties", False)
        for child in node["properties"].values():
            _tighten(child)
    if isinstance(node.get("additionalProperties"), dict):
        _tighten(node["additionalProperties"])
    if isinstance(node.get("items"), dict):
        _tighten(node["items"])


def custom_resource_errors(obj: Manifest, crds: list[Manifest]) -> list[str]:
    """Every schema violation of `obj`, or a single error when no CRD serves its group/version/kind."""
    group, _, version = obj["apiVersion"].rpartition("/")
    for crd in crds:
        spec = crd["spec"]
        if spec["group"] != group or spec["names"]["kind"] != obj["kind"]:
            continue
        for served in spec["versions"]:
            if served["name"] == version and served["served"]:
                validator = jsonschema.Draft7Validator(strict_json_schema(served["schema"]["openAPIV3Schema"]))
                return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(obj)]
    return [f"no CRD serves {obj['apiVersion']} {obj['kind']}"]
