"""The token route's fast lane (nmi.fast_http, listen.GuardedRequestHandler, server.FastTokenLane) against the real
assembled daemon parts, the fake API server and the fake IMDS, over real sockets.

One token app is served on two ports: one with the fast lane, one without (aiohttp alone, the reference). What the
fast lane answers must be byte for byte what aiohttp's path answers (but the Date), it must answer nothing it
cannot be sure of, never out of order on a connection, and a connection must never be answered beside a request
aiohttp is still reading.
"""

from __future__ import annotations

import asyncio
import json
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any, AsyncIterator
from urllib.parse import quote

import pytest
from aiohttp import web

from fakes.imds import Fault, FakeImds, VmIdentity
from fakes.kubeobjects import make_binding, make_exception, make_identity, make_pod
from nmi.assembly import assemble
from nmi.fast_http import SimpleGet
from nmi.listen import ConnectionLimits, GuardedSite
from nmi.server import FAST_LANE, token_app
from tests.core.test_assembly import NODE, settings_for
from tests.eventually import eventually

ARM = "https://management.azure.com/"
VM = VmIdentity(client_id="aaaaaaaa-1111-4111-8111-aaaaaaaaaaaa", object_id="0a000000-0000-4000-8000-00000000000a")
CALLER = "127.0.0.1"  # the bound pod
STRANGER = "127.0.0.7"  # no pod has this IP


def token_get(resource: str = ARM, *, extra: str = "Metadata: true\r\n", target: str | None = None,
              version: str = "HTTP/1.1") -> bytes:
    target = target or f"/metadata/identity/oauth2/token?api-version=2018-02-01&resource={quote(resource, safe='')}"
    return f"GET {target} {version}\r\nHost: 169.254.169.254\r\n{extra}\r\n".encode()


@dataclass
class Counting:
    """Wraps the real lane, counting what it answered."""

    lane: Any
    answered: int = 0
    offered: list[str] = field(default_factory=list)

    def __call__(self, request: SimpleGet, source: str) -> bytes | None:
        self.offered.append(request.target)
        answer = self.lane(request, source)
        self.answered += answer is not None
        return answer


@dataclass
class Lanes:
    fast_port: int
    plain_port: int
    lane: Counting
    imds: FakeImds
    apiserver: Any
    server: Any = None  # aiohttp's web.Server behind both ports


async def _serve(runner: web.AppRunner, *, fast: Any) -> int:
    site = GuardedSite(runner, "127.0.0.1", 0, limits=ConnectionLimits(), json_errors=True, fast=fast)
    await site.start()
    server = site._server
    assert server is not None and server.sockets
    return int(server.sockets[0].getsockname()[1])


@pytest.fixture
async def lanes(apiserver, tmp_path) -> AsyncIterator[Lanes]:
    imds = FakeImds([VM])
    await imds.start()
    apiserver.put(make_identity("id", "default", client_id=VM.client_id))
    apiserver.put(make_binding("b", "default", identity="id", selector="sel"))
    apiserver.put(make_pod("app", "default", CALLER, NODE, labels={"aadpodidbinding": "sel"}))
    async with AsyncExitStack() as stack:
        stack.push_async_callback(imds.stop)
        settings = settings_for(tmp_path, apiserver.url, "--operation-mode=managed", "--forceNamespaced",
                                f"--metadata-port={imds.port}")
        parts = await assemble(settings, stack=stack)
        app = token_app(parts.broker, config=parts.server_config, state=parts.state, proxy=parts.proxy,
                        observer=parts.observer)
        runner = web.AppRunner(app, access_log=None, keepalive_timeout=0.6)
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        tasks = [asyncio.create_task(start(), name=name) for name, start in parts.root_tasks.items()]

        async def stop_tasks() -> None:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        stack.push_async_callback(stop_tasks)
        lane = Counting(app[FAST_LANE])
        found = Lanes(await _serve(runner, fast=lane), await _serve(runner, fast=None), lane, imds, apiserver,
                      runner.server)
        await eventually(lambda: parts.state.ready, timeout=20, what="caches synced")
        yield found


