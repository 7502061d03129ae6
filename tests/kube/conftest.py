"""Fixtures for the Kubernetes adapter: a fake API server on loopback and the real client pointed at it."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import AsyncIterator

import pytest

from nmi.kube import Informer
from tests.conftest import TOKEN

NODE = "node-1"
__all__ = ["TOKEN", "NODE"]


class RecordingSleep:
    """Injected into informers: records each backoff delay, and waits only a token moment (no spin)."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        time.sleep(0.01)


@pytest.fixture
def recording_sleep() -> RecordingSleep:
    return RecordingSleep()


@contextlib.asynccontextmanager
async def running(*informers: Informer) -> AsyncIterator[list[asyncio.Task]]:
    """Run informers as tasks until synced; cancel them (and wait for their threads) on exit."""
    tasks = [asyncio.create_task(informer.run()) for informer in informers]
    try:
        await asyncio.wait_for(asyncio.gather(*(i.synced.wait() for i in informers)), timeout=5)
        yield tasks
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


