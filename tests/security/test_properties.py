"""Deliverable 2 of issue 10: a property-based attack on the token app over path, query, header and method
space, sent as raw bytes through the daemon's own listen path (so aiohttp's parser is in the loop), with the
broker's test doubles and a fake IMDS that records every request it receives. For every input:

* nothing reaches IMDS whose canonical form — decoded once or twice, `\\` as `/`, dot segments resolved, any
  case — is a nmi route (token, host token), anything under /metadata/identity, or blocked (/metadata/instance);
  and what reaches it is already canonical;
* no answer carries a token of an identity the caller is not bound to;
* every error nmi answers is IMDS JSON {"error", "error_description"} with application/json.

Deterministic (derandomized, no example database) and bounded (max_examples) for CI.
"""

from __future__ import annotations

import asyncio
import json
import posixpath
import re
import socket
import threading
from typing import Any
from urllib.parse import quote, unquote

import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nmi.broker import MANAGED, BrokerPolicy, TokenBroker
from fakes.serving import FakeSite
from nmi.listen import ConnectionLimits, GuardedSite
from nmi.proxy import ImdsProxy
from nmi.readiness import DaemonState
from nmi.server import TokenServerConfig, token_app
from tests.core.doubles import Catalog, Pods, Tokens, binding, identity, pod
from tests.security import rawhttp

NODE_PROCESS = "127.0.0.1"  # the node itself: may use /host/token; no pod has this address
PODS = [pod("app", "127.0.0.2", label="two"), pod("solo", "127.0.0.3", ns="team", label="one"),
        pod("bare", "127.0.0.4")]
UNKNOWN = "127.0.0.5"
SOURCES = [NODE_PROCESS, "127.0.0.2", "127.0.0.3", "127.0.0.4", UNKNOWN]
IDENTITIES = [identity("i1", "cid-1"), identity("i2", "cid-2"), identity("i3", "cid-3", ns="team"),
              identity("i4", "cid-4")]  # i4: in the namespace, bound to nobody
BINDINGS = [binding("b1", "i1", "two", weight=1), binding("b2", "i2", "two"), binding("b3", "i3", "one", ns="team")]
BOUND = {"127.0.0.2": {"cid-1", "cid-2"}, "127.0.0.3": {"cid-3"}}  # by caller address
BOUND_BY_NAME = {("default", "app"): BOUND["127.0.0.2"], ("team", "solo"): BOUND["127.0.0.3"]}

