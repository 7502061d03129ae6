"""Two small pieces every cache of nmi is built from: a bounded LRU map, and single flight.

* `Lru`: at most `max_entries`, the least recently used dropped first. Reading with `peek` does not count as a
  use, so a caller can look at an entry and `touch` it only when it is good enough to serve.
* `SingleFlight`: at most one running task per key. Concurrent callers for one key share it; each awaits it
  through `shield`, so a caller that goes away does not cancel the work the others (and the cache) wait for.

Pure asyncio; used by the token cache, the ServiceAccount assertion cache, the credential loader, the MSAL
application cache and the live pod lookups (nmi.live_lookups).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from typing import Any, Callable, Coroutine, Generic, Hashable, Iterator, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Lru(Generic[K, V]):
    def __init__(self, max_entries: int) -> None:
        self._max = max_entries
        self._entries: OrderedDict[K, V] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def peek(self, key: K) -> V | None:
        """The entry, not counted as a use."""
        return self._entries.get(key)

    def touch(self, key: K) -> None:
        """Count a use: the entry becomes the most recently used."""
        self._entries.move_to_end(key)

    def get(self, key: K) -> V | None:
        """The entry, counted as a use when there is one."""
        value = self._entries.get(key)
        if value is not None:
            self._entries.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        """Store as the most recently used; drops the least recently used beyond `max_entries`."""
        self._entries[key] = value
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def pop(self, key: K) -> V | None:
        return self._entries.pop(key, None)

    def drop(self, unwanted: Callable[[K, V], bool]) -> None:
        for key in [k for k, v in self._entries.items() if unwanted(k, v)]:
            del self._entries[key]

    def items(self) -> Iterator[tuple[K, V]]:
        """A snapshot: the map may change while the caller iterates."""
        return iter(list(self._entries.items()))

    def clear(self) -> None:
        self._entries.clear()


class SingleFlight(Generic[K, V]):
    def __init__(self, *, on_done: Callable[[K, asyncio.Task[V]], None] | None = None) -> None:
        self._running: dict[K, asyncio.Task[V]] = {}
        self._on_done = on_done  # after the key is free again: a caller may start the next flight from it

    def __contains__(self, key: object) -> bool:
        return key in self._running

    def __bool__(self) -> bool:
        return bool(self._running)

    def start(self, key: K, work: Callable[[], Coroutine[Any, Any, V]], *, name: str | None = None) -> asyncio.Task[V]:
        """The running task for `key`, or a new one running `work()` when there is none."""
        task = self._running.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(work(), name=name)
            self._running[key] = task
            task.add_done_callback(lambda done: self._finished(key, done))
        return task

    async def join(self, key: K, work: Callable[[], Coroutine[Any, Any, V]], *, name: str | None = None) -> V:
        """The result of the one flight for `key`, started if none is running."""
        return await asyncio.shield(self.start(key, work, name=name))

    async def wait_idle(self) -> None:
        """Until no flight is running (flights that finish may start others)."""
        while self._running:
            await asyncio.gather(*self._running.values(), return_exceptions=True)

    async def cancel(self) -> None:
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _finished(self, key: K, task: asyncio.Task[V]) -> None:
        if self._running.get(key) is task:
            del self._running[key]
        if self._on_done is not None:
            self._on_done(key, task)
