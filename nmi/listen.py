"""The listen path of nmi's servers: no input may stall the daemon (SPEC §7).

aiohttp alone waits for a request head as long as its keep-alive timeout (an hour) and accepts connections until
the process runs out of file descriptors, so a pod sending half a request head 140 times starved every other pod
and both probes. Here, per connection:

* a complete request head within `head_timeout` (10 s) of the connection opening, or of the first byte of the
  next request on a kept-alive connection, else the connection is closed. An idle kept-alive connection (its
  request answered, nothing of the next sent) is governed by aiohttp's keep-alive timeout instead, which the
  daemon sets (`KEEPALIVE_SECONDS`); this is Go's ReadHeaderTimeout/IdleTimeout split;
* at most `per_source` concurrent connections from one source address and `total` in all (derived from
  RLIMIT_NOFILE with headroom for upstream sockets, watches and files); a connection over either is reset
  before anything is read from it. It may first wait `ADMIT_GRACE_SECONDS` (50 ms) for a slot, unread, since a
  client that closes and reconnects (load generators probe with one connection first) is often a step ahead of
  nmi reading its close; at most `WAITING_PER_SOURCE` (8) wait per source and `WAITING_TOTAL` (64) in all,
  any more are reset at once, and so are those still waiting when the site stops (no aiohttp server knows them);
* the errors aiohttp's parser answers before any middleware runs (malformed request line, unknown method, header
  too long) are IMDS JSON like every other error, and logged at debug (a pod's garbage is not an nmi error).

The token port also has a fast lane (`nmi.fast_http`): a chunk that is one plain complete GET head, arriving while
aiohttp waits for the next request, is first offered to the token route's `FastLane`, which answers a cached token
without aiohttp's request machinery or declines; declined or not plain, the chunk goes to aiohttp as it came. Once
a connection has sent anything not plain (a partial head, a body, two requests at once) it stays with aiohttp,
so aiohttp's parser is never fed a request in the middle of another.

The handler relies on attributes of aiohttp's RequestHandler (`_waiter`, `_messages`, `_request_count`,
`_force_close`, `_close`, `_payload_parser`, `_upgraded`, `_paused`, `_next_keepalive_close_time`,
`_keepalive_timeout`); tests/security/test_connection_limits.py and tests/core/test_fast_lane.py fail if an
aiohttp upgrade changes them.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from typing import Any, Callable, cast

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from . import imds
from .fast_http import SimpleGet, simple_get

log = logging.getLogger(__name__)

HEAD_TIMEOUT_SECONDS = 10.0
PER_SOURCE_CONNECTIONS = 64
KEEPALIVE_SECONDS = 60.0  # aiohttp's default (3630 s) is meant for reverse proxies, not for pods
FD_HEADROOM_MIN = 256  # descriptors kept free of client connections: IMDS/AAD/API sockets, watches, files
ADMIT_GRACE_SECONDS = 0.05
WAITING_PER_SOURCE = 8
WAITING_TOTAL = 64


def raise_fd_soft_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (as Go programs do since 1.19); returns the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):  # not permitted: keep what we have
            pass
    return soft


def total_connections_for(fd_soft_limit: int) -> int:
    """Client connections allowed in all: the fd limit less a quarter (at least FD_HEADROOM_MIN) of headroom."""
    if fd_soft_limit == resource.RLIM_INFINITY or fd_soft_limit <= 0:
        fd_soft_limit = 1 << 20
    headroom = max(FD_HEADROOM_MIN, fd_soft_limit // 4)
    return max(16, fd_soft_limit - headroom)


class ConnectionLimits:
    """Open connections per source address and in all, shared by every listener of the process.

    At a cap, an *idle* kept-alive connection (its request answered, nothing of the next one sent) is closed to
    make room before the new one is refused: a client that closes and reconnects in a burst is often a step
    ahead of nmi reading its closes, and closing an idle connection costs a client nothing (it reconnects).
    A connection still waiting for its first complete head is never idle, so half-sent heads cannot evict."""

    def __init__(self, *, per_source: int = PER_SOURCE_CONNECTIONS, total: int | None = None) -> None:
        if total is None:
            soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
            total = total_connections_for(soft)
        self.per_source = per_source
        self.total = total
        self.open = 0
        self.refused = 0
        self.evicted = 0
        self._by_source: dict[str, dict[GuardedRequestHandler, None]] = {}  # insertion order: oldest first
        self._waiting: dict[str, int] = {}  # connections over a cap waiting for a slot, per source

    def start_waiting(self, source: str) -> bool:
        """A connection over a cap may wait for a slot (see the module's docstring) unless too many already do."""
        if self._waiting.get(source, 0) >= WAITING_PER_SOURCE or sum(self._waiting.values()) >= WAITING_TOTAL:
            return False
        self._waiting[source] = self._waiting.get(source, 0) + 1
        return True

    def stop_waiting(self, source: str) -> None:
        left = self._waiting.get(source, 0) - 1
        if left > 0:
            self._waiting[source] = left
        else:
            self._waiting.pop(source, None)

    def refuse(self, source: str, transport: asyncio.BaseTransport) -> None:
        """Reset at once: the descriptor is freed now, not after a close handshake (a stream server's transport)."""
        self.refused += 1
        cast(asyncio.Transport, transport).abort()
        log.debug("connection from %s refused: %d open from it, %d in all", source, self.held_by(source), self.open)

    def admit(self, source: str, connection: GuardedRequestHandler) -> bool:
        held = self._by_source.get(source, {})
        if len(held) >= self.per_source and not self._evict_idle(list(held)):
            return False
        if self.open >= self.total and not self._evict_idle([c for conns in self._by_source.values() for c in conns]):
            return False
        self._by_source.setdefault(source, {})[connection] = None
        self.open += 1
        return True

    def release(self, source: str, connection: GuardedRequestHandler) -> None:
        held = self._by_source.get(source)
        if held is None or connection not in held:
            return
        del held[connection]
        if not held:
            del self._by_source[source]
        self.open -= 1

    @property
    def waiting(self) -> int:
        """Connections over a cap waiting for a slot, from every source."""
        return sum(self._waiting.values())

    def held_by(self, source: str) -> int:
        return len(self._by_source.get(source, ()))

    def _evict_idle(self, connections: list[GuardedRequestHandler]) -> bool:
        for connection in connections:
            if connection.idle():
                connection.evict()
                self.evicted += 1
                return True
        return False


class WaitingRoom:
    """One site's connections waiting for a slot. They belong to no aiohttp server yet, so its shutdown (stop
    accepting, close every connection) cannot see them: the site resets them when it stops, and any that would
    start waiting after that."""

    __slots__ = ("handlers", "closed")

    def __init__(self) -> None:
        self.handlers: set[GuardedRequestHandler] = set()
        self.closed = False

    def close(self) -> None:
        self.closed = True
        for handler in list(self.handlers):
            handler.refuse_waiting()


# The token route's fast lane: (request, caller's source address) -> the complete answer, or None to let aiohttp serve.
FastLane = Callable[[SimpleGet, str], "bytes | None"]


class GuardedRequestHandler(RequestHandler):
    __slots__ = ("_limits", "_head_timeout", "_head_timer", "_source", "_admitted", "_json_errors", "_fast",
                 "_admission", "_room", "_waiting_transport")
    # _admitted: aiohttp's connection_made ran (so its connection_lost must run too); the slot in the limits is
    # given back by release(), which is idempotent (an evicted connection gives it back before it is lost)

    def __init__(self, manager: web.Server, *, limits: ConnectionLimits, head_timeout: float, json_errors: bool,
                 fast: FastLane | None = None, room: WaitingRoom | None = None, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._fast = fast  # None once the connection sent anything not plain: aiohttp alone from then on
        self._json_errors = json_errors
        self._limits = limits
        self._head_timeout = head_timeout
        self._head_timer: asyncio.TimerHandle | None = None
        self._source = ""
        self._admitted = False
        self._admission: asyncio.TimerHandle | None = None  # over a cap: the one retry, while it waits
        self._room = room or WaitingRoom()
        self._waiting_transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        self._source = str(peer[0]) if peer else ""
        if self._room.closed:  # the site stopped: accepted just before, served by nobody
            self._limits.refuse(self._source, transport)
        elif self._limits.admit(self._source, self):
            self._admit(transport)
        elif self._limits.start_waiting(self._source):
            cast(asyncio.Transport, transport).pause_reading()  # nothing is read from it before it is admitted
            self._admission = self._loop.call_later(ADMIT_GRACE_SECONDS, self._admit_late, transport)
            self._waiting_transport = transport
            self._room.handlers.add(self)
        else:
            self._limits.refuse(self._source, transport)

    def _admit(self, transport: asyncio.BaseTransport) -> None:
        self._admitted = True
        super().connection_made(transport)
        self._arm_head_timer()

    def _admit_late(self, transport: asyncio.BaseTransport) -> None:
        self._stop_waiting()
        if transport.is_closing():
            return
        if not self._limits.admit(self._source, self):
            self._limits.refuse(self._source, transport)
            return
        cast(asyncio.Transport, transport).resume_reading()
        self._admit(transport)

    def _stop_waiting(self) -> None:
        if self._admission is not None:
            self._admission.cancel()
            self._admission = None
            self._limits.stop_waiting(self._source)
        self._waiting_transport = None
        self._room.handlers.discard(self)

    def refuse_waiting(self) -> None:
        """The site stopped while this connection waited for a slot: reset it now."""
        transport = self._waiting_transport
        self._stop_waiting()
        if transport is not None and not transport.is_closing():
            self._limits.refuse(self._source, transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._stop_waiting()  # gone while waiting for a slot
        if not self._admitted:
            return
        self._admitted = False
        self._limits.release(self._source, self)
        self._disarm_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self._admitted:
            return
        if self._fast is not None and self._answered_fast(data):
            return
        if self._head_timer is None and data and self._waiting_for_next_request():
            self._arm_head_timer()  # the first byte of the next request on a kept-alive connection
        heads_before = self._request_count
        super().data_received(data)
        if self._request_count != heads_before:
            self._disarm_head_timer()

    def _answered_fast(self, data: bytes) -> bool:
        request = simple_get(data)
        if request is None:
            self._fast = None  # aiohttp's parser may now hold part of a request: never answer beside it
            return False
        if (self._force_close or self._close or self._paused or self._payload_parser is not None or self._upgraded
                or not self._waiting_for_next_request() or self.transport is None):
            return False  # aiohttp is busy with this connection (or it is closing): it answers, in order
        assert self._fast is not None
        response = self._fast(request, self._source)
        if response is None:
            return False
        self.transport.write(response)
        self._request_count += 1
        self._disarm_head_timer()
        if self._keepalive_timeout > 0:  # aiohttp's idle timer, as after any answer it writes
            self._next_keepalive_close_time = self._loop.time() + self._keepalive_timeout
        return True

    def idle(self) -> bool:
        """Answered at least one request and nothing of the next one has arrived."""
        return self._request_count > 0 and self._head_timer is None and self._waiting_for_next_request()

    def evict(self) -> None:
        self._limits.release(self._source, self)
        log.debug("closing an idle kept-alive connection from %s to make room", self._source)
        self.force_close()

    def _waiting_for_next_request(self) -> bool:
        waiter = self._waiter
        return waiter is not None and not waiter.done() and not self._messages

    def _arm_head_timer(self) -> None:
        self._disarm_head_timer()
        self._head_timer = self._loop.call_later(self._head_timeout, self._head_timed_out)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        log.debug("closing connection from %s: no complete request head within %.1fs", self._source,
                  self._head_timeout)
        self.force_close()

    def handle_error(self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        """aiohttp's answer to a request it could not parse or handle, as IMDS JSON without caller bytes."""
        if status >= 500:
            log.error("error handling a request from %s", self._source, exc_info=exc)
        else:
            log.debug("malformed request from %s: %s", self._source, type(exc).__name__ if exc else status)
        if request.writer.output_size > 0:
            raise ConnectionError("Response is sent already, cannot send another response with the error message")
        response = imds_json_error(status, "Malformed HTTP request" if status < 500 else "")
        response.force_close()
        return response

    async def finish_response(self, request: web.BaseRequest, resp: web.StreamResponse,
                              start_time: float | None) -> tuple[web.StreamResponse, bool]:
        """The token port's safety net: an error aiohttp raised before any middleware could run (its router's
        404 for a target it cannot match, its 417 for an unknown `Expect`...) still leaves as IMDS JSON."""
        if (self._json_errors and resp.status >= 400 and not resp.prepared
                and getattr(resp, "content_type", "") != "application/json"):
            resp = imds_json_error(resp.status, resp.reason or "")
        return await super().finish_response(request, resp, start_time)


def imds_json_error(status: int, description: str) -> web.Response:
    """The same IMDS JSON as every other error of nmi's (`imds.error_for_status`), without the Server header: this
    answers for aiohttp, before any of nmi's code ran."""
    error = imds.error_for_status(status, description)
    return web.Response(status=status, text=imds.render_error(error), content_type="application/json")


class GuardedSite(web.TCPSite):
    """A TCPSite whose connections are GuardedRequestHandlers; stop/cleanup work as for any site."""

    __slots__ = ("_limits", "_head_timeout", "_json_errors", "_fast", "_room")

    def __init__(self, runner: web.BaseRunner, host: str, port: int, *, limits: ConnectionLimits,
                 head_timeout: float = HEAD_TIMEOUT_SECONDS, json_errors: bool = False,
                 reuse_address: bool | None = True, fast: FastLane | None = None) -> None:
        super().__init__(runner, host, port, reuse_address=reuse_address)
        self._fast = fast
        self._limits = limits
        self._head_timeout = head_timeout
        self._json_errors = json_errors  # the token port answers IMDS JSON errors only; probes keep aiohttp's
        self._room = WaitingRoom()

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with its runner; TCPSite.start would listen unguarded
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None
        handler_kwargs = dict(server._kwargs)  # what the runner was given (keepalive_timeout, access_log, ...)

        def guarded() -> GuardedRequestHandler:
            return GuardedRequestHandler(server, loop=loop, limits=self._limits, head_timeout=self._head_timeout,
                                         json_errors=self._json_errors, fast=self._fast, room=self._room,
                                         **handler_kwargs)

        self._server = await loop.create_server(guarded, self._host, self._port, backlog=self._backlog,
                                                reuse_address=self._reuse_address, reuse_port=self._reuse_port)
        sockets = self._server.sockets
        self._bound_port = sockets[0].getsockname()[1] if sockets else self._port

    async def stop(self) -> None:
        """Stop accepting, and reset the connections still waiting for a slot (no server would ever close them)."""
        self._room.close()
        await super().stop()
