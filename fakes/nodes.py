"""Nodes for the fake API server: GET and JSON-patch PATCH of `/api/v1/nodes/{name}`, as the real one does.

A JSON patch (RFC 6902: add, remove, replace, test) is applied to the Node as stored at that moment; a failed
`test` is 422 and changes nothing; a `metadata.resourceVersion` in the patched result that differs from the
stored one is 409. Any other content type is 415. `on_read` lets a test change the Node right after a client
read it (a concurrent writer), `patches` records what was applied or refused.

    nodes = FakeNodes()
    nodes.put(make_node("n1", taints=[{"key": "k", "effect": "NoSchedule"}]))
    nodes.install(app)             # FakeApiServer does this
"""

from __future__ import annotations

import copy
import itertools
import json
from typing import Any, Callable

from aiohttp import web

JSON_PATCH = "application/json-patch+json"


def make_node(name: str, *, taints: list[dict[str, Any]] | None = None, labels: dict[str, str] | None = None
              ) -> dict[str, Any]:
    node: dict[str, Any] = {"apiVersion": "v1", "kind": "Node",
                            "metadata": {"name": name, "uid": f"node-uid-{name}", "labels": dict(labels or {})},
                            "spec": {}}
    if taints is not None:
        node["spec"]["taints"] = [dict(taint) for taint in taints]
    return node


class PatchFailed(Exception):
    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status, self.reason, self.message = status, reason, message


class FakeNodes:
    def __init__(self) -> None:
        self.nodes: dict[str, dict[str, Any]] = {}
        self.patches: list[dict[str, Any]] = []  # {"node", "content_type", "operations", "status"}
        self.on_read: Callable[[dict[str, Any]], None] | None = None
        self._versions = itertools.count(1000)

    def put(self, node: dict[str, Any]) -> dict[str, Any]:
        stored = copy.deepcopy(node)
        stored["metadata"]["resourceVersion"] = str(next(self._versions))
        self.nodes[stored["metadata"]["name"]] = stored
        return stored

    def taints(self, name: str) -> list[dict[str, Any]]:
        return list(self.nodes[name].get("spec", {}).get("taints") or [])

    def install(self, app: web.Application) -> None:
        app.router.add_get("/api/v1/nodes/{name}", self._get)
        app.router.add_patch("/api/v1/nodes/{name}", self._patch)

    async def _get(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        node = self.nodes.get(name)
        if node is None:
            return _status(404, "NotFound", f'nodes "{name}" not found')
        answer = web.json_response(node)
        if self.on_read is not None:
            change, self.on_read = self.on_read, None
            change(self.nodes[name])  # after the answer is built: the client read the old Node
            self.put(self.nodes[name])
        return answer

    async def _patch(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        content_type = request.headers.get("Content-Type", "").split(";")[0].strip()
        record: dict[str, Any] = {"node": name, "content_type": content_type, "operations": None, "status": 0}
        self.patches.append(record)
        node = self.nodes.get(name)
        if node is None:
            record["status"] = 404
            return _status(404, "NotFound", f'nodes "{name}" not found')
        if content_type != JSON_PATCH:
            record["status"] = 415
            return _status(415, "UnsupportedMediaType", f"the fake accepts only {JSON_PATCH}")
        try:
            record["operations"] = operations = json.loads(await request.read())
            patched = apply_json_patch(node, operations)
            if patched["metadata"].get("resourceVersion") != node["metadata"]["resourceVersion"]:
                raise PatchFailed(409, "Conflict", "the object has been modified; please apply your changes to "
                                                   "the latest version and try again")
        except PatchFailed as exc:
            record["status"] = exc.status
            return _status(exc.status, exc.reason, exc.message)
        except (ValueError, TypeError) as exc:
            record["status"] = 400
            return _status(400, "BadRequest", str(exc))
        record["status"] = 200
        return web.json_response(self.put(patched))


def apply_json_patch(document: dict[str, Any], operations: list[dict[str, Any]]) -> dict[str, Any]:
    """RFC 6902 add/remove/replace/test on a copy; PatchFailed(422) as the API server answers."""
    if not isinstance(operations, list):
        raise ValueError("a JSON patch is a list of operations")
    result = copy.deepcopy(document)
    for operation in operations:
        op, path = operation.get("op"), operation.get("path", "")
        *parents, last = _pointer(path)
        target: Any = result
        for token in parents:
            target = target[int(token)] if isinstance(target, list) else target[token]
        if isinstance(target, list):
            index = len(target) if (last == "-" and op == "add") else int(last)
            if not 0 <= index <= len(target) - (0 if op == "add" else 1):
                raise PatchFailed(422, "Invalid", f"index {last} out of range in {path}")
        elif op != "add" and last not in target:
            raise PatchFailed(422, "Invalid", f"missing value at {path}")
        if op == "test":
            current = target[index] if isinstance(target, list) else target[last]
            if current != operation.get("value"):
                raise PatchFailed(422, "Invalid", f"testing value {path} failed")
        elif op == "remove":
            del target[index if isinstance(target, list) else last]
        elif op == "add" and isinstance(target, list):
            target.insert(index, copy.deepcopy(operation["value"]))
        elif op in ("add", "replace"):
            target[index if isinstance(target, list) else last] = copy.deepcopy(operation["value"])
        else:
            raise ValueError(f"unsupported JSON patch op {op!r}")
    return result


def _pointer(path: str) -> list[str]:
    if not path.startswith("/"):
        raise ValueError(f"bad JSON pointer {path!r}")
    return [token.replace("~1", "/").replace("~0", "~") for token in path[1:].split("/")]


def _status(code: int, reason: str, message: str) -> web.Response:
    return web.json_response({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                              "message": message, "reason": reason, "code": code}, status=code)
