"""SPEC §7 "No input stalls the daemon", attacked with raw sockets from 127.0.0.x source addresses: half-sent
request heads, more connections than one source may hold, garbage request lines. In process (small head
timeout) through the daemon's own listen path, and against the real daemon (its default limits)."""

from __future__ import annotations

import asyncio
import os
import socket

import pytest
from aiohttp import web

from nmi.listen import WAITING_PER_SOURCE, ConnectionLimits, GuardedSite, total_connections_for
from nmi.readiness import DaemonState
from nmi.server import probe_app
from tests.security import rawhttp
from tests.security.conftest import BOUND_POD
from tests.eventually import eventually
from tests.security.inprocess import exchange, guarded_servers, open_from

ATTACKER = "127.0.0.66"
HALF_HEAD = b"GET /metadata/identity/oauth2/token?resource=https%3A%2F%2Fvault.azure.net HTTP/1.1\r\nMetadata: tr"
TOKEN = rawhttp.head(b"GET /metadata/identity/oauth2/token?resource=r HTTP/1.1", {b"Metadata": b"true"})
HEALTHZ = rawhttp.head(b"GET /healthz HTTP/1.1")


def open_fds(pid: int | str = "self") -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def read_to_end(reader: asyncio.StreamReader) -> bytes:
    try:
        return await reader.read()
    except ConnectionResetError:
        return b""


async def test_one_source_holds_at_most_64_connections_and_others_are_still_served():
    limits = ConnectionLimits(per_source=64, total=1000)
    async with guarded_servers(limits=limits, head_timeout=60) as servers:  # this test never waits for a head timeout
        baseline = open_fds()
        attack = [await open_from(servers.token_port, ATTACKER) for _ in range(140)]
        for _, writer in attack:
            writer.write(HALF_HEAD)
        ended = [asyncio.create_task(read_to_end(reader)) for reader, _ in attack]
        # the 76 over the cap are reset at once; 64 stay open, waiting for the rest of their heads
        await eventually(lambda: sum(task.done() for task in ended) == 140 - 64)
        assert limits.held_by(ATTACKER) == 64 and limits.refused == 140 - 64
        assert limits.evicted == 0  # a half-sent head is never idle, so never makes room for another
        assert all(task.result() == b"" for task in ended if task.done())

        answer = await exchange(servers.token_port, TOKEN, source=BOUND_POD)
        assert answer.status == 200 and answer.json["client_id"] == "cid-i"
        health = await exchange(servers.probe_port, HEALTHZ, source="127.0.0.7")
        assert health.status == 200 and health.body == b"Active"
        assert sum(task.done() for task in ended) == 140 - 64  # the held ones were not closed by the others' service

        for _, writer in attack:
            writer.close()
        await asyncio.gather(*ended)
        await eventually(lambda: limits.open == 0 and open_fds() <= baseline)


async def test_a_connection_without_a_complete_head_in_time_is_closed():
    limits = ConnectionLimits(per_source=64, total=1000)
    async with guarded_servers(limits=limits, head_timeout=0.3) as servers:
        silent = [await open_from(servers.token_port, ATTACKER) for _ in range(10)]
        dribbling = [await open_from(servers.token_port, "127.0.0.67") for _ in range(10)]
        for _, writer in dribbling:
            writer.write(HALF_HEAD)
        ended = [asyncio.create_task(read_to_end(reader)) for reader, _ in silent + dribbling]
        await eventually(lambda: all(task.done() for task in ended))  # closed by nmi, not by us
        assert all(task.result() == b"" for task in ended)
        await eventually(lambda: limits.open == 0)
        for _, writer in silent + dribbling:
            writer.close()


async def test_kept_alive_connection_waits_idle_but_the_next_head_has_the_head_timeout():
    """An answered connection waiting for its next request follows aiohttp's keep-alive timeout (no head timer);
    once the first byte of the next request arrives, the head must complete within the head timeout."""
    limits = ConnectionLimits(per_source=64, total=1000)
    async with guarded_servers(limits=limits, head_timeout=0.3) as servers:
        reader, writer = await open_from(servers.token_port, BOUND_POD)
        writer.write(TOKEN.replace(b"Connection: close", b"Connection: keep-alive"))
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
        await reader.readexactly(length)
        assert head.startswith(b"HTTP/1.1 200")
        [handler] = servers.token_runner.server.connections
        await eventually(lambda: handler._waiting_for_next_request())
        assert handler._head_timer is None  # idle: only the keep-alive timeout applies
        writer.write(b"GET /metadata/ident")
        assert await asyncio.wait_for(read_to_end(reader), 10) == b""  # closed by the head timeout
        writer.close()
        await eventually(lambda: limits.open == 0)


