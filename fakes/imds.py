"""A fake Azure Instance Metadata Service (IMDS) over aiohttp, for tests and the README demo.

Speaks the real wire shape: `GET /metadata/identity/oauth2/token` with `Metadata: true`, identity selected by
`client_id` / `msi_res_id` / `mi_res_id` / `object_id`, every value of the answer a string. Faults can be
programmed for the next N answers; calls and concurrency are counted.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from aiohttp import web

from .fake_jwt import unsigned_jwt
from .serving import FakeSite, Served

TOKEN_PATH = "/metadata/identity/oauth2/token"


@dataclass(frozen=True, slots=True)
class VmIdentity:
    """A managed identity attached to the fake VM. `system_assigned` marks the VM's own identity."""

    client_id: str
    object_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    resource_id: str = ""
    system_assigned: bool = False


def user_assigned(name: str, *, client_id: str, object_id: str) -> VmIdentity:
    """A user-assigned identity on the fake VM, named like Azure names it under the fakes' one resource group."""
    return VmIdentity(client_id=client_id, object_id=object_id, resource_id=(
        f"/subscriptions/0000/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{name}"))


@dataclass(frozen=True, slots=True)
class Fault:
    """One programmed answer: a status with a JSON body, an optional Retry-After, and/or a delay first.

    `text` replaces the JSON body with raw text (a malformed answer); `reset` drops the connection after the
    delay without answering (a connection reset); a long `delay` is a hanging upstream."""

    status: int = 500
    body: dict[str, Any] | None = None
    retry_after: str | None = None
    delay: float = 0.0
    text: str | None = None
    reset: bool = False

    async def play(self, *, error: str, description: str, request: web.Request | None = None,
                   pause: Callable[[float], Awaitable[None]] = asyncio.sleep) -> web.Response | None:
        """Wait the delay (`pause`: the fake's, cut short when it stops), then the programmed answer (None: a
        delay only, answer normally)."""
        if self.delay:
            await pause(self.delay)
        if self.reset and request is not None and request.transport is not None:
            request.transport.abort()
            raise asyncio.CancelledError()  # aiohttp drops the handler quietly
        if not self.status:
            return None
        headers = {"Retry-After": self.retry_after} if self.retry_after else {}
        if self.text is not None:
            return web.Response(text=self.text, status=self.status, headers=headers, content_type="application/json")
        body = self.body or {"error": error, "error_description": description}
        return web.json_response(body, status=self.status, headers=headers)


def _error(status: int, error: str, description: str) -> web.Response:
    return web.json_response({"error": error, "error_description": description}, status=status)


class FakeImds(Served):
    def __init__(self, identities: list[VmIdentity] | None = None, *, token_lifetime: int = 3599,
                 clock: Callable[[], float] = time.time) -> None:
        self.identities = list(identities or [])
        self.token_lifetime = token_lifetime
        self.response_delay = 0.0  # added to every token answer (to make concurrency observable)
        self._clock = clock
        self._faults: deque[Fault] = deque()
        self.calls: Counter[tuple[str, str]] = Counter()  # (client_id, resource) of answered token requests
        self.token_requests = 0  # every request on the token path, faults included
        self.queries: list[dict[str, str]] = []  # the query of every request on the token path, in order
        self.request_times: list[float] = []  # clock() at arrival of each token request
        self.in_flight = 0
        self.max_in_flight = 0
        self.requests: list[tuple[str, str]] = []  # (method, raw path) of every request received, any path
        self._site = FakeSite()
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def fail_next(self, count: int, fault: Fault) -> None:
        self._faults.extend([fault] * count)

    def clear_faults(self) -> None:
        self._faults.clear()

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        app = web.Application(middlewares=[self._record])
        app.router.add_get(TOKEN_PATH, self._token)
        app.router.add_get("/metadata/instance", self._instance)
        app.router.add_route("*", "/{tail:.*}", self._echo)
        _, self.port = await self._site.serve(app, host, port)

    async def stop(self) -> None:
        await self._site.stop()

    @web.middleware
    async def _record(self, request: web.Request, handler) -> web.StreamResponse:
        self.requests.append((request.method, request.raw_path))
        return await handler(request)

    async def _token(self, request: web.Request) -> web.StreamResponse:
        self.token_requests += 1
        self.queries.append(dict(request.query))
        self.request_times.append(self._clock())
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await self._answer_token(request)
        finally:
            self.in_flight -= 1

    async def _answer_token(self, request: web.Request) -> web.StreamResponse:
        if self._faults:
            fault = self._faults.popleft()
            answer = await fault.play(error="unknown", description=f"fake IMDS fault {fault.status}", request=request,
                                      pause=self._site.pause)
            if answer is not None:
                return answer
        if self.response_delay:
            await asyncio.sleep(self.response_delay)
        if request.headers.get("Metadata") != "true":
            return _error(400, "invalid_request", "Required metadata header not specified")
        query = request.query
        resource = query.get("resource", "")
        if not resource:
            return _error(400, "invalid_request", "Required audience parameter not specified")
        identity, problem = self._select(query)
        if identity is None:
            return _error(400, "invalid_request", problem)
        self.calls[(identity.client_id, resource)] += 1
        return web.json_response(self._token_body(identity, resource))

    def _select(self, query: Any) -> tuple[VmIdentity | None, str]:
        wanted = [(name, query[name]) for name in ("client_id", "msi_res_id", "mi_res_id", "object_id") if name in query]
        if len(wanted) > 1:
            return None, "Only one of client_id, object_id, msi_res_id or mi_res_id may be specified"
        if not wanted:
            system = [i for i in self.identities if i.system_assigned]
            candidates = system or self.identities
            if len(candidates) == 1:
                return candidates[0], ""
            if not candidates:
                return None, "Identity not found"
            return None, ("Multiple user assigned identities exist, please specify the clientId / resourceId "
                          "of the identity in the token request")
        name, value = wanted[0]
        attribute = {"client_id": "client_id", "object_id": "object_id"}.get(name, "resource_id")
        for identity in self.identities:
            if getattr(identity, attribute).lower() == value.lower() and getattr(identity, attribute):
                return identity, ""
        return None, "Identity not found"

    def _token_body(self, identity: VmIdentity, resource: str) -> dict[str, str]:
        now = int(self._clock())
        expires_on = now + self.token_lifetime
        claims = {"aud": resource, "iss": "https://sts.windows.net/fake-tenant/", "iat": now, "nbf": now,
                  "exp": expires_on, "oid": identity.object_id, "appid": identity.client_id,
                  "sub": identity.object_id, "tid": "fake-tenant", "xms_mirid": identity.resource_id}
        return {"access_token": unsigned_jwt(claims), "refresh_token": "", "expires_in": str(self.token_lifetime),
                "expires_on": str(expires_on), "ext_expires_in": str(self.token_lifetime), "not_before": str(now),
                "resource": resource, "token_type": "Bearer", "client_id": identity.client_id}

    async def _instance(self, request: web.Request) -> web.Response:
        if request.headers.get("Metadata") != "true":
            return _error(400, "invalid_request", "Required metadata header not specified")
        return web.json_response({"compute": {"name": "fake-vm", "location": "westeurope", "vmId": "00000000-fake",
                                              "azEnvironment": "AzurePublicCloud"},
                                  "network": {"interface": []}})

    async def _echo(self, request: web.Request) -> web.Response:
        body = await request.read()
        return web.json_response({"error": "not_found", "method": request.method, "path": request.path,
                                  "query_string": request.query_string, "headers": dict(request.headers),
                                  "body": body.decode("utf-8", "replace")}, status=404)
