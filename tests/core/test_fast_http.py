"""`nmi.fast_http.simple_get`: the fast lane accepts only the plainest request head, and whatever it accepts
aiohttp's own parser (the C parser nmi runs with, and the pure-Python one) reads the same way: one message, the same
method, target, version and headers, no body, keep-alive, no upgrade, nothing left over."""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import pytest
from aiohttp import http_parser
from aiohttp.web_protocol import RequestHandler
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nmi.fast_http import MAX_HEAD_BYTES, answer, simple_get

TOKEN = b"GET /metadata/identity/oauth2/token?resource=https%3A%2F%2Fvault.azure.net HTTP/1.1\r\n"
PLAIN = TOKEN + b"Host: 169.254.169.254\r\nMetadata: true\r\n\r\n"


def test_a_plain_token_request_is_accepted_with_its_raw_target_query_and_headers():
    request = simple_get(PLAIN)
    assert request is not None
    assert request.target == "/metadata/identity/oauth2/token?resource=https%3A%2F%2Fvault.azure.net"
    assert request.query == "resource=https%3A%2F%2Fvault.azure.net"  # still encoded: decoded once, later
    assert request.headers["metadata"] == request.headers["Metadata"] == request.headers.get("METADATA") == "true"
    assert "X-Forwarded-For" not in request.headers and "host" in request.headers


@pytest.mark.parametrize("data", [
    PLAIN[:-2],  # head not complete
    PLAIN[:30],
    PLAIN + b"x",  # something after the head: a body or the start of the next request
    PLAIN + PLAIN,  # two requests at once
    PLAIN.replace(b"GET", b"POST"),
    PLAIN.replace(b"GET", b"get"),
    PLAIN.replace(b"HTTP/1.1", b"HTTP/1.0"),
    PLAIN.replace(b"HTTP/1.1", b"HTTP/2.0"),
    PLAIN.replace(b"GET /", b"GET  /"),
    PLAIN.replace(b"GET /metadata", b"GET http://169.254.169.254/metadata"),  # absolute form
    PLAIN.replace(b"token?", b"token#x?"),  # a fragment
    PLAIN.replace(b"token?", b"tok\x00en?"),
    PLAIN.replace(b"token?", b"tok\xc3\xa9n?"),  # not ASCII
    PLAIN.replace(b"\r\n", b"\n"),  # bare LF line ends
    PLAIN.replace(b"Metadata: true\r\n", b"Metadata: true\r\n Metadata: false\r\n"),  # obsolete line folding
    PLAIN.replace(b"Metadata: true", b"Metadata : true"),  # space before the colon
    PLAIN.replace(b"Metadata: true", b"Metadata: tr\x00ue"),
    PLAIN.replace(b"Metadata: true", b"Metadata: tr\tue"),
    PLAIN.replace(b"Metadata: true", b"Metadata: tr\xc3\xa9"),
    PLAIN.replace(b"Metadata: true", b"Metadata: true\rX: y"),  # a bare CR
    PLAIN.replace(b"Metadata: true", b"Metadata: true\r\nmetadata: false"),  # a name twice
    PLAIN.replace(b"Host: 169.254.169.254\r\n", b""),  # no Host
    PLAIN.replace(b"Metadata: true", b"Metadata: true\r\nContent-Length: 0"),
    PLAIN.replace(b"Metadata: true", b"Metadata: true\r\nTransfer-Encoding: chunked"),
    PLAIN.replace(b"Metadata: true", b"Metadata: true\r\nExpect: 100-continue"),
    PLAIN.replace(b"Metadata: true", b"Metadata: true\r\nConnection: close"),
    PLAIN.replace(b"Metadata: true", b"Metadata: true\r\nConnection: keep-alive"),
    PLAIN.replace(b"Metadata: true", b"Metadata: true\r\nUpgrade: h2c"),
    PLAIN.replace(b"Metadata: true", b"Metadata: true\r\nSec-WebSocket-Key1: x"),
    PLAIN.replace(b"Metadata: true", b"Metadata: true\r\nProxy-Connection: close"),  # llhttp: Connection
    PLAIN[:-2] + b"".join(b"X-%d: y\r\n" % n for n in range(63)) + b"\r\n",  # 65 header lines
    PLAIN.replace(b"Metadata: true", b"Metadata: true\r\nX-Pad: " + b"a" * MAX_HEAD_BYTES),  # too long
])
def test_anything_but_one_plain_complete_get_head_is_left_to_aiohttp(data):
    assert simple_get(data) is None