async def read_answer(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
    return head + await reader.readexactly(length)


async def test_at_the_cap_an_idle_kept_alive_connection_of_the_source_makes_room():
    """A client closing and reconnecting in a burst is ahead of nmi reading its closes; its answered, idle
    connections are closed (oldest first) to admit the new ones, instead of resetting them."""
    limits = ConnectionLimits(per_source=4, total=1000)
    keep_alive = TOKEN.replace(b"Connection: close", b"Connection: keep-alive")
    async with guarded_servers(limits=limits, head_timeout=60) as servers:
        idle = [await open_from(servers.token_port, BOUND_POD) for _ in range(4)]
        for reader, writer in idle:
            writer.write(keep_alive)
            assert (await read_answer(reader)).startswith(b"HTTP/1.1 200")
        await eventually(lambda: all(h.idle() for h in servers.token_runner.server.connections))
        answer = await exchange(servers.token_port, TOKEN, source=BOUND_POD)
        assert answer.status == 200 and limits.evicted == 1 and limits.refused == 0
        assert await asyncio.wait_for(read_to_end(idle[0][0]), 10) == b""  # the oldest idle one was closed
        for _, writer in idle:
            writer.close()
        await eventually(lambda: limits.open == 0)


async def test_a_connection_over_the_cap_waits_briefly_for_a_slot_the_client_frees():
    """Load generators (wrk) probe with one connection, close it and open their N at once, and nmi may see the
    new ones before the probe's close: a connection over the cap waits up to ADMIT_GRACE_SECONDS, unread, for a
    slot instead of being reset at once."""
    limits = ConnectionLimits(per_source=4, total=1000)
    async with guarded_servers(limits=limits, head_timeout=60) as servers:
        held = [await open_from(servers.token_port, BOUND_POD) for _ in range(4)]
        await eventually(lambda: limits.open == 4)
        reader, writer = await open_from(servers.token_port, BOUND_POD)  # the fifth: waits
        writer.write(TOKEN)
        await asyncio.sleep(0.01)
        held[0][1].close()  # a slot frees within the grace
        assert (await asyncio.wait_for(read_answer(reader), 10)).startswith(b"HTTP/1.1 200")
        assert limits.refused == 0 and limits.evicted == 0
        writer.close()
        for _, held_writer in held[1:]:
            held_writer.close()
        await eventually(lambda: limits.open == 0)


async def test_few_connections_wait_for_a_slot_and_none_longer_than_the_grace():
    limits = ConnectionLimits(per_source=4, total=1000)
    async with guarded_servers(limits=limits, head_timeout=60) as servers:
        baseline = open_fds()
        held = [await open_from(servers.token_port, ATTACKER) for _ in range(4)]
        await eventually(lambda: limits.open == 4)
        over = [await open_from(servers.token_port, ATTACKER) for _ in range(WAITING_PER_SOURCE + 12)]
        ended = [asyncio.create_task(read_to_end(reader)) for reader, _ in over]
        await eventually(lambda: limits.refused == 12)  # beyond the waiting budget: reset at once
        assert not any(task.done() for task in ended[:WAITING_PER_SOURCE])  # these wait
        await asyncio.wait_for(asyncio.gather(*ended), 10)  # then no slot came: reset too
        assert limits.refused == WAITING_PER_SOURCE + 12 and limits.held_by(ATTACKER) == 4
        assert limits.start_waiting(ATTACKER)  # nobody is left counted as waiting
        limits.stop_waiting(ATTACKER)
        for _, writer in held + over:
            writer.close()
        await eventually(lambda: limits.open == 0 and open_fds() <= baseline)


async def test_a_connection_waiting_for_a_slot_when_the_server_stops_is_reset_not_served_by_a_stopped_server():
    """Found attacking the waiting admission: a connection waiting for a slot belongs to no aiohttp server yet, so
    shutdown (stop accepting, close every connection) passed it by; the slot the shutdown freed then admitted it
    into the stopped server, which served it and never closed it."""
    limits = ConnectionLimits(per_source=1, total=1000)
    runner = web.AppRunner(probe_app(DaemonState(chain_required=False, cache_problems=list)), access_log=None)
    await runner.setup()
    try:
        site = GuardedSite(runner, "127.0.0.1", 0, limits=limits, head_timeout=60)
        await site.start()
        held = await open_from(site.port, ATTACKER)
        await eventually(lambda: limits.open == 1)
        reader, writer = await open_from(site.port, ATTACKER)
        writer.write(HEALTHZ)
        await eventually(lambda: limits.waiting == 1)
    finally:
        await runner.cleanup()  # closes the held connection: its slot is free while the other still waits
    try:
        assert await asyncio.wait_for(read_to_end(reader), 10) == b""  # reset, never answered
        await eventually(lambda: limits.waiting == 0 and limits.open == 0)
    finally:
        writer.close()
        held[1].close()


async def test_a_head_sent_in_pieces_within_the_timeout_is_served():
    limits = ConnectionLimits(per_source=64, total=1000)
    async with guarded_servers(limits=limits, head_timeout=5) as servers:
        reader, writer = await open_from(servers.token_port, BOUND_POD)
        for start in range(0, len(TOKEN), 7):
            writer.write(TOKEN[start:start + 7])
            await writer.drain()
        answer = rawhttp.parse(await asyncio.wait_for(reader.read(), 10))
        writer.close()
        assert answer.status == 200


async def test_total_connections_are_capped_across_sources_and_listeners():
    limits = ConnectionLimits(per_source=64, total=20)
    async with guarded_servers(limits=limits, head_timeout=60) as servers:
        held = [await open_from(port, f"127.0.1.{n}") for n in range(10) for port in (servers.token_port, servers.probe_port)]
        await eventually(lambda: limits.open == 20)
        reader, writer = await open_from(servers.token_port, "127.0.2.1")
        assert await asyncio.wait_for(read_to_end(reader), 10) == b""  # over the total: reset at once
        writer.close()
        for _, held_writer in held:
            held_writer.close()
        await eventually(lambda: limits.open == 0)


@pytest.mark.parametrize("request_line", [b"FOO /metadata/instance HTTP/1.1", b"get / HTTP/1.1", b"GET /a\x1bb HTTP/1.1",
                                          b"GET metadata/instance HTTP/1.1", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
                                          b"GET / HTTP/1.1\r\nX: " + b"a" * 9000])
async def test_requests_aiohttp_cannot_parse_get_imds_json(request_line):
    limits = ConnectionLimits(per_source=64, total=1000)
    async with guarded_servers(limits=limits, head_timeout=5) as servers:
        answer = await exchange(servers.token_port, request_line + b"\r\nHost: x\r\n\r\n")
        assert answer.status == 400 and answer.headers["content-type"].startswith("application/json")
        assert rawhttp.RawAnswer(400, {}, answer.body).json == {"error": "invalid_request",
                                                                "error_description": "Malformed HTTP request"}


def test_total_is_derived_from_the_fd_limit_with_headroom():
    assert total_connections_for(1024) == 768
    assert total_connections_for(1 << 20) == (1 << 20) - (1 << 18)
    assert 0 < total_connections_for(300) < 300


# The real daemon, default limits (64 per source; the 10 s head timeout is exercised in process above).

def alive(sock: socket.socket) -> bool:
    sock.setblocking(False)  # a socket with a timeout would wait for data instead of answering at once
    try:
        return sock.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False


def test_the_daemon_keeps_serving_pods_and_probes_while_one_source_holds_140_half_sent_heads(nmi):
    pid = nmi.proc.pid
    assert nmi.get("/healthz", port=nmi.probe_port).status == 200
    eventually(lambda: open_fds(pid) > 0, timeout=15, interval=0.05)
    baseline = open_fds(pid)
    attack = []
    try:
        for _ in range(140):
            sock = rawhttp.connect(nmi.port, source=ATTACKER)
            sock.sendall(HALF_HEAD)
            attack.append(sock)
        eventually(lambda: sum(not alive(s) for s in attack) == 140 - 64, timeout=15, interval=0.05)
        assert open_fds(pid) <= baseline + 64 + 4
        assert nmi.token(source=BOUND_POD).status == 200
        health = nmi.get("/healthz", port=nmi.probe_port, source="127.0.0.7")
        assert health.status == 200 and health.body == "Active"
        assert sum(alive(s) for s in attack) == 64
    finally:
        for sock in attack:
            sock.close()
    # back down: the daemon's own sockets (watches, upstream connections) come and go, so a little slack
    eventually(lambda: open_fds(pid) <= baseline + 4, timeout=15, interval=0.05)


@pytest.mark.parametrize("data, status", [
    (rawhttp.head(b"GET /metadata/versions HTTP/1.1", {b"Metadata": b"true", b"Expect": b"200-ok"}), 417),
    (rawhttp.head(b"GET http://169.254.169.254%2F HTTP/1.1", {b"Expect": b"x"}), 417),
    (rawhttp.head(b"OPTIONS * HTTP/1.1", {b"Metadata": b"true"}), 404),
    (rawhttp.head(b"GET /a%0Ab HTTP/1.1", {b"Metadata": b"true"}), 404),
])
async def test_errors_aiohttp_raises_before_any_middleware_are_imds_json_on_the_token_port(data, status):
    """Found by the property suite: aiohttp's router and expect handling answer text before nmi's middleware."""
    limits = ConnectionLimits(per_source=64, total=1000)
    async with guarded_servers(limits=limits, head_timeout=5) as servers:
        answer = await exchange(servers.token_port, data)
        assert answer.status == status and answer.headers["content-type"].startswith("application/json")
        assert set(answer.json) == {"error", "error_description"}


async def test_expect_100_continue_still_gets_its_interim_answer():
    limits = ConnectionLimits(per_source=64, total=1000)
    async with guarded_servers(limits=limits, head_timeout=5) as servers:
        reader, writer = await open_from(servers.token_port, BOUND_POD)
        writer.write(TOKEN.replace(b"Metadata: true", b"Metadata: true\r\nExpect: 100-continue"))
        received = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        assert received.startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        assert rawhttp.parse(received).status == 200