class Connection:
    """One raw keep-alive connection from a chosen source address."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int, source: str = CALLER) -> Connection:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def response(self) -> tuple[bytes, dict[str, str], bytes]:
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 10.0)
        status, *lines = head.decode("latin-1").split("\r\n")[:-2]
        headers = dict(line.split(": ", 1) for line in lines)
        body = await self.reader.readexactly(int(headers.get("Content-Length", "0")))
        return status.encode(), headers, body

    async def closed_by_server(self, within: float) -> bool:
        try:
            return await asyncio.wait_for(self.reader.read(1), within) == b""
        except asyncio.TimeoutError:
            return False

    def close(self) -> None:
        self.writer.close()


async def exchange(port: int, request: bytes, source: str = CALLER) -> tuple[bytes, dict[str, str], bytes]:
    connection = await Connection.open(port, source)
    try:
        await connection.send(request)
        return await connection.response()
    finally:
        connection.close()


def without_date(answer: tuple[bytes, dict[str, str], bytes]) -> tuple[bytes, list[tuple[str, str]], bytes]:
    status, headers, body = answer
    return status, [(k, v) for k, v in headers.items() if k != "Date"], body


async def same_second_pair(lanes: Lanes, request: bytes, source: str = CALLER):
    """The answer of each lane to the same request within one wall-clock second (expires_in counts seconds)."""
    for _ in range(5):
        fast = await exchange(lanes.fast_port, request, source)
        plain = await exchange(lanes.plain_port, request, source)
        if fast[1].get("Date") == plain[1].get("Date"):
            return fast, plain
    raise AssertionError("could not get both answers within one second")


async def test_a_cached_token_is_answered_by_the_fast_lane_exactly_as_aiohttp_answers_it(lanes):
    first = await exchange(lanes.plain_port, token_get())  # fills the cache through aiohttp's path
    assert first[0] == b"HTTP/1.1 200 OK", first
    for request in (token_get(), token_get(extra="metadata:   true  \r\nAccept: */*\r\n"),
                    token_get(target="/metadata/identity/oauth2/token/?resource=" + quote(ARM, safe="")
                              + "&api-version=2018-02-01")):
        before = lanes.lane.answered
        fast, plain = await same_second_pair(lanes, request)
        assert lanes.lane.answered == before + 1  # the fast port's answer came from the lane
        assert without_date(fast) == without_date(plain)
        assert list(fast[1]) == ["Server", "Content-Type", "Content-Length", "Date"]


@pytest.mark.parametrize("request_bytes", [
    token_get(extra=""),  # no Metadata header: 400
    token_get(extra="Metadata: false\r\n"),
    token_get(extra="Metadata: true\r\nX-Forwarded-For: 10.0.0.1\r\n"),
    token_get(resource=""),  # no resource: 400
    token_get(target="/metadata/identity/oauth2/token?resource=a&resource=b"),
    token_get(target="/metadata/identity/oauth2/token?resource=a&client_id=x&mi_res_id=y"),
    token_get(target="/metadata/identity/oauth2/token?resource=a&object_id=x"),  # needs a fetch to compare oids
    token_get(target="/metadata/identity/something"),  # refused route
    token_get(target="/host/token?resource=a"),
    token_get(target="/metadata/instance?api-version=2021-02-01"),  # proxied
    token_get(extra="Metadata: true\r\nConnection: close\r\n"),
    token_get(version="HTTP/1.0"),
    b"POST /metadata/identity/oauth2/token?resource=a HTTP/1.1\r\nMetadata: true\r\nContent-Length: 0\r\n\r\n",
    b"GET http://169.254.169.254/metadata/identity/oauth2/token?resource=a HTTP/1.1\r\nMetadata: true\r\n\r\n",
    token_get(extra="Metadata: true\r\nMetadata: true\r\n"),
    token_get(extra="Metadata: true\r\nProxy-Connection: close\r\n"),  # llhttp: close after the answer
    token_get(extra="Metadata: true\r\n" + "".join(f"X-{n}: y\r\n" for n in range(140))),  # aiohttp: 400
])
async def test_what_the_fast_lane_declines_is_answered_by_aiohttp_as_before(lanes, request_bytes):
    await exchange(lanes.plain_port, token_get())  # a cached token exists: declining is not for want of one
    before = lanes.lane.answered
    fast, plain = await same_second_pair(lanes, request_bytes)
    assert lanes.lane.answered == before
    assert without_date(fast) == without_date(plain)


async def test_a_caller_the_caches_do_not_know_is_never_answered_by_the_fast_lane(lanes):
    await exchange(lanes.plain_port, token_get())
    fast, plain = await same_second_pair(lanes, token_get(), source=STRANGER)
    assert lanes.lane.answered == 0
    assert fast[0] == plain[0] and fast[0] != b"HTTP/1.1 200 OK"


async def test_the_first_request_for_a_resource_goes_to_imds_once_then_the_fast_lane_answers(lanes):
    fast = await exchange(lanes.fast_port, token_get("https://vault.azure.net"))
    assert fast[0] == b"HTTP/1.1 200 OK" and lanes.lane.answered == 0 and lanes.imds.token_requests == 1
    again = await exchange(lanes.fast_port, token_get("https://vault.azure.net"))
    assert again[2] == fast[2] or again[0] == fast[0]
    assert lanes.lane.answered == 1 and lanes.imds.token_requests == 1


async def test_answers_on_one_connection_keep_their_order_when_the_first_waits_for_imds(lanes):
    """A miss waiting for a slow IMDS, then a request the fast lane could answer at once, on one connection:
    the fast lane must not answer ahead of aiohttp (the pod would take the second answer for the first)."""
    await exchange(lanes.plain_port, token_get())  # ARM is cached
    lanes.imds.fail_next(1, Fault(status=0, delay=0.5))  # the next IMDS call answers after 0.5 s
    connection = await Connection.open(lanes.fast_port)
    try:
        await connection.send(token_get("https://storage.azure.com/"))
        await asyncio.sleep(0.1)  # the miss is now waiting for IMDS
        await connection.send(token_get())
        first, second = await connection.response(), await connection.response()
    finally:
        connection.close()
    assert b'"resource":"https://storage.azure.com/"' in first[2]
    assert b'"resource":"https://management.azure.com/"' in second[2]


async def test_two_requests_in_one_chunk_are_aiohttps_and_so_is_the_connection_from_then_on(lanes):
    await exchange(lanes.plain_port, token_get())
    connection = await Connection.open(lanes.fast_port)
    try:
        await connection.send(token_get("https://storage.azure.com/") + token_get())
        first, second = await connection.response(), await connection.response()
        assert b"storage.azure.com" in first[2] and b"management.azure.com" in second[2]
        await connection.send(token_get())
        third = await connection.response()
    finally:
        connection.close()
    assert third[0] == b"HTTP/1.1 200 OK"
    assert lanes.lane.answered == 0  # nothing of that connection went the fast way


async def test_a_head_sent_in_pieces_is_read_by_aiohttp_alone(lanes):
    await exchange(lanes.plain_port, token_get())
    request = token_get()
    connection = await Connection.open(lanes.fast_port)
    try:
        await connection.send(request[:20])
        await asyncio.sleep(0.05)
        await connection.send(request[20:])  # alone, this rest would not parse: it must never be offered
        answer = await connection.response()
        await connection.send(request)
        again = await connection.response()
    finally:
        connection.close()
    assert answer[0] == again[0] == b"HTTP/1.1 200 OK"
    assert lanes.lane.offered == [] and lanes.lane.answered == 0


async def test_fast_answers_keep_a_connection_alive_and_an_idle_one_is_still_closed(lanes):
    """aiohttp closes a kept-alive connection idle for keepalive_timeout (0.6 s here); fast answers count as
    activity, as aiohttp's own answers do."""
    await exchange(lanes.plain_port, token_get())
    connection = await Connection.open(lanes.fast_port)
    try:
        for _ in range(8):  # 1.6 s of traffic, each gap well inside the timeout
            await connection.send(token_get())
            assert (await connection.response())[0] == b"HTTP/1.1 200 OK"
            await asyncio.sleep(0.2)
        assert lanes.lane.answered == 8
        assert await connection.closed_by_server(within=5.0)  # then idle: closed
    finally:
        connection.close()


