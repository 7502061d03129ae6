"""Fixtures shared across suites: the fake API server on loopback and the real kubernetes client pointed at it."""

from __future__ import annotations

from typing import AsyncIterator

import pytest

from fakes.apiserver import FakeApiServer
from nmi.kube import build_api_client

TOKEN = "test-bearer-token"


@pytest.fixture
async def apiserver() -> AsyncIterator[FakeApiServer]:
    server = FakeApiServer(bookmark_interval=None, token=TOKEN)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
def api_client(apiserver: FakeApiServer):
    client = build_api_client(host=apiserver.url, token=TOKEN)
    try:
        yield client
    finally:
        client.close()