def test_the_answer_is_written_as_aiohttp_writes_it():
    written = answer(b"HTTP/1.1 200 OK\r\n", b"Server: nmi/1\r\nContent-Type: application/json; charset=utf-8\r\n",
                     b'{"a":1}', "Tue, 01 Dec 2026 09:54:59 GMT")
    assert written == (b'HTTP/1.1 200 OK\r\nServer: nmi/1\r\nContent-Type: application/json; charset=utf-8\r\n'
                       b'Content-Length: 7\r\nDate: Tue, 01 Dec 2026 09:54:59 GMT\r\n\r\n{"a":1}')


# -- differential: what simple_get accepts, aiohttp's parsers read the same way --------------------------------

class _Protocol:
    """The little of a protocol aiohttp's parsers call while parsing heads without bodies."""

    _reading_paused = False

    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...


# The limits aiohttp's server gives its parser (nmi's runners keep aiohttp's defaults).
SERVER_LIMITS = {name: inspect.signature(RequestHandler.__init__).parameters[name].default
                 for name in ("max_line_size", "max_field_size", "max_headers")}


def aiohttp_reads(parser_class: Any, data: bytes) -> list[Any] | Exception:
    loop = asyncio.new_event_loop()
    try:
        parser = parser_class(_Protocol(), loop, 2 ** 16, **SERVER_LIMITS, max_msg_queue_size=32)
        try:
            messages, upgraded, tail = parser.feed_data(data)
        except Exception as failure:  # what aiohttp answers 400 to
            return failure
        assert not upgraded and tail == b""
        return [(message, payload.is_eof()) for message, payload in messages]
    finally:
        loop.close()


PARSERS = [http_parser.HttpRequestParser, http_parser.HttpRequestParserPy]

# Mostly plain pieces, with what an attacker would try mixed in (separators, controls, non-ASCII, odd spaces,
# framing headers), so that most drawn heads are accepted and the rest probe the edges.
SAFE = list("abcz09/?&=%.:;@!$'()*+,~-_") + ["%2F", "%25", "%00"]
HOSTILE = list("#\\\"<>[]^`{|} \t\x00\x7f") + ["é"]
TARGET_CHARS = st.sampled_from(SAFE * 8 + HOSTILE)
NAME = st.one_of(st.sampled_from(["Metadata", "metadata", "X-A", "Accept", "User-Agent", "X-Forwarded-For",
                                  "x-ms-client-request-id"] * 6
                                 + ["Host", "Content-Length", "Transfer-Encoding", "Connection", "Expect", "Upgrade",
                                    "TE", "Trailer", "Sec-WebSocket-Key1", "Proxy-Connection"]),
                 st.lists(st.sampled_from(list("abcXYZ-_!#$%&'*+.^`|~") * 4 + list(" :\t\"(),/;<=>?@[\\]{}é")),
                          min_size=0, max_size=6).map("".join))
VALUE = st.lists(st.sampled_from(list("truefalsx0,;=\"*/.") * 4 + [" ", "  ", "\t", "\r", "\n", "\x00", "\x7f",
                                                                       "\x0b", "é", "chunked", "close", "keep-alive"]),
                 max_size=8).map("".join)