async def test_a_removed_binding_is_seen_by_the_fast_lane_on_the_next_request_of_a_kept_connection(lanes):
    await exchange(lanes.plain_port, token_get())
    connection = await Connection.open(lanes.fast_port)
    try:
        await connection.send(token_get())
        assert (await connection.response())[0] == b"HTTP/1.1 200 OK"
        assert lanes.lane.answered == 1
        lanes.apiserver.delete("azureidentitybindings", "default", "b")

        async def refused_by_aiohttp() -> bool:
            return (await exchange(lanes.plain_port, token_get()))[0] != b"HTTP/1.1 200 OK"

        await eventually(refused_by_aiohttp, timeout=10, what="the binding's removal seen")
        await connection.send(token_get())
        answer = await connection.response()
    finally:
        connection.close()
    assert answer[0] != b"HTTP/1.1 200 OK" and b"access_token" not in answer[2]
    assert lanes.lane.answered == 1


async def test_a_stale_pod_cache_is_not_trusted_by_the_fast_lane(lanes):
    await exchange(lanes.plain_port, token_get())
    assert (await exchange(lanes.fast_port, token_get()))[0] == b"HTTP/1.1 200 OK"
    assert lanes.lane.answered == 1
    lanes.apiserver.fail_next(10_000, status=500)  # every watch and list fails from now on
    lanes.apiserver.cut_watches()

    async def untrusted() -> bool:
        return (await exchange(lanes.plain_port, token_get()))[0] != b"HTTP/1.1 200 OK"

    await eventually(untrusted, timeout=30, what="the caches no longer trusted")
    answer = await exchange(lanes.fast_port, token_get())
    assert answer[0] != b"HTTP/1.1 200 OK"
    assert lanes.lane.answered == 1


