"""`eventually`: the one bounded poll of the suite, instead of sleeping a guessed while and then asserting.

The bound only limits a failing test: a passing test returns as soon as the condition holds, so no test
depends on how fast the machine is. From a coroutine `await eventually(...)` (the loop keeps running while
it polls); from plain code (threads, subprocess tests) call it directly and it blocks between polls.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from typing import Any, Awaitable, Callable

Check = Callable[[], Any] | Callable[[], Awaitable[Any]]


def eventually(check: Check, *, timeout: float = 10.0, interval: float = 0.02, what: str = "") -> Any:
    """Poll `check()` (sync, or async when awaited) until it returns something truthy, and return that value.

    AssertionError naming `what` (or the check) and its last value after `timeout` seconds. An exception
    raised by `check` is not swallowed: it fails the test at once."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return _blocking(check, timeout=timeout, interval=interval, what=what)
    return _polling(check, within=timeout, interval=interval, what=what)


def _failure(check: Check, *, timeout: float, what: str, last: Any) -> AssertionError:
    return AssertionError(f"not within {timeout}s: {what or getattr(check, '__qualname__', check)} "
                          f"(last value: {last!r})")


def _blocking(check: Check, *, timeout: float, interval: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if inspect.isawaitable(value):
            close = getattr(value, "close", None)
            if close is not None:
                close()  # not awaited: no "never awaited" warning on top of the error below
            raise TypeError("an async check needs `await eventually(...)` from a coroutine")
        if value:
            return value
        if time.monotonic() >= deadline:
            raise _failure(check, timeout=timeout, what=what, last=value)
        time.sleep(interval)


async def _polling(check: Check, *, within: float, interval: float, what: str) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if loop.time() >= deadline:
            raise _failure(check, timeout=within, what=what, last=value)
        await asyncio.sleep(interval)
