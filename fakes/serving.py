"""Serving a fake's aiohttp app on a TCP site: the start/stop pair every fake shares."""

from __future__ import annotations

import ssl
from typing import Any

from aiohttp import web


class Served:
    """`async with fake:` serves it on a free loopback port and stops it on the way out, also when the body fails
    (for the fakes with `start()` and `stop()`)."""

    async def __aenter__(self) -> Any:
        await self.start()  # type: ignore[attr-defined]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()  # type: ignore[attr-defined]


class FakeSite:
    """One app on one listening socket; `serve` answers the address actually bound (port 0: a free one)."""

    def __init__(self, *, shutdown_timeout: float = 0.5) -> None:
        self._shutdown_timeout = shutdown_timeout
        self._runner: web.AppRunner | None = None

    async def serve(self, app: web.Application, host: str, port: int, *,
                    ssl_context: ssl.SSLContext | None = None) -> tuple[str, int]:
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None,
                                     shutdown_timeout=self._shutdown_timeout)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, ssl_context=ssl_context)
        await site.start()
        bound = site._server.sockets[0].getsockname()  # type: ignore[union-attr]
        return bound[0], bound[1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
