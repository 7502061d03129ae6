"""aiohttp apps: the IMDS-compatible token server, the probe server and the metrics server.

Handlers are thin: parse with `imds`, decide with the broker, render with `imds`. Every NmiError becomes IMDS
JSON in one middleware; anything else is a bug: 500 JSON, the traceback only in the log, and we keep serving.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Mapping, cast

import aiohttp
from aiohttp import web

from . import __version__, imds
from .broker import Outcome, TokenBroker
from .errors import BadRequest, Forbidden, MethodNotAllowed, NmiError, Unavailable
from .imds import Route
from .proxy import ImdsProxy
from .request_cache import RenderedBodies, query_of, route_of

log = logging.getLogger(__name__)

HOST_CALLER = "127.0.0.1"

def _caches_not_wired() -> list[str]:
    return ["no watch cache wired yet"]


@dataclass
class DaemonState:
    """What the probes report. Mutated only by the daemon's root tasks, on the loop.

    Readiness tells the truth (SPEC §6, §7): every condition under which nmi cannot answer correctly is a reason —
    each watch cache not synced or stale (`cache_problems`, wired to `nmi.freshness.CacheHealth.problems`), the
    chain not in place, shutting down — and each clears when its cause does.
    """

    chain_installed: bool = False
    shutting_down: bool = False
    chain_required: bool = True
    cache_problems: Callable[[], list[str]] = _caches_not_wired

    @property
    def active(self) -> bool:
        return self.chain_installed or not self.chain_required

    @property
    def caches_synced(self) -> bool:
        """Every watch cache synced and fresh (what the token route needs to answer from the caches)."""
        return not self.cache_problems()

    @property
    def ready(self) -> bool:
        return not self.not_ready_because()

    def not_ready_because(self) -> list[str]:
        problems = self.cache_problems()
        why = ["caches not synced or stale: " + "; ".join(problems)] if problems else []
        if not self.active:
            why.append("aad-metadata chain not in place")
        if self.shutting_down:
            why.append("shutting down")
        return why

class Drain:
    """Token requests in flight at shutdown. When the drain time is nearly spent, those still running are
    answered 503 + Retry-After (`answer_all_now`) instead of having their connection cut by the server."""

    def __init__(self) -> None:
        self.in_flight: set[asyncio.Task] = set()
        self.cut = False

    def answer_all_now(self) -> None:
        self.cut = True
        for task in list(self.in_flight):
            task.cancel(DRAIN_CUT)


DRAIN_CUT = "nmi is shutting down"

@dataclass(frozen=True, slots=True)
class TokenServerConfig:
    metadata_header_required: bool = True
    block_instance_metadata: bool = False

class AccessObserver:
    """Hooks the server calls after each token request; the daemon plugs metrics, logs and audit in here."""

    def token_request(self, *, route: str, method: str, status: int, remote: str, resource: str,
                      outcome: Outcome | None, pod_key: str, seconds: float) -> None:
        """Called once per token-route or host-token request, whatever the status. `pod_key` names the caller
        when it was identified but the request failed afterwards."""

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
    if not peer:
        return ""
    if ":" not in peer[0]:  # an AF_INET peer: the kernel's dotted quad is already the canonical spelling
        return peer[0]
    address = ipaddress.ip_address(peer[0])
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

@web.middleware
async def errors_as_imds_json(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]):
    try:
        return await handler(request)
    except NmiError as error:
        return error_response(error)
    except web.HTTPException as exc:  # aiohttp's own refusals (e.g. 404 for `OPTIONS *`) get IMDS JSON too
        if exc.status < 400:
            raise
        return error_response(http_error(exc.status, exc.reason))
    except Exception:  # a bug: answer, log with traceback, keep serving
        log.exception("internal error handling %s %s", request.method, request.path)
        return error_response(NmiError("Internal error; see the nmi log"))

def http_error(status: int, reason: str) -> NmiError:
    error = BadRequest(reason or "Bad request") if status < 500 else NmiError(reason or None)
    error.status = status
    return error


async def expect_only_continue(request: web.Request) -> web.Response | None:
    """aiohttp's default expect handler, except that an unknown `Expect` gets IMDS JSON (the default answers
    a text 417 before any middleware runs)."""
    if request.version != aiohttp.HttpVersion11:
        return None
    if request.headers.get("Expect", "").lower() != "100-continue":
        return error_response(http_error(417, "Only Expect: 100-continue is understood"))
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

async def observed(request: web.Request, route: Route,
                   handler: Callable[[web.Request], Awaitable[tuple[web.Response, Outcome, str]]]) -> web.Response:
    """Runs a token handler and reports every request, including failed ones, to the observer."""
    started = time.perf_counter()
    outcome: Outcome | None = None
    resource = pod_key = ""
    drain, task = request.app[DRAIN], cast("asyncio.Task[Any]", asyncio.current_task())  # a handler runs in a task
    drain.in_flight.add(task)
    try:
        response, outcome, resource = await handler(request)
    except NmiError as error:
        response = error_response(error)
        pod_key = error.pod_key
    except asyncio.CancelledError:
        if not drain.cut or task is None:
            raise
        task.uncancel()  # cancelled by the drain, not by the server: answer instead of vanishing
        response = error_response(Unavailable(DRAIN_CUT + "; retry", retry_after=1))
    except Exception:
        log.exception("internal error handling %s %s", request.method, route.value)
        response = error_response(NmiError("Internal error; see the nmi log"))
    finally:
        drain.in_flight.discard(task)
    if not resource:
        resource = request.query.get("resource", "")
    request.app[OBSERVER].token_request(route=route.value, method=request.method[:16], status=response.status,
                                        remote=caller_ip(request),
                                        resource=resource, outcome=outcome, pod_key=pod_key,
                                        seconds=time.perf_counter() - started)
    return response

async def token(request: web.Request) -> tuple[web.Response, Outcome, str]:
    app = request.app  # a property walk per access: once per request
    parsed = imds.parse_token_request(request.method, request.headers, query_of(request.query_string),
                                      metadata_required=app[CONFIG].metadata_header_required)
    outcome = await app[BROKER].for_caller(caller_ip(request), parsed)
    body = app[BODIES].render(outcome.grant.tokens, resource=parsed.resource, now=time.time())
    return json_response(body), outcome, parsed.resource

async def host_token(request: web.Request) -> tuple[web.Response, Outcome, str]:
    if caller_ip(request) != HOST_CALLER:
        raise Forbidden("/host/token is only served to callers on the node's loopback address")
    podns, podname = request.headers.get("podns", ""), request.headers.get("podname", "")
    if not podns or not podname:
        raise BadRequest("missing 'podname' and 'podns' from request header")
    parsed = imds.parse_token_request(request.method, request.headers, query_of(request.query_string),
                                      metadata_required=False)
    outcome = await request.app[BROKER].for_named_pod(podns, podname, parsed)
    client_id = outcome.identity.client_id if outcome.identity else ""
    body = imds.render_host_token(outcome.grant.primary, resource=parsed.resource, client_id=client_id, now=time.time())
    return json_response(body), outcome, parsed.resource

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


def _explain_handler(explain: Explain):
    """The probe port listens on every address (the kubelet probes it): only callers on the node's loopback may
    ask, since the answer describes other pods' identities."""

    async def handler(request: web.Request) -> web.Response:
        try:
            if not ipaddress.ip_address(caller_ip(request) or "0.0.0.0").is_loopback:
                raise Forbidden("/explain is only served to callers on the node's loopback address")
            if request.method != "GET":
                raise MethodNotAllowed("/explain accepts GET only")
            query: dict[str, str] = {}
            for key, value in imds.parse_query(request.query_string):
                if key in query or key not in EXPLAIN_PARAMETERS:
                    raise BadRequest(f"query parameter {key[:64]!r} is repeated or unknown")
                query[key] = value.strip()
            if not query.get("namespace") or not query.get("pod"):
                raise BadRequest("namespace and pod are required")
            report = explain(query)
        except NmiError as error:
            return error_response(error)
        except Exception:  # a bug: answer, log with traceback, keep serving
            log.exception("internal error handling /explain")
            return error_response(NmiError("Internal error; see the nmi log"))
        return json_response(json.dumps(report, indent=1, sort_keys=True))

    return handler

def metrics_app(render: Callable[[], tuple[bytes, str]]) -> web.Application:
    async def metrics(request: web.Request) -> web.Response:
        body, content_type = render()
        response = web.Response(body=body)
        response.headers["Content-Type"] = content_type
        return response

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    return app

