"""The default route: every other path goes to the real IMDS, bounded and without surprises.

Unlike upstream: a bounded timeout, hop-by-hop headers stripped both ways, redirects passed back rather than
followed, bodies streamed in both directions, and 502 JSON when IMDS cannot be reached.
"""

from __future__ import annotations

import asyncio
import logging
from typing import ItemsView, Protocol

import aiohttp
from aiohttp import web
from yarl import URL

from .errors import BadGateway
from .imds import quote_path

log = logging.getLogger(__name__)

HOP_BY_HOP = frozenset(h.lower() for h in (
    "Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "Proxy-Connection", "TE",
    "Trailer", "Transfer-Encoding", "Upgrade", "Host", "Content-Length",
))
CHUNK = 64 * 1024


class _Headers(Protocol):
    """What is read of aiohttp's headers (a CIMultiDictProxy) on either side."""

    def getall(self, key: str, default: list[str], /) -> list[str]: ...

    def items(self) -> ItemsView[str, str]: ...


def _end_to_end(headers: _Headers) -> list[tuple[str, str]]:
    named_by_connection = {h.strip().lower() for v in headers.getall("Connection", []) for h in v.split(",")}
    return [(k, v) for k, v in headers.items() if k.lower() not in HOP_BY_HOP and k.lower() not in named_by_connection]


class ImdsProxy:
    def __init__(self, metadata_ip: str, metadata_port: int, *, timeout: float = 30.0) -> None:
        self._base = f"http://{metadata_ip}:{metadata_port}"
        self._host = f"{metadata_ip}:{metadata_port}"
        self._timeout = aiohttp.ClientTimeout(total=timeout, connect=min(5.0, timeout))
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=self._timeout, auto_decompress=False, trust_env=False)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def forward(self, request: web.Request, path: str) -> web.StreamResponse:
        """Forward the already normalised and checked `path` with the original raw query."""
        if self._session is None:
            await self.start()
        assert self._session is not None
        raw_query = request.raw_path.partition("?")[2]
        url = URL(self._base + quote_path(path) + (f"?{raw_query}" if raw_query else ""), encoded=True)
        headers = _end_to_end(request.headers)
        headers.append(("Host", self._host))
        body = request.content if request.body_exists else None
        response: web.StreamResponse | None = None
        try:
            async with self._session.request(request.method, url, headers=headers, data=body,
                                             allow_redirects=False) as upstream:
                response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
                for key, value in _end_to_end(upstream.headers):
                    response.headers.add(key, value)
                if upstream.content_length is not None:
                    response.content_length = upstream.content_length
                await response.prepare(request)
                async for chunk in upstream.content.iter_chunked(CHUNK):
                    await response.write(chunk)
                await response.write_eof()
                return response
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            if response is not None and response.prepared:
                log.warning("IMDS proxy: upstream failed mid-response for %s: %s", path, type(exc).__name__)
                raise  # headers are gone; aiohttp drops the connection, which the client sees as truncated
            log.warning("IMDS proxy: %s unreachable for %s: %s", self._host, path, type(exc).__name__)
            raise BadGateway(f"The instance metadata service at {self._host} did not answer") from exc