@pytest.mark.parametrize("port_of", [lambda lanes: lanes.plain_port, lambda lanes: lanes.fast_port],
                         ids=["aiohttp", "fast lane"])
async def test_the_query_is_percent_decoded_once_on_either_lane(lanes, port_of):
    """A resource holding `%41` and `+` arrives at IMDS, and is echoed, as the pod sent it (aiohttp's decoded
    query_string, decoded again by the query parser, made it `A` and ` `)."""
    resource = "https://vault.azure.net/%41+b&c=d"
    for _ in range(2):  # a miss, then a hit
        status, _, body = await exchange(port_of(lanes), token_get(resource))
        assert status == b"HTTP/1.1 200 OK"
        assert json.loads(body)["resource"] == resource
    assert [q["resource"] for q in lanes.imds.queries] == [resource]


async def test_a_bug_in_the_fast_lane_leaves_the_request_to_aiohttp_and_the_daemon_serving(lanes, caplog):
    await exchange(lanes.plain_port, token_get())
    real = lanes.lane.lane

    class Broken:
        """An observer that fails (a bug) in the real lane: the request must still be answered."""

        def __init__(self) -> None:
            self.failures = 0

        def token_request(self, **seen: Any) -> None:
            self.failures += 1
            raise RuntimeError("observer bug")

    working, broken = real._observer, Broken()
    real._observer = broken
    try:
        connection = await Connection.open(lanes.fast_port)
        try:
            await connection.send(token_get())
            status, _, _ = await connection.response()
            await connection.send(token_get())  # the connection survived
            again, _, _ = await connection.response()
        finally:
            connection.close()
    finally:
        real._observer = working
    assert "internal error in the token route's fast lane" in caplog.text
    assert broken.failures == 2  # the lane's own observer, once per request
    assert lanes.lane.answered == 0
    assert status == again == b"HTTP/1.1 200 OK"  # answered by aiohttp's path (its observer is the app's)


@pytest.mark.parametrize("target", [
    "/metadata/identity/oauth2/token%ff?resource=" + quote(ARM, safe=""),  # not UTF-8 once decoded
    "/metadata/identity/oauth2/token%00?resource=" + quote(ARM, safe=""),  # a NUL
])
async def test_a_path_nmi_refuses_is_not_an_internal_error_of_the_fast_lane(lanes, caplog, target):
    """Found attacking the lane: the route was looked up outside the lane's refusal handling, so a path that
    canonical_path refuses (400 on either lane) was logged as an internal error with a traceback, at ERROR, once
    per request: any pod could flood nmi's error log."""
    await exchange(lanes.plain_port, token_get())
    fast, plain = await same_second_pair(lanes, token_get(target=target))
    assert without_date(fast) == without_date(plain) and fast[0] == b"HTTP/1.1 400 Bad Request"
    assert lanes.lane.answered == 0
    assert "internal error" not in caplog.text