@st.composite
def heads(draw: Any) -> bytes:
    method = draw(st.sampled_from(["GET"] * 12 + ["POST", "HEAD", "get"]))
    target = "/" + "".join(draw(st.lists(TARGET_CHARS, max_size=12)))
    version = draw(st.sampled_from(["HTTP/1.1"] * 12 + ["HTTP/1.0", "HTTP/1.2"]))
    lines = [("Host", "169.254.169.254")] if draw(st.integers(0, 9)) else []
    lines += draw(st.lists(st.tuples(NAME, VALUE), max_size=4))
    lines = draw(st.permutations(lines))
    separator = draw(st.sampled_from([": "] * 8 + [":", ":  ", " : ", ":\t"]))
    head = f"{method} {target} {version}\r\n" + "".join(f"{n}{separator}{v}\r\n" for n, v in lines) + "\r\n"
    tail = draw(st.sampled_from([""] * 12 + ["x", "GET / HTTP/1.1\r\n\r\n"]))
    return (head + tail).encode("utf-8")


@pytest.mark.parametrize("parser_class", PARSERS, ids=["c", "python"])
@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=heads())
def test_what_simple_get_accepts_aiohttp_reads_the_same(parser_class, data):
    accepted = simple_get(data)
    if accepted is None:
        return
    read = aiohttp_reads(parser_class, data)
    assert not isinstance(read, Exception), f"aiohttp refuses what the fast lane accepts: {read!r}"
    assert len(read) == 1
    message, no_body = read[0]
    assert no_body and message.method == "GET" and message.version == (1, 1)
    assert message.path == accepted.target
    assert not message.should_close and not message.upgrade and not message.chunked
    assert [(name.lower(), value) for name, value in message.headers.items()] == list(
        (name, accepted.headers[name]) for name in accepted.headers)


@pytest.mark.parametrize("parser_class", PARSERS, ids=["c", "python"])
def test_the_plain_request_and_its_hostile_neighbours_agree_with_aiohttp(parser_class):
    """The examples the property may not draw, checked on purpose."""
    for data in (PLAIN, PLAIN.replace(b"Metadata: true", b"metadata:\t  true  "),
                 PLAIN.replace(b"Metadata: true", b"Metadata:"),
                 PLAIN.replace(b"token?", b"token?a=%25%2B+&b")):
        accepted = simple_get(data)
        assert accepted is not None
        message, no_body = aiohttp_reads(parser_class, data)[0]  # type: ignore[index]
        assert no_body and message.path == accepted.target
        assert dict((k.lower(), v) for k, v in message.headers.items()) == dict(accepted.headers.items())


def _with_headers(count: int, extra: bytes = b"") -> bytes:
    """PLAIN with `count` header lines in all (Host and Metadata among them), and `extra` lines after."""
    return PLAIN[:-2] + b"".join(b"X-%d: y\r\n" % n for n in range(count - 2)) + extra + b"\r\n"


def _head_id(data: bytes) -> str:
    lines = data.split(b"\r\n")
    return f"{len(lines) - 3} headers" if len(lines) > 20 else lines[-3].decode()


@pytest.mark.parametrize("parser_class", PARSERS, ids=["c", "python"])
@pytest.mark.parametrize("data", [
    *(_with_headers(count) for count in (100, 120, 126, 127, 128, 129, 140, 400)),  # aiohttp counts headers
    *(PLAIN[:-2] + line + b"\r\n\r\n" for line in (  # llhttp reads Proxy-Connection as Connection
        b"Proxy-Connection: close", b"proxy-connection: Close", b"Proxy-Connection: keep-alive",
        b"Proxy-Connection: upgrade")),
], ids=lambda data: _head_id(data))
def test_heads_aiohttp_refuses_or_closes_after_are_never_the_fast_lanes(parser_class, data):
    """Found by attacking the lane: a head of 129 short headers (aiohttp: 400 Too many headers, the Python parser
    already at 127) and `Proxy-Connection: close` (llhttp: should_close) were accepted, so the lane answered 200
    and kept the connection where aiohttp refuses, or answers and closes."""
    accepted = simple_get(data)
    if accepted is None:
        return
    read = aiohttp_reads(parser_class, data)
    assert not isinstance(read, Exception), f"aiohttp refuses what the fast lane accepts: {read!r}"
    message, no_body = read[0]
    assert no_body and not message.should_close and not message.upgrade
    assert len(accepted.headers) == len(message.headers)