PROFILE = settings(max_examples=250, deadline=None, derandomize=True, database=None,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


class RecordingImds:
    """Answers every request 200 with a marker header and records (method, raw path)."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str]] = []
        self.site = FakeSite()
        self.port = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append((request.method, request.raw_path))
        await request.read()
        return web.json_response({"upstream": True}, headers={"X-From-Upstream": "1"})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        _, self.port = await self.site.serve(app, "127.0.0.1", 0)


class World:
    """The token app on a GuardedSite and the recording IMDS, on an event loop of their own (a thread), so the
    test thread can speak raw bytes to them while hypothesis drives."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="property-world", daemon=True)
        self.imds = RecordingImds()
        self.port = 0

    def run(self, coro) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def start(self) -> None:
        self.thread.start()
        self.run(self._start())

    async def _start(self) -> None:
        await self.imds.start()
        broker = TokenBroker(Pods(*PODS), Catalog(bound=BINDINGS, ids=IDENTITIES), Tokens(),
                             policy=BrokerPolicy(mode=MANAGED, namespaced=True))
        self.proxy = ImdsProxy("127.0.0.1", self.imds.port, timeout=5)
        app = token_app(broker, config=TokenServerConfig(block_instance_metadata=True),
                        state=DaemonState(chain_required=False, cache_problems=lambda: []), proxy=self.proxy)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = GuardedSite(self.runner, "127.0.0.1", 0, limits=ConnectionLimits(per_source=64, total=500),
                           head_timeout=5, json_errors=True)
        await site.start()
        self.port = site.port

    def stop(self) -> None:
        async def _stop() -> None:
            await self.runner.cleanup()
            await self.proxy.close()
            await self.imds.site.stop()
        try:
            self.run(_stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)

    def recorded(self) -> list[tuple[str, str]]:
        return self.run(_snapshot(self.imds.requests))


async def _snapshot(items: list) -> list:
    return list(items)


@pytest.fixture(scope="module")
def world():
    world = World()
    world.start()
    yield world
    world.stop()


# ---- strategies -------------------------------------------------------------------------------------------

SEGMENTS = ["metadata", "identity", "oauth2", "token", "instance", "host", "compute", "versions", "attested",
            ".", "..", "", "%2e", "%2E%2e", "%252F", "%255C", "%00", "%ff", "%0a", "%1b", "%E2%80%A8", "x;y",
            "%3F", "%23", "instance.", "metadata.", "%69dentity", "%49NSTANCE", "tokenX", "info", "\u212a"]
SEPARATORS = ["/", "\\", "%2F", "%2f", "%5C", "%5c", "//", "/./", "/../"]
METHODS = ["GET", "GET", "GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "TRACE", "get", "GeT",
           "M-SEARCH", "PROPFIND", "FOO", "G\x1bET", ""]


@st.composite
def paths(draw) -> str:
    pieces = draw(st.lists(st.one_of(st.sampled_from(SEGMENTS), st.text("abcXYZ019-_.~", max_size=5)),
                           max_size=7))
    cased = [piece.upper() if draw(st.booleans()) and "%" not in piece else piece for piece in pieces]
    path = ""
    for piece in cased:
        path += draw(st.sampled_from(SEPARATORS)) + piece
    prefix = draw(st.sampled_from(["", "", "", "http://169.254.169.254", "HTTP://x:80"]))
    if draw(st.booleans()):
        path += draw(st.sampled_from(["/", "\\", "%2F", "."]))
    return prefix + (path or "/")


QUERY_KEYS = ["resource", "client_id", "msi_res_id", "mi_res_id", "object_id", "api-version", "x", "Resource",
              "CLIENT_ID"]
QUERY_VALUES = ["r", "", "https%3A%2F%2Fvault.azure.net", "cid-1", "CID-1", "cid-2", "cid-3", "cid-4", "node-system",
                "/subscriptions/s/resourcegroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/i4",
                "oid-cid-3", "oid-cid-4", "%00", "%E2%80%A8", "%20cid-3%20", "cid-1%00", "%1b"]


@st.composite
def queries(draw) -> str:
    pairs = draw(st.lists(st.tuples(st.sampled_from(QUERY_KEYS), st.sampled_from(QUERY_VALUES)), max_size=4))
    joiner = draw(st.sampled_from(["&", "&", ";", "%26"]))
    query = joiner.join(f"{key}={value}" for key, value in pairs)
    return ("?" + query) if pairs or draw(st.booleans()) else ""


HEADER_CHOICES = {
    "Metadata": ["true", "True", "false", "", "true, true"],
    "X-Forwarded-For": ["1.2.3.4"],
    "podns": ["default", "team", "kube-system", ""],
    "podname": ["app", "solo", "bare", "nope"],
    "Expect": ["100-continue", "200-ok", "x"],
    "Connection": ["keep-alive, Upgrade", "Metadata"],
    "Upgrade": ["websocket", "h2c"],
    "Accept": ["text/html", "*/*"],
    "X-Ms-Client-Request-Id": ["abc", "\xc2\x85"],
}


@st.composite
def headers(draw) -> dict[str, str]:
    names = draw(st.sets(st.sampled_from(sorted(HEADER_CHOICES)), max_size=5))
    chosen = {name: draw(st.sampled_from(HEADER_CHOICES[name])) for name in names}
    if draw(st.integers(0, 3)):  # usually present, as SDKs send it
        chosen.setdefault("Metadata", "true")
    return chosen


# ---- the oracle -------------------------------------------------------------------------------------------

FORBIDDEN_PREFIXES = ("/metadata/identity", "/host/token", "/metadata/instance")
MANGLED = re.compile(r"metadata.*identity.*oauth2.*token")


def server_views(raw_path: str) -> set[str]:
    """Every way a server might read a forwarded path: decoded zero, one or two times, `\\` as `/`, dot segments
    resolved, case folded, `;params` dropped, trailing dots of segments dropped."""
    path = raw_path.split("?", 1)[0]
    views = set()
    for decodings in range(3):
        view = path
        for _ in range(decodings):
            view = unquote(view)
        view = posixpath.normpath("/" + view.replace("\\", "/")).casefold()
        views.add(view)
        views.add(re.sub(r";[^/]*", "", view))
        views.add("/".join(segment.rstrip(".") for segment in view.split("/")))
    return views


def assert_not_a_route_or_blocked(raw_path: str) -> None:
    for view in server_views(raw_path):
        assert not view.lstrip("/").startswith(tuple(p.lstrip("/") for p in FORBIDDEN_PREFIXES)), (raw_path, view)
        assert not MANGLED.search(view), (raw_path, view)
    path = raw_path.split("?", 1)[0]  # what nmi forwards is the canonical path itself
    assert "%" not in path and "\\" not in path and "//" not in path, raw_path
    assert not any(segment in (".", "..") for segment in path.split("/")), raw_path


def tokens_in(body: Any) -> list[dict]:
    if isinstance(body, list):
        return [t for t in body if isinstance(t, dict)]
    if isinstance(body, dict) and isinstance(body.get("token"), dict):
        return [body["token"]]
    return [body] if isinstance(body, dict) and "access_token" in body else []


def check_answer(answer: rawhttp.RawAnswer, *, method: str, source: str, sent_headers: dict[str, str]) -> None:
    from_upstream = answer.headers.get("x-from-upstream") == "1"
    if from_upstream:
        assert b"access_token" not in answer.body
        return
    if answer.status >= 400:
        assert answer.headers.get("content-type", "").startswith("application/json"), answer
        if method != "HEAD":
            body = json.loads(answer.body)
            assert isinstance(body, dict) and set(body) == {"error", "error_description"}, body
            assert all(isinstance(v, str) for v in body.values()), body
        return
    if answer.status == 200 and method != "HEAD":
        body = json.loads(answer.body)
        tokens = tokens_in(body)
        assert tokens, body
        if "clientid" in body:  # /host/token: the node names a pod; only the node may
            assert source == NODE_PROCESS
            allowed = BOUND_BY_NAME.get((sent_headers.get("podns"), sent_headers.get("podname")), set())
        else:
            allowed = BOUND.get(source, set())
        for token in tokens:
            assert token["client_id"] in allowed, (source, token)
            assert token["access_token"].startswith(f"tok-{token['client_id']}-")


def raw_request(method: str, target: str, sent_headers: dict[str, str]) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: 169.254.169.254", *(f"{k}: {v}" for k, v in sent_headers.items()),
             "Connection: close"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")


def exchange(world: World, data: bytes, source: str) -> rawhttp.RawAnswer:
    try:
        return rawhttp.send(world.port, data, source=source, timeout=10)
    except socket.timeout:  # a stall is a failure of "no input stalls the daemon"
        raise AssertionError(f"no answer within 10 s to {data!r}") from None


@PROFILE
@given(method=st.sampled_from(METHODS), path=paths(), query=queries(), sent_headers=headers(),
       source=st.sampled_from(SOURCES))
def test_no_request_reaches_imds_on_a_route_gets_a_foreign_token_or_a_non_json_error(world, method, path, query,
                                                                                    sent_headers, source):
    before = len(world.recorded())
    answer = exchange(world, raw_request(method, path + query, sent_headers), source)
    for _, raw_path in world.recorded()[before:]:
        assert_not_a_route_or_blocked(raw_path)
    check_answer(answer, method=method, source=source, sent_headers=sent_headers)


@PROFILE
@given(selector=st.sampled_from(["client_id", "msi_res_id", "mi_res_id", "object_id"]),
       wanted=st.sampled_from(IDENTITIES), source=st.sampled_from(SOURCES),
       spelling=st.sampled_from(["/metadata/identity/oauth2/token", "/METADATA/Identity/OAUTH2/token/",
                                 "/metadata%5Cidentity%5Coauth2%5Ctoken", "/metadata\\identity/oauth2\\token",
                                 "//metadata/./identity/x/../oauth2/token"]),
       case=st.sampled_from([str, str.upper]))
def test_asking_for_any_identity_in_any_spelling_yields_only_the_callers_own(world, selector, wanted, source,
                                                                              spelling, case):
    value = {"client_id": case(wanted.client_id), "object_id": f"oid-{wanted.client_id}"}.get(selector,
                                                                                            case(wanted.resource_id))
    before = len(world.recorded())
    answer = exchange(world, raw_request("GET", f"{spelling}?resource=r&{selector}={quote(value, safe='')}",
                                         {"Metadata": "true"}), source)
    assert world.recorded()[before:] == []
    check_answer(answer, method="GET", source=source, sent_headers={})
    if answer.status == 200:
        assert wanted.client_id in BOUND.get(source, set())


@PROFILE
@given(raw=st.binary(max_size=200), source=st.sampled_from(SOURCES))
def test_arbitrary_bytes_get_an_imds_json_answer_or_a_close_never_a_stall(world, raw, source):
    before = len(world.recorded())
    try:
        with rawhttp.connect(world.port, source=source, timeout=10) as sock:
            sock.sendall(raw + b"\r\n\r\n")
            sock.shutdown(socket.SHUT_WR)
            received = b""
            while chunk := sock.recv(65536):
                received += chunk
    except socket.timeout:
        raise AssertionError(f"no answer within 10 s to {raw!r}") from None
    except ConnectionResetError:
        received = b""
    for _, raw_path in world.recorded()[before:]:
        assert_not_a_route_or_blocked(raw_path)
    if received.startswith(b"HTTP/"):
        answer = rawhttp.parse(received)
        check_answer(answer, method=raw.split(b" ", 1)[0].decode("latin-1"), source=source, sent_headers={})
