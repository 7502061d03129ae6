"""The suite's own guards can fail: `eventually` gives up at its bound and names what it waited for; the leak
checks of tests/conftest.py name a task or a thread left behind, and let finishing ones finish."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests import leaks
from tests.eventually import eventually


def test_eventually_returns_the_first_truthy_value_from_plain_code():
    values = iter([0, None, "", "done"])
    assert eventually(lambda: next(values), timeout=5, interval=0) == "done"


def test_eventually_fails_at_its_bound_naming_what_it_waited_for():
    with pytest.raises(AssertionError, match=r"not within 0.05s: the answer \(last value: 0\)"):
        eventually(lambda: 0, timeout=0.05, interval=0.01, what="the answer")


def test_eventually_lets_an_exception_of_the_check_through_at_once():
    def broken() -> bool:
        raise KeyError("bug")

    with pytest.raises(KeyError):
        eventually(broken, timeout=60)


async def test_eventually_in_a_coroutine_keeps_the_loop_running_and_awaits_async_checks():
    done = asyncio.Event()
    asyncio.get_running_loop().call_later(0.05, done.set)  # runs only if the poll yields to the loop

    async def is_done() -> bool:
        return done.is_set()

    assert await eventually(is_done, timeout=5, interval=0.01) is True
    with pytest.raises(AssertionError, match="not within"):
        await eventually(lambda: False, timeout=0.05, interval=0.01)


def test_eventually_refuses_an_async_check_from_plain_code():
    async def check() -> bool:
        return True

    with pytest.raises(TypeError, match="await eventually"):
        eventually(check, timeout=1)


def test_a_pending_task_is_named_and_a_cancelled_one_is_let_finish():
    loop = asyncio.new_event_loop()
    try:
        stuck = loop.create_task(asyncio.Event().wait(), name="stuck-watch")
        cancelled = loop.create_task(asyncio.Event().wait(), name="cancelled")
        loop.run_until_complete(asyncio.sleep(0))
        cancelled.cancel()  # as a fixture's teardown does: it ends on the next loop turn (the grace)

        assert leaks.pending_tasks(loop, grace=0.1) == ["task 'stuck-watch' running Event.wait"]
        assert cancelled.cancelled()
        stuck.cancel()
        loop.run_until_complete(asyncio.sleep(0))
        assert leaks.pending_tasks(loop) == []
    finally:
        loop.close()


def test_a_thread_left_running_is_named_and_an_executor_winding_down_is_not():
    before = set(threading.enumerate())
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="winding-down")
    executor.submit(threading.Event().wait, 0.1)
    executor.shutdown(wait=False)  # its thread ends within the grace
    release = threading.Event()
    left = threading.Thread(target=release.wait, name="left-behind", daemon=True)
    left.start()
    try:
        assert leaks.extra_threads(before, grace=0.5) == ["thread 'left-behind' (daemon) running Event.wait"]
    finally:
        release.set()
        left.join(5)
    assert leaks.extra_threads(before) == []
