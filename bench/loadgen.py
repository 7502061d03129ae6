"""The load generator: keep-alive HTTP/1.1 GETs over N connections for a fixed number of requests.

It runs in its own process (`python -m bench.loadgen`), pinned to another core than the server under test,
so the client does not steal the server's CPU. It is a bare asyncio Protocol rather than an aiohttp client:
the client must be much cheaper per request than the servers it measures, or it would measure itself.
It understands only what the servers here send (Content-Length bodies), and says so loudly otherwise.

Prints one JSON object (`LoadResult` fields) on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass
from urllib.parse import quote

TOKEN_PATH = "/metadata/identity/oauth2/token"
SAME_RESOURCE = "https://management.azure.com/"


@dataclass(frozen=True, slots=True)
class LoadResult:
    answered: int  # complete HTTP responses, whatever the status
    failed: int  # requests that got no complete response (connection lost, timeout)
    statuses: dict[str, int]
    seconds: float
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    client_cpu_seconds: float


def token_path(index: int, *, distinct_resources: bool, resource: str = "") -> str:
    resource_uri = resource or (f"https://bench-{index}.example/" if distinct_resources else SAME_RESOURCE)
    return f"{TOKEN_PATH}?api-version=2018-02-01&resource={quote(resource_uri, safe='')}"


def request_bytes(path: str, *, port: int, metadata: bool) -> bytes:
    header = "Metadata: true\r\n" if metadata else ""
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{header}\r\n".encode()


def percentile(sorted_values: list[float], fraction: float) -> float:
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, max(0, round(fraction * (len(sorted_values) - 1))))
    return sorted_values[index]


class _Connection(asyncio.Protocol):
    """One keep-alive connection with at most one request outstanding."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._waiter: asyncio.Future[int] | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if self._waiter is None or self._waiter.done():
            return
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self._buffer[:end]).lower()
        marker = head.find(b"\r\ncontent-length:")
        if marker < 0:
            self._waiter.set_exception(RuntimeError("answer without Content-Length: cannot frame it"))
            return
        start = marker + len(b"\r\ncontent-length:")
        stop = head.find(b"\r\n", start)
        length = int(head[start: stop if stop >= 0 else len(head)])
        total = end + 4 + length
        if len(self._buffer) < total:
            return
        del self._buffer[:total]
        self._waiter.set_result(int(head[9:12]))

    def connection_lost(self, exc: Exception | None) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(ConnectionError("connection closed before a complete answer"))

    async def send(self, data: bytes) -> int:
        self._waiter = asyncio.get_running_loop().create_future()
        assert self.transport is not None
        self.transport.write(data)
        return await self._waiter


async def _connect(port: int, source: str) -> _Connection:
    loop = asyncio.get_running_loop()
    _, connection = await loop.create_connection(_Connection, "127.0.0.1", port, local_addr=(source, 0))
    return connection


# ASYNC109 (use the caller's asyncio.timeout) does not fit: expiry ends the run with a result, the measurements so
# far, where a cancelled call would return nothing.
async def generate(*, port: int, count: int, concurrency: int, metadata: bool = True, distinct_resources: bool = False,
                   source: str = "127.0.0.1", timeout: float = 60.0, first_index: int = 0,  # noqa: ASYNC109
                   resource: str = "") -> LoadResult:
    """`count` requests over `concurrency` connections; request i asks for resource i when distinct.
    `timeout` bounds the whole run: requests still unanswered then count as failed."""
    cpu_before = _cpu_seconds()
    # Comma-separated sources: connection i comes from source i mod n (nmi caps connections per source).
    sources = source.split(",")
    connections = [await _connect(port, sources[i % len(sources)]) for i in range(max(1, min(concurrency, count)))]
    pending = iter(range(first_index, first_index + count))
    same = request_bytes(token_path(0, distinct_resources=False, resource=resource), port=port, metadata=metadata)
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    failed = 0

    async def worker(connection: _Connection) -> None:
        # No per-request wait_for: it wraps each request in a task, which would make the client cost more
        # than the baseline server it measures. The whole run is bounded instead.
        nonlocal failed
        for index in pending:
            data = (request_bytes(token_path(index, distinct_resources=True), port=port, metadata=metadata)
                    if distinct_resources else same)
            started = time.perf_counter()
            try:
                status = await connection.send(data)
            except ConnectionError:
                failed += 1
                connection = await _connect(port, sources[0])
                connections.append(connection)
                continue
            latencies.append(time.perf_counter() - started)
            statuses[str(status)] += 1

    started = time.perf_counter()
    try:
        await asyncio.wait_for(asyncio.gather(*(worker(c) for c in list(connections))), timeout)
    except TimeoutError:
        failed = count - len(latencies)
    finally:
        for connection in connections:
            if connection.transport is not None:
                connection.transport.close()
    seconds = time.perf_counter() - started
    latencies.sort()
    return LoadResult(answered=len(latencies), failed=failed, statuses=dict(statuses), seconds=seconds,
                      requests_per_second=len(latencies) / seconds if seconds > 0 else 0.0,
                      p50_ms=percentile(latencies, 0.50) * 1000, p99_ms=percentile(latencies, 0.99) * 1000,
                      max_ms=(latencies[-1] * 1000 if latencies else 0.0),
                      client_cpu_seconds=_cpu_seconds() - cpu_before)


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--no-metadata", dest="metadata", action="store_false", help="omit the Metadata header")
    parser.add_argument("--distinct-resources", action="store_true", help="a new resource for every request")
    parser.add_argument("--first-index", type=int, default=0, help="first resource number (with --distinct-resources)")
    parser.add_argument("--resource", default="", help="ask every request for this resource")
    parser.add_argument("--source", default="127.0.0.1", help="source address in 127.0.0.0/8")
    parser.add_argument("--timeout", type=float, default=60.0, help="bound on the whole run, seconds")
    args = parser.parse_args(argv)
    if not all(source.startswith("127.") for source in args.source.split(",")):
        parser.error("the load generator only sends to and from loopback")
    result = asyncio.run(generate(port=args.port, count=args.count, concurrency=args.concurrency,
                                  metadata=args.metadata, distinct_resources=args.distinct_resources,
                                  source=args.source, timeout=args.timeout, first_index=args.first_index,
                                  resource=args.resource))
    json.dump(asdict(result), sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
