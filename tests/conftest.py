"""Fixtures shared across suites: the fake API server on loopback and the real kubernetes client pointed at it;
and, for every test, the check that it leaves no task or thread behind (tests/leaks.py)."""

from __future__ import annotations

import threading
from typing import AsyncIterator, Iterator

import pytest

from fakes.apiserver import FakeApiServer
from nmi.kube import build_api_client
from tests import leaks

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


# pytest-asyncio's runner of a test's event loop: torn down (loop closed, leftover tasks silently cancelled)
# after the fixtures that depend on it.
RUNNER = "_function_scoped_runner"


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    """Fails the test if threads it started still run after every function fixture, the loop's runner
    included, was torn down. Requested first (autouse, root conftest): torn down last."""
    before = set(threading.enumerate())
    yield
    leaked = leaks.extra_threads(before)
    if leaked:
        pytest.fail("the test left threads running: " + "; ".join(leaked), pytrace=False)


@pytest.fixture(autouse=True)
def no_leaked_tasks(no_leaked_threads: None, request: pytest.FixtureRequest) -> Iterator[None]:
    """Fails an async test that leaves tasks pending on its loop once its other fixtures were torn down."""
    if RUNNER not in request.fixturenames:
        yield
        return
    # Requested here, the runner is set up before this fixture and so torn down after it: the loop is still open.
    loop = request.getfixturevalue(RUNNER).get_loop()
    yield
    leaked = leaks.pending_tasks(loop)
    if leaked:
        pytest.fail("the test left asyncio tasks pending: " + "; ".join(leaked), pytrace=False)
