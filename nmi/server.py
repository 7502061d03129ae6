"""aiohttp apps, HTTP only: the IMDS-compatible token server, the probe server and the metrics server.

Handlers are thin: parse with `imds`, ask the broker, render with `imds`. Every failure becomes an IMDS JSON answer
in one place (`failure_response`): an NmiError its own status, anything else is a bug: 500 JSON, the traceback
only in the log, and we keep serving.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import time
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any, Awaitable, Callable, Mapping, cast

import aiohttp
from aiohttp import web

from . import __version__, fast_http, imds
from .broker import Outcome, TokenBroker
from .errors import BadRequest, Forbidden, MethodNotAllowed, NmiError, Unavailable
from .fast_http import SimpleGet
from .imds import Route
from .model import PodInfo
from .observer import AccessObserver
from .proxy import ImdsProxy
from .readiness import DRAIN_CUT, DaemonState, Drain
from .request_cache import RenderedBodies, query_of, route_of

log = logging.getLogger(__name__)

HOST_CALLER = "127.0.0.1"


@dataclass(frozen=True, slots=True)
class TokenServerConfig:
    metadata_header_required: bool = True
    block_instance_metadata: bool = False


BROKER = web.AppKey("broker", TokenBroker)
CONFIG = web.AppKey("config", TokenServerConfig)
STATE = web.AppKey("state", DaemonState)
OBSERVER = web.AppKey("observer", AccessObserver)
PROXY = web.AppKey("proxy", ImdsProxy)
BODIES = web.AppKey("bodies", RenderedBodies)
DRAIN = web.AppKey("drain", Drain)

def caller_ip(request: web.Request) -> str:
    """The TCP peer address (DNAT keeps the pod's source address). IPv4-mapped IPv6 is unwrapped."""
    peer = request.transport.get_extra_info("peername") if request.transport else None
    return peer_ip(peer[0]) if peer else ""


def peer_ip(host: str) -> str:
    """A peer address as the pod index spells IPs: IPv4-mapped IPv6 unwrapped, IPv6 compressed."""
    if ":" not in host:  # an AF_INET peer: the kernel's dotted quad is already the canonical spelling
        return host
    address = ipaddress.ip_address(host)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return str(address)

# On every answer nmi gives itself (not on IMDS answers it proxies): how `nmi doctor` tells nmi from IMDS.
SERVER_HEADER = {"Server": f"nmi/{__version__}"}

def json_response(body: str | bytes, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    if isinstance(body, str):
        body = body.encode()
    # The headers aiohttp writes for text= with this content type, without re-encoding a cached body.
    return web.Response(body=body, status=status, content_type="application/json", charset="utf-8",
                        headers={**SERVER_HEADER, **headers} if headers else SERVER_HEADER)

def error_response(error: NmiError) -> web.Response:
    return json_response(imds.render_error(error), status=error.status, headers=imds.error_headers(error))


def failure_response(failure: Exception, *, where: str) -> web.Response:
    """The one place a failure becomes an answer. aiohttp's own refusals (e.g. 404 for `OPTIONS *`) get IMDS JSON
    too; an HTTPException below 400 is not a failure and is raised again."""
    if isinstance(failure, NmiError):
        return error_response(failure)
    if isinstance(failure, web.HTTPException):
        if failure.status < 400:
            raise failure
        return error_response(imds.error_for_status(failure.status, failure.reason))
    # A bug: answer, log with traceback, keep serving.
    log.error("internal error handling %s", where, exc_info=failure)
    return error_response(imds.error_for_status(500))


@web.middleware
async def errors_as_imds_json(request: web.Request,
                              handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    try:
        return await handler(request)
    except Exception as failure:
        return failure_response(failure, where=f"{request.method} {request.path}")


async def expect_only_continue(request: web.Request) -> web.Response | None:
    """aiohttp's default expect handler, except that an unknown `Expect` gets IMDS JSON (the default answers
    a text 417 before any middleware runs)."""
    if request.version != aiohttp.HttpVersion11:
        return None
    if request.headers.get("Expect", "").lower() != "100-continue":
        return error_response(imds.error_for_status(417, "Only Expect: 100-continue is understood"))
    await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    request.writer.output_size = 0  # as aiohttp's default does: the interim answer is not the response
    return None


async def dispatch(request: web.Request) -> web.StreamResponse:
    config = request.app[CONFIG]
    path, route = route_of(request.raw_path, config.block_instance_metadata)
    if route is Route.TOKEN:
        return await observed(request, route, token)
    if route is Route.HOST_TOKEN:
        return await observed(request, route, host_token)
    if route is Route.INVALID_TOKEN_PATH:
        raise BadRequest("Invalid request")
    if route is Route.INSTANCE_BLOCKED:
        raise Forbidden("Request blocked by AAD Pod Identity NMI")
    imds.check_common(request.method, request.headers, metadata_required=config.metadata_header_required)
    imds.check_proxyable(path)
    return await request.app[PROXY].forward(request, path)

@dataclass(slots=True)
class Seen:
    """What a token handler learnt before it answered or failed: what the observer is told."""

    resource: str = ""
    pod: PodInfo | None = None  # the caller, once identified
    outcome: Outcome | None = None


TokenHandler = Callable[[web.Request, Seen], Awaitable[web.Response]]


async def observed(request: web.Request, route: Route, handler: TokenHandler) -> web.Response:
    """Runs a token handler and reports every request, including failed ones, to the observer."""
    started = time.perf_counter()
    seen = Seen()
    drain, task = request.app[DRAIN], cast("asyncio.Task[Any]", asyncio.current_task())  # a handler runs in a task
    drain.in_flight.add(task)
    try:
        response = await handler(request, seen)
    except asyncio.CancelledError:
        if not drain.cut or task is None:
            raise
        task.uncancel()  # cancelled by the drain, not by the server: answer instead of vanishing
        response = error_response(Unavailable(DRAIN_CUT + "; retry", retry_after=1))
    except Exception as failure:
        response = failure_response(failure, where=f"{request.method} {route.value}")
    finally:
        drain.in_flight.discard(task)
    request.app[OBSERVER].token_request(route=route.value, method=request.method[:16], status=response.status,
                                        remote=caller_ip(request),
                                        resource=seen.resource or request.query.get("resource", ""),
                                        outcome=seen.outcome, pod=seen.pod, seconds=time.perf_counter() - started)
    return response


async def token(request: web.Request, seen: Seen) -> web.Response:
    app = request.app  # a property walk per access: once per request
    parsed = imds.parse_token_request(request.method, request.headers, query_of(request.rel_url.raw_query_string),
                                      metadata_required=app[CONFIG].metadata_header_required)
    seen.resource = parsed.resource
    broker = app[BROKER]
    seen.pod = await broker.caller(caller_ip(request))
    seen.outcome = outcome = await broker.token_for(seen.pod, parsed)
    body = app[BODIES].render(outcome.grant.tokens, resource=parsed.resource, now=time.time())
    return json_response(body)


async def host_token(request: web.Request, seen: Seen) -> web.Response:
    if caller_ip(request) != HOST_CALLER:
        raise Forbidden("/host/token is only served to callers on the node's loopback address")
    podns, podname = request.headers.get("podns", ""), request.headers.get("podname", "")
    if not podns or not podname:
        raise BadRequest("missing 'podname' and 'podns' from request header")
    parsed = imds.parse_token_request(request.method, request.headers, query_of(request.rel_url.raw_query_string),
                                      metadata_required=False)
    seen.resource = parsed.resource
    broker = request.app[BROKER]
    seen.pod = broker.named_pod(podns, podname)
    # No exception shortcut for a named pod, as upstream.
    seen.outcome = outcome = await broker.token_for(seen.pod, parsed, node_identity_allowed=False)
    client_id = outcome.identity.client_id if outcome.identity else ""
    body = imds.render_host_token(outcome.grant.primary, resource=parsed.resource, client_id=client_id, now=time.time())
    return json_response(body)


_OK = b"HTTP/1.1 200 OK\r\n"
_JSON_HEADERS = "".join(f"{name}: {value}\r\n" for name, value in (
    *SERVER_HEADER.items(), ("Content-Type", "application/json; charset=utf-8"))).encode()


class FastTokenLane:
    """The token route's `nmi.listen.FastLane`: a cached token for a caller the caches know, answered and observed
    as `observed(token)` answers and observes it; None for anything else (a refusal, a miss, a wait, another
    route, an untrusted cache), which aiohttp then serves through `token` as if this lane did not exist.

    It decides with the same steps as `token` (`route_of`, `imds.parse_token_request`, `TokenBroker.cached_caller`
    and `cached_outcome`, `RenderedBodies`), each of which answers only what its awaiting twin would."""

    def __init__(self, app: web.Application) -> None:
        self._broker, self._config, self._bodies = app[BROKER], app[CONFIG], app[BODIES]
        self._observer, self._drain = app[OBSERVER], app[DRAIN]

    def __call__(self, request: SimpleGet, source: str) -> bytes | None:
        try:
            return self._answer_now(request, source)
        except Exception:  # a bug: aiohttp's path answers (500 if it meets the same bug) and nmi keeps serving
            log.error("internal error in the token route's fast lane", exc_info=True)
            return None

    def _answer_now(self, request: SimpleGet, source: str) -> bytes | None:
        if self._drain.cut:
            return None
        started = time.perf_counter()
        try:
            _, route = route_of(request.target, self._config.block_instance_metadata)
            if route is not Route.TOKEN:
                return None
            parsed = imds.parse_token_request("GET", request.headers, query_of(request.query),
                                              metadata_required=self._config.metadata_header_required)
            ip = peer_ip(source)
            pod = self._broker.cached_caller(ip)
            outcome = self._broker.cached_outcome(pod, parsed) if pod is not None else None
        except NmiError:
            return None  # refused (the path or the request): aiohttp's path says why, in its own words
        if outcome is None:
            return None
        answer = self._bodies.framed(outcome.grant.tokens, resource=parsed.resource, now=time.time(), frame=_framed)
        self._observer.token_request(route=route.value, method="GET", status=200, remote=ip, resource=parsed.resource,
                                     outcome=outcome, pod=pod, seconds=time.perf_counter() - started)
        return answer


def _framed(body: bytes, second: int) -> bytes:
    """200 with the headers `json_response` gives and aiohttp writes, Date of the body's own second."""
    return fast_http.answer(_OK, _JSON_HEADERS, body, formatdate(second, usegmt=True))


FAST_LANE = web.AppKey("fast_lane", FastTokenLane)


def token_app(broker: TokenBroker, *, config: TokenServerConfig, state: DaemonState, proxy: ImdsProxy,
              observer: AccessObserver | None = None) -> web.Application:
    app = web.Application(middlewares=[errors_as_imds_json], client_max_size=64 * 1024)
    app[BODIES] = RenderedBodies()
    app[BROKER] = broker
    app[CONFIG] = config
    app[STATE] = state
    app[PROXY] = proxy
    app[OBSERVER] = observer or AccessObserver()
    app[DRAIN] = Drain()
    app[FAST_LANE] = FastTokenLane(app)
    app.router.add_route("*", "/{tail:.*}", dispatch, expect_handler=expect_only_continue)
    return app

Explain = Callable[[Mapping[str, str]], dict[str, Any]]


def probe_app(state: DaemonState, *, explain: Explain | None = None) -> web.Application:
    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="Active" if state.active else "Not Active")

    async def readyz(request: web.Request) -> web.Response:
        if state.ready:
            return web.Response(text="ok")
        return web.Response(text="not ready: " + ", ".join(state.not_ready_because()), status=503)

    app = web.Application()
    app.router.add_route("*", "/healthz", healthz)
    app.router.add_route("*", "/readyz", readyz)
    if explain is not None:
        app.router.add_route("*", "/explain", _explain_handler(explain))
    return app


EXPLAIN_PARAMETERS = ("namespace", "pod", "resource", "client_id", "msi_res_id", "mi_res_id")


def _explain_handler(explain: Explain) -> Callable[[web.Request], Awaitable[web.Response]]:
    """The probe port listens on every address (the kubelet probes it): only callers on the node's loopback may
    ask, since the answer describes other pods' identities."""

    async def handler(request: web.Request) -> web.Response:
        try:
            return json_response(json.dumps(explain(_explain_query(request)), indent=1, sort_keys=True))
        except Exception as failure:
            return failure_response(failure, where="/explain")

    return handler


def _explain_query(request: web.Request) -> dict[str, str]:
    if not ipaddress.ip_address(caller_ip(request) or "0.0.0.0").is_loopback:
        raise Forbidden("/explain is only served to callers on the node's loopback address")
    if request.method != "GET":
        raise MethodNotAllowed("/explain accepts GET only")
    query: dict[str, str] = {}
    for key, value in imds.parse_query(request.rel_url.raw_query_string):  # decoded once, as the token routes
        if key in query or key not in EXPLAIN_PARAMETERS:
            raise BadRequest(f"query parameter {key[:64]!r} is repeated or unknown")
        query[key] = value.strip()
    if not query.get("namespace") or not query.get("pod"):
        raise BadRequest("namespace and pod are required")
    return query


def metrics_app(render: Callable[[], tuple[bytes, str]]) -> web.Application:
    async def metrics(request: web.Request) -> web.Response:
        body, content_type = render()
        response = web.Response(body=body)
        response.headers["Content-Type"] = content_type
        return response

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    return app