async def test_while_writing_is_paused_the_fast_lane_leaves_requests_to_aiohttp(lanes):
    """A pod that sends and does not read fills nmi's send buffer: the transport pauses writing, and from then on
    the lane must not write more (its answers would pile up unbounded in nmi's memory); aiohttp's path answers,
    waits for the drain, and its queue of parsed requests is bounded and pauses reading."""
    await exchange(lanes.plain_port, token_get())
    connection = await Connection.open(lanes.fast_port)
    try:
        await connection.send(token_get())
        assert (await connection.response())[0] == b"HTTP/1.1 200 OK" and lanes.lane.answered == 1
        (handler,) = [h for h in lanes.server.connections
                      if h.transport is not None and h.transport.get_extra_info("sockname")[1] == lanes.fast_port]
        handler.pause_writing()  # as the transport does when its buffer passes the high-water mark
        try:
            await connection.send(token_get())
            assert (await connection.response())[0] == b"HTTP/1.1 200 OK"
            assert lanes.lane.answered == 1 and len(lanes.lane.offered) == 1  # aiohttp's answer
        finally:
            handler.resume_writing()
        await eventually(handler._waiting_for_next_request, what="aiohttp's answer drained")
        await connection.send(token_get())
        assert (await connection.response())[0] == b"HTTP/1.1 200 OK"
        assert lanes.lane.answered == 2  # the lane answers again
    finally:
        connection.close()


async def test_a_stale_binding_cache_is_not_trusted_by_the_fast_lane_while_the_pod_cache_is_fresh(lanes):
    """Only the bindings' watch breaks (the pod cache stays fresh, so the caller is still known): aiohttp's path
    answers 503 + Retry-After, and so must the lane, which would otherwise hand out a token on the strength of
    bindings that may have been removed meanwhile."""
    await exchange(lanes.plain_port, token_get())
    assert (await exchange(lanes.fast_port, token_get()))[0] == b"HTTP/1.1 200 OK"
    assert lanes.lane.answered == 1
    lanes.apiserver.fail_next(10_000, status=500, path_prefix="/apis/aadpodidentity.k8s.io/v1/azureidentitybindings")
    lanes.apiserver.cut_watches("azureidentitybindings")

    async def untrusted() -> bool:
        return (await exchange(lanes.plain_port, token_get()))[0] == b"HTTP/1.1 503 Service Unavailable"

    await eventually(untrusted, timeout=30, what="the binding cache no longer trusted")
    fast, plain = await same_second_pair(lanes, token_get())
    assert without_date(fast) == without_date(plain) and fast[0] == b"HTTP/1.1 503 Service Unavailable"
    assert lanes.lane.answered == 1


async def test_an_exception_pod_gets_from_the_fast_lane_the_node_identity_it_selected_and_no_other(lanes):
    """An AzurePodIdentityException pod is answered with the node's identity, selected as IMDS selects it: a node
    token cached for one selector (client_id, object_id) must not answer a request naming another."""
    exempt = "127.0.0.2"
    lanes.apiserver.put(make_pod("exempt", "default", exempt, NODE, labels={"exempt": "yes"}))
    lanes.apiserver.put(make_exception("exempt", "default", pod_labels={"exempt": "yes"}))
    base = "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=" + quote(ARM, safe="")
    by_client_id = token_get(target=f"{base}&client_id={VM.client_id}")

    async def node_token_served() -> bool:
        return (await exchange(lanes.plain_port, by_client_id, exempt))[0] == b"HTTP/1.1 200 OK"

    await eventually(node_token_served, timeout=10, what="the exception pod known")
    for selector in (f"client_id={VM.client_id}", f"object_id={VM.object_id}"):
        request = token_get(target=f"{base}&{selector}")
        await exchange(lanes.plain_port, request, exempt)  # cached through aiohttp's path
        before = lanes.lane.answered
        fast, plain = await same_second_pair(lanes, request, exempt)
        assert fast[0] == b"HTTP/1.1 200 OK" and json.loads(fast[2])["client_id"] == VM.client_id
        assert without_date(fast) == without_date(plain) and lanes.lane.answered == before + 1
    before = lanes.lane.answered
    for selector in ("client_id=bbbbbbbb-2222-4222-8222-bbbbbbbbbbbb", "object_id=0b000000-0000-4000-8000-00000000000b",
                     f"client_id={VM.client_id.upper()}x"):
        fast, plain = await same_second_pair(lanes, token_get(target=f"{base}&{selector}"), exempt)
        assert fast[0] != b"HTTP/1.1 200 OK" and without_date(fast) == without_date(plain)
    assert lanes.lane.answered == before
