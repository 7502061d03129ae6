"""What a test leaves behind: asyncio tasks still pending on its loop, threads it started that still run.

tests/conftest.py fails a test that leaves either (an error at teardown naming them). Both checks first grant a
short bounded grace: a task cancelled in a fixture's teardown needs a loop turn to finish; executor threads
finish their current item after `shutdown(wait=False)`. A leak is what is still there after that.
"""

from __future__ import annotations

import asyncio
import threading
import time

TASK_GRACE = 1.0  # seconds the loop runs for pending tasks to finish before they count as leaked
THREAD_GRACE = 2.0  # seconds for threads started by the test to end before they count as leaked

# Threads allowed to outlive the test that started them, by name prefix or thread class, each with its reason.
ALLOWED_THREADS: dict[str, str] = {
    # nmi's certificate parser pool (nmi.tokens.credentials.ParserProcess, a ProcessPoolExecutor) is process-wide by design: started by
    # the first parse, reused after, ended by nmi's shutdown. These two threads are that pool's, from the stdlib.
    "_ExecutorManagerThread": "the parser pool's manager thread (concurrent.futures)",
    "QueueFeederThread": "the parser pool's call queue feeder (multiprocessing)",
}


def describe_task(task: asyncio.Task) -> str:
    coro = task.get_coro()
    where = getattr(coro, "__qualname__", None) or repr(coro)
    return f"task {task.get_name()!r} running {where}"


def pending_tasks(loop: asyncio.AbstractEventLoop, *, grace: float = TASK_GRACE) -> list[str]:
    """The tasks of `loop` still pending after the grace (the loop is not running: a fixture's teardown)."""
    tasks = {task for task in asyncio.all_tasks(loop) if not task.done()}
    if tasks and not loop.is_closed() and not loop.is_running():
        loop.run_until_complete(asyncio.wait(tasks, timeout=grace))
    return sorted(describe_task(task) for task in tasks if not task.done())


def allowed(thread: threading.Thread) -> bool:
    return type(thread).__name__ in ALLOWED_THREADS or any(thread.name.startswith(p) for p in ALLOWED_THREADS)


def extra_threads(before: set[threading.Thread], *, grace: float = THREAD_GRACE) -> list[str]:
    """Threads alive now that were not before the test (minus the allowed ones), after the grace."""
    deadline = time.monotonic() + grace
    while True:
        extra = [t for t in threading.enumerate() if t not in before and t.is_alive() and not allowed(t)]
        if not extra or time.monotonic() >= deadline:
            break
        extra[0].join(timeout=max(0.0, deadline - time.monotonic()))
    return sorted(f"thread {t.name!r}{' (daemon)' if t.daemon else ''} running {_target(t)}" for t in extra)


def _target(thread: threading.Thread) -> str:
    target = getattr(thread, "_target", None)
    return getattr(target, "__qualname__", None) or type(thread).__qualname__
