"""A fake Kubernetes API server over real HTTP, for tests and the demo.

Speaks what nmi uses: pod, ServiceAccount, ReplicaSet, Deployment and CRD list/watch (selectors, resourceVersions, bookmarks, 410 for
compacted history, streams held open until `timeoutSeconds`), Secret GET, Event POST, and TokenRequest
(`serviceaccounts/{name}/token`, RS256 tokens signed by `sa_issuer`, bound to a pod checked by name and UID). Records every request so tests
can assert how the client behaved ("one list, then watches"), and can inject 500s or dropped connections, slow
lists (`list_delay`), cut watch streams (`cut_watches`) and a restart on the same port (`stop` then `start`).

    server = FakeApiServer()
    await server.start()          # server.url → "http://127.0.0.1:<port>"
    server.put(make_pod("web", ip="10.244.0.7"))
    ...
    await server.stop()
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any, Mapping

from aiohttp import web
from aiohttp.client_exceptions import ClientConnectionResetError

from .clusterstate import (
    PLURAL_OF_KIND,
    RESOURCES,
    ClusterState,
    TooOld,
    Watcher,
    selector_matcher,
)
from .kubeobjects import (  # noqa: F401 - re-exported for tests and the demo
    make_assigned_identity,
    make_binding,
    make_exception,
    make_identity,
    make_deployment,
    make_pod,
    make_replicaset,
    make_secret,
    make_service_account,
)
from .nodes import FakeNodes
from .sa_issuer import ServiceAccountIssuer, rfc3339
from .serving import FakeSite, Served

log = logging.getLogger(__name__)
CRD_PREFIX = "/apis/aadpodidentity.k8s.io/v1"
_WRITE_ERRORS = (ConnectionResetError, ClientConnectionResetError, ConnectionError)


@dataclass(frozen=True, slots=True)
class RequestRecord:
    method: str
    path: str
    resource: str  # plural, "" if unknown
    verb: str  # list, watch, get, create, other
    query: Mapping[str, str]
    user_agent: str = ""


@dataclass
class _Fault:
    remaining: int
    status: int | None  # None: drop the connection without answering
    path_prefix: str
    verb: str | None


class FakeApiServer(Served):
    def __init__(self, *, bookmark_interval: float | None = 5.0, token: str | None = None,
                 expire_with_http_410: bool = False) -> None:
        self.state = ClusterState()
        self.bookmark_interval = bookmark_interval
        self.token = token
        self.expire_with_http_410 = expire_with_http_410
        self.requests: list[RequestRecord] = []
        self.posted_events: list[dict[str, Any]] = []
        self.sa_issuer = ServiceAccountIssuer()
        self.nodes = FakeNodes()  # GET and JSON-patch PATCH of /api/v1/nodes/{name} (nodes.py)
        self.token_requests: list[dict[str, Any]] = []  # (namespace, service_account, spec) of each one granted
        self._faults: list[_Fault] = []
        self.list_delay = 0.0  # seconds every list (not watch) waits before answering
        self.slow_resources: frozenset[str] | None = None  # plurals `list_delay` applies to (None: all)
        self._site = FakeSite(shutdown_timeout=1.0)
        self.url = ""

    # -- lifecycle -----------------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        app = web.Application(middlewares=[self._middleware])
        app.router.add_get("/api/v1/pods", self._collection)
        app.router.add_get("/api/v1/namespaces/{ns}/pods", self._collection)
        app.router.add_get("/api/v1/{plural:serviceaccounts}", self._collection)
        app.router.add_get("/api/v1/namespaces/{ns}/{plural:serviceaccounts}", self._collection)
        app.router.add_post("/api/v1/namespaces/{ns}/serviceaccounts/{name}/token", self._token_request)
        app.router.add_get("/api/v1/namespaces/{ns}/secrets/{name}", self._get_secret)
        app.router.add_post("/api/v1/namespaces/{ns}/events", self._post_event)
        app.router.add_get("/apis/apps/v1/{plural:replicasets|deployments}", self._collection)
        app.router.add_get("/apis/apps/v1/namespaces/{ns}/{plural:replicasets|deployments}", self._collection)
        app.router.add_get(CRD_PREFIX + "/namespaces/{ns}/{plural}", self._collection)
        app.router.add_get(CRD_PREFIX + "/{plural}", self._collection)
        self.nodes.install(app)
        bound_host, bound_port = await self._site.serve(app, host, port)
        self.url = f"http://{bound_host}:{bound_port}"
        return self.url

    async def stop(self, *, close_watches: bool = True) -> None:
        """Ends open watch streams cleanly (unless the caller cut them, as a dead server does) and stops listening."""
        if close_watches:
            self.close_watches()
        await self._site.stop()

    # -- test controls -------------------------------------------------------------------------------

    def put(self, obj: dict[str, Any], *, notify: bool = True) -> dict[str, Any]:
        """Create or replace an object; `notify=False` changes it without telling open watches (a change the
        client missed while disconnected)."""
        return self.state.put(obj, notify=notify)

    def delete(self, kind: str, namespace: str, name: str, *, notify: bool = True) -> bool:
        return self.state.delete(PLURAL_OF_KIND.get(kind, kind), namespace, name, notify=notify)

    def compact(self) -> None:
        self.state.compact()

    def bookmark_now(self) -> None:
        for watcher in list(self.state.watchers):
            watcher.queue.put_nowait(("bookmark", self.state.resource_version))

    def cut_watches(self, resource: str | None = None) -> None:
        """Drop open watch streams mid-flight (no clean end of stream), as a dead peer or proxy does."""
        for watcher in list(self.state.watchers):
            if resource is None or watcher.plural == resource:
                watcher.queue.put_nowait(("cut", 0))

    def close_watches(self, resource: str | None = None) -> None:
        """End open watch streams normally (as the API server does at timeoutSeconds)."""
        for watcher in list(self.state.watchers):
            if resource is None or watcher.plural == resource:
                watcher.queue.put_nowait(("close", 0))

    def fail_next(self, count: int, *, status: int | None = 500, path_prefix: str = "", verb: str | None = None) -> None:
        """The next `count` matching requests get `status` (None: the connection is dropped)."""
        self._faults.append(_Fault(count, status, path_prefix, verb))

    def clear_faults(self) -> None:
        """Ends every injected fault (an outage that lasts until the test says so: `fail_next(10**6, ...)`)."""
        self._faults.clear()

    def count(self, resource: str, verb: str) -> int:
        return sum(1 for r in self.requests if r.resource == resource and r.verb == verb)

    def requests_for(self, resource: str, verb: str | None = None) -> list[RequestRecord]:
        return [r for r in self.requests if r.resource == resource and (verb is None or r.verb == verb)]

    def open_watches(self, resource: str) -> int:
        return sum(1 for w in self.state.watchers if w.plural == resource)

    # -- HTTP ----------------------------------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler) -> web.StreamResponse:
        record = _record_of(request)
        self.requests.append(record)
        if self.token is not None and request.headers.get("Authorization") != f"Bearer {self.token}":
            return _status(401, "Unauthorized", "Unauthorized")
        for fault in self._faults:
            if fault.remaining > 0 and record.path.startswith(fault.path_prefix) and fault.verb in (None, record.verb):
                fault.remaining -= 1
                if fault.status is None:
                    request.transport.abort()
                    raise asyncio.CancelledError()  # aiohttp drops the handler quietly
                return _status(fault.status, "InternalError", "injected fault")
        return await handler(request)

    async def _collection(self, request: web.Request) -> web.StreamResponse:
        plural = request.match_info.get("plural", "pods")
        if plural not in RESOURCES:
            return _status(404, "NotFound", f"the server could not find the requested resource ({plural})")
        namespace = request.match_info.get("ns")
        matches = selector_matcher(request.query.get("fieldSelector", ""), request.query.get("labelSelector", ""))
        if request.query.get("watch") in ("true", "1"):
            return await self._watch(request, Watcher(plural, namespace, matches))
        if self.list_delay and (self.slow_resources is None or plural in self.slow_resources):
            await asyncio.sleep(self.list_delay)
        kind, api_version = RESOURCES[plural]
        metadata = {"resourceVersion": str(self.state.resource_version)}
        limit = request.query.get("limit", "")
        # Chunked lists: a page, and a continue token (here simply the offset) where the next one starts.
        page = int(limit) if limit.isdigit() and int(limit) > 0 else None
        start = int(request.query.get("continue", "0") or "0") if page else 0
        items, more = self.state.list_encoded(plural, namespace, matches, start=start, limit=page)
        if more and page:
            metadata["continue"] = str(start + page)
        # The objects' JSON was encoded when they were stored (as a real API server's watch cache holds them):
        # a page is those bytes joined.
        head = json.dumps({"apiVersion": api_version, "kind": f"{kind}List", "metadata": metadata},
                          separators=(",", ":"))
        body = b"".join((head[:-1].encode(), b',"items":[', b",".join(items), b"]}"))
        return web.Response(body=body, content_type="application/json", charset="utf-8")

    async def _watch(self, request: web.Request, watcher: Watcher) -> web.StreamResponse:
        rv = request.query.get("resourceVersion", "")
        since = int(rv) if rv.isdigit() and rv != "0" else None
        try:
            self.state.subscribe(watcher, since)
        except TooOld as exc:
            if self.expire_with_http_410:
                return _status(410, "Expired", str(exc))
            watcher.queue.put_nowait(("expired", str(exc)))
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        bookmarks = request.query.get("allowWatchBookmarks") == "true"
        loop = asyncio.get_running_loop()
        timeout = float(request.query.get("timeoutSeconds") or 0)
        deadline = loop.time() + timeout if timeout > 0 else None
        try:
            await response.prepare(request)
            while True:
                wait = None if deadline is None else deadline - loop.time()
                if bookmarks and self.bookmark_interval:
                    wait = self.bookmark_interval if wait is None else min(wait, self.bookmark_interval)
                if wait is not None and wait <= 0:
                    break
                try:
                    kind, payload = await asyncio.wait_for(watcher.queue.get(), wait)
                except TimeoutError:
                    if deadline is not None and loop.time() >= deadline:
                        break
                    kind, payload = "bookmark", self.state.resource_version  # queue empty: all delivered
                if kind == "close":
                    break
                if kind == "cut":
                    request.transport.abort()
                    raise asyncio.CancelledError()  # aiohttp drops the handler quietly
                if kind == "expired":
                    status = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                              "message": payload, "reason": "Expired", "code": 410}
                    await _write_event(response, {"type": "ERROR", "object": status})
                    break
                if kind == "bookmark":
                    if bookmarks:
                        plural_kind, api_version = RESOURCES[watcher.plural]
                        await _write_event(response, {"type": "BOOKMARK", "object": {
                            "kind": plural_kind, "apiVersion": api_version,
                            "metadata": {"resourceVersion": str(payload)}}})
                    continue
                await _write_event(response, payload)
            await response.write_eof()
        except _WRITE_ERRORS:
            pass  # the client went away
        finally:
            self.state.unsubscribe(watcher)
        return response

    async def _get_secret(self, request: web.Request) -> web.StreamResponse:
        ns, name = request.match_info["ns"], request.match_info["name"]
        secret = self.state.get("secrets", ns, name)
        if secret is None:
            return _status(404, "NotFound", f'secrets "{name}" not found', details={"name": name, "kind": "secrets"})
        return web.json_response(secret)

    async def _token_request(self, request: web.Request) -> web.StreamResponse:
        ns, name = request.match_info["ns"], request.match_info["name"]
        account = self.state.get("serviceaccounts", ns, name)
        if account is None:
            return _status(404, "NotFound", f'serviceaccounts "{name}" not found',
                           details={"name": name, "kind": "serviceaccounts"})
        spec = dict((await request.json()).get("spec") or {})
        expiration = int(spec.get("expirationSeconds") or 3600)
        if expiration < 600:
            return _status(422, "Invalid", "spec.expirationSeconds: may not specify a duration less than 10 minutes")
        ref = spec.get("boundObjectRef")
        bound = None
        if ref:
            if ref.get("kind") != "Pod":
                return _status(400, "BadRequest", f"cannot bind token to object of kind {ref.get('kind')}")
            pod = self.state.get("pods", ns, str(ref.get("name", "")))
            if pod is None:
                return _status(404, "NotFound", f'pods "{ref.get("name")}" not found')
            if ref.get("uid") and ref["uid"] != pod["metadata"]["uid"]:
                return _status(409, "Conflict", "the UID in the bound object reference does not match the pod")
            bound = {"name": pod["metadata"]["name"], "uid": pod["metadata"]["uid"]}
        audiences = list(spec.get("audiences") or ["https://kubernetes.default.svc.cluster.local"])
        token, expires = self.sa_issuer.mint(namespace=ns, service_account=name,
                                             service_account_uid=account["metadata"]["uid"], audiences=audiences,
                                             expiration_seconds=expiration, pod=bound)
        spec.update(audiences=audiences, expirationSeconds=expiration)
        self.token_requests.append({"namespace": ns, "service_account": name, "spec": spec})
        return web.json_response({"kind": "TokenRequest", "apiVersion": "authentication.k8s.io/v1",
                                  "metadata": {"name": name, "namespace": ns}, "spec": spec,
                                  "status": {"token": token, "expirationTimestamp": rfc3339(expires)}}, status=201)

    async def _post_event(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        meta = body.setdefault("metadata", {})
        meta["namespace"] = request.match_info["ns"]
        if not meta.get("name"):
            meta["name"] = f"{meta.get('generateName', 'event.')}{len(self.posted_events) + 1:05d}"
        body.setdefault("kind", "Event")
        body.setdefault("apiVersion", "v1")
        stored = self.state.put(body)
        self.posted_events.append(stored)
        return web.json_response(stored, status=201)


async def _write_event(response: web.StreamResponse, event: dict[str, Any]) -> None:
    await response.write(json.dumps(event, separators=(",", ":")).encode() + b"\n")


def _status(code: int, reason: str, message: str, *, details: dict[str, Any] | None = None) -> web.Response:
    body: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                            "message": message, "reason": reason, "code": code}
    if details:
        body["details"] = details
    return web.json_response(body, status=code)


def _record_of(request: web.Request) -> RequestRecord:
    parts = [p for p in request.path.split("/") if p]
    if request.method == "POST" and len(parts) >= 2 and parts[-3:-2] == ["serviceaccounts"] and parts[-1] == "token":
        return RequestRecord(request.method, request.path, "serviceaccounts/token", "create", dict(request.query),
                         request.headers.get("User-Agent", ""))
    resource = ""
    for part in reversed(parts):
        if part in RESOURCES:
            resource = part
            break
    if request.method == "POST":
        verb = "create"
    elif resource == "secrets":
        verb = "get"
    elif resource:
        verb = "watch" if request.query.get("watch") in ("true", "1") else "list"
    else:
        verb = "other"
    return RequestRecord(request.method, request.path, resource, verb, dict(request.query),
                         request.headers.get("User-Agent", ""))
