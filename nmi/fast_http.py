"""The token route's fast lane: one plain GET head read without aiohttp's request machinery.

Pods repeat the same small request (`GET /metadata/identity/oauth2/token?... HTTP/1.1`, a few headers, no body)
and nearly always get a cached token. For that request aiohttp builds a Request, a task, a Response and a writer
per call, which cost more than everything nmi does; SPEC §10 wants nmi's cached answer near a bare aiohttp
handler's speed. So the listen path (`nmi.listen`) first offers each chunk a connection receives to
`simple_get`, which accepts only the plainest form of a request, and gives anything else to aiohttp untouched:

* exactly one complete head and nothing after it (no body, no pipelined second request, no partial head);
* `GET`, an origin-form target of visible ASCII without `#`, `HTTP/1.1`;
* header lines `name: value` with a token name and a printable-ASCII value, no name twice, at most 8190 bytes in
  all (aiohttp's own line limit), at most 64 of them (aiohttp refuses more than 128), a Host header (HTTP/1.1
  requires one), and none of the headers that change how a message is framed or the connection is used
  (Content-Length, Transfer-Encoding, Expect, Connection, Proxy-Connection, Upgrade, TE, Trailer) or that aiohttp
  refuses (Sec-WebSocket-Key1).

Whatever it accepts, aiohttp's parser reads the same way (tests/core/test_fast_http.py proves it against
aiohttp's own parser), so a request means the same whichever lane serves it. What the fast lane answers is
rendered by `answer`: the same status line, headers and order as aiohttp writes for nmi's JSON answers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterator, Mapping

MAX_HEAD_BYTES = 8190
# aiohttp's server refuses a head of more than 128 header lines (its C parser; its Python parser already at 127):
# well below either, and far above what a pod sends (Host, Metadata, a few more).
MAX_HEADER_LINES = 64

_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_HEADER = rb"(" + _TOKEN + rb"):[ \t]*((?:[!-~](?:[ -~]*[!-~])?)?)[ \t]*\r\n"
_HEAD = re.compile(rb"GET (/[!-\"$-~]*) HTTP/1\.1\r\n((?:" + _TOKEN + rb":[ \t]*[ -~]*\r\n)*)\r\n")
_HEADERS = re.compile(_HEADER)
# Headers that frame a body, ask for an interim answer or change the connection: aiohttp handles those.
# Sec-WebSocket-Key1 (the old WebSocket handshake) aiohttp refuses outright. llhttp (aiohttp's C parser) reads
# Proxy-Connection as Connection: `Proxy-Connection: close` makes aiohttp close after its answer.
_NOT_SIMPLE = frozenset({"content-length", "transfer-encoding", "expect", "connection", "upgrade", "te", "trailer",
                         "sec-websocket-key1", "proxy-connection"})


class LowerCaseHeaders(Mapping[str, str]):
    """Header names are case-insensitive: looked up lower-cased, as they were stored."""

    __slots__ = ("_headers",)

    def __init__(self, headers: dict[str, str]) -> None:
        self._headers = headers

    def __getitem__(self, name: str) -> str:
        return self._headers[name.lower()]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._headers

    def __iter__(self) -> Iterator[str]:
        return iter(self._headers)

    def __len__(self) -> int:
        return len(self._headers)


@dataclass(frozen=True, slots=True)
class SimpleGet:
    target: str  # the request target as sent: what aiohttp calls raw_path
    query: str  # the raw (still percent-encoded) query string
    headers: LowerCaseHeaders


def simple_get(data: bytes) -> SimpleGet | None:
    """The request in `data` if it is one plain complete GET head and nothing else; None otherwise."""
    if len(data) > MAX_HEAD_BYTES or not data.startswith(b"GET /"):
        return None
    match = _HEAD.fullmatch(data)
    if match is None:
        return None
    target = match.group(1).decode("ascii")
    headers: dict[str, str] = {}
    lines = 0
    for name, value in _HEADERS.findall(match.group(2)):
        key = name.decode("ascii").lower()
        if key in _NOT_SIMPLE:
            return None
        headers[key] = value.decode("ascii")
        lines += 1
        if lines > MAX_HEADER_LINES:  # aiohttp counts them and refuses too many: its to decide
            return None
    if len(headers) != lines or match.group(2).count(b"\r\n") != lines:  # a name given twice: aiohttp's to decide
        return None
    if "host" not in headers:  # HTTP/1.1 requires it; aiohttp answers 400 without
        return None
    return SimpleGet(target, target.partition("?")[2], LowerCaseHeaders(headers))


def answer(status_line: bytes, headers: bytes, body: bytes, date: str) -> bytes:
    """A complete response as aiohttp writes nmi's JSON answers: status line, the given header lines (each ending
    in CRLF), Content-Length, Date, blank line, body."""
    return b"".join((status_line, headers, b"Content-Length: %d\r\nDate: " % len(body), date.encode("ascii"),
                     b"\r\n\r\n", body))
