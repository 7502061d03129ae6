"""A list+watch informer over the real `kubernetes` client, without its models or its watch helper.

The blocking client runs in one thread owned by the informer. It lists, then watches from the list's
resourceVersion with bookmarks and a server-side timeout (so the client library never re-watches on its
own, which is what causes tight loops), parses the ndjson stream itself and hands every change to the
event loop, where the store is mutated. 410 Gone → relist and replace the store in one step; other
failures → backoff with jitter; a stream that ends normally → re-watch from the last resourceVersion.
With a `CacheHealth`, every list success, accepted watch, failure and 410 is reported to it (see nmi.freshness
for what makes a cache stale).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

from kubernetes.client.exceptions import ApiException

from ..cache import Store
from ..freshness import CacheHealth
from .projection import object_key
from .watchstream import (Expired, WatchFailed, backoff_delay, describe_failure, json_body, ndjson_lines,
                          short_failure)

log = logging.getLogger(__name__)

RestartHook = Callable[[str, str], None]  # (resource, reason): reason is "closed", "expired" or "error"
ErrorHook = Callable[[str, str], None]  # (resource, operation): operation is "list" or "watch"
COALESCE_SECONDS = 0.001  # during a burst of events, how often the loop takes what the thread has queued


@dataclass(frozen=True, slots=True)
class WatchTarget:
    """What to list and watch, and how to read it."""

    resource: str  # plural name, for logs and metrics
    list_call: Callable[..., Any]  # a real client list method (CRD group/version/plural already bound)
    project: Callable[[Any], Any]  # raw dict → value type, None when malformed
    field_selector: str | None = None
    label_selector: str | None = None


class Informer:
    def __init__(
        self,
        target: WatchTarget,
        store: Store[Any],
        *,
        watch_timeout_seconds: int = 300,
        list_timeout: float = 30.0,
        sleep: Callable[[float], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        backoff: Callable[[int], float] = backoff_delay,
        min_watch_seconds: float = 1.0,
        stop_timeout: float = 2.0,
        on_restart: RestartHook | None = None,
        on_api_error: ErrorHook | None = None,
        health: CacheHealth | None = None,
        connect_timeout: float = 10.0,
        list_page: int = 500,
    ) -> None:
        self.target = target
        self.store = store
        self.synced = asyncio.Event()
        self.resource_version = ""
        self.restarts = 0
        self.relists = 0
        self.errors = 0
        self.on_restart = on_restart
        self.on_api_error = on_api_error
        self.health = health
        if health is not None:
            health.track(target.resource)
        self._connect_timeout = connect_timeout
        self._watch_timeout = watch_timeout_seconds
        self._list_page = list_page
        self._list_timeout = list_timeout
        self._sleep = sleep
        self._clock = clock
        self._backoff = backoff
        self._min_watch_seconds = min_watch_seconds
        self._stop_timeout = stop_timeout
        self._stop = threading.Event()
        self._response_lock = threading.Lock()
        self._response: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._done: asyncio.Future[None] | None = None
        self._handoff: deque[tuple[Callable[..., None], tuple[Any, ...]]] = deque()
        self._wakeup_pending = False

    async def run(self) -> None:
        """List and watch until cancelled. Cancelling stops the thread promptly (its stream is shut down)."""
        self._loop = asyncio.get_running_loop()
        self._stop.clear()
        self._handoff.clear()
        self._wakeup_pending = False
        done: asyncio.Future[None] = self._loop.create_future()
        self._done = done
        thread = threading.Thread(
            target=self._thread_main, args=(done,), name=f"informer-{self.target.resource}", daemon=True
        )
        thread.start()
        try:
            await asyncio.shield(done)
        finally:
            self._request_stop()
            if not done.done():
                try:
                    await asyncio.wait_for(asyncio.shield(done), timeout=self._stop_timeout)
                except TimeoutError:
                    # Only a request still connecting can hold it; the thread is a daemon and ends with it.
                    log.warning("informer %s: thread did not stop in time", self.target.resource)
                except Exception:  # noqa: BLE001 - already stopping; do not mask the cancellation
                    log.exception("informer %s: thread failed while stopping", self.target.resource)

    # -- thread side ---------------------------------------------------------------------------------

    def _thread_main(self, done: asyncio.Future[None]) -> None:
        error: BaseException | None = None
        try:
            self._loop_forever()
        except BaseException as exc:  # a bug: let run() raise it so the daemon stops
            error = exc
        finally:
            self._post(_settle, done, error)

    def _loop_forever(self) -> None:
        rv = ""
        failures = 0
        while not self._stop.is_set():
            operation = "list"
            started = self._clock()
            delivered = False
            try:
                if not rv:
                    rv = self._list()
                operation = "watch"
                started = self._clock()
                rv, delivered = self._watch(rv)
                reason = "closed"
            except Expired:
                rv, reason = "", "expired"
                self._post(self._report, "expired")
            except Exception as exc:  # noqa: BLE001 - every foreign failure means: back off, retry
                if self._stop.is_set():
                    return
                # A watch that ran healthy for a while and then broke starts the backoff afresh: only failures
                # in a row grow it (else a few cuts hours apart would leave every later cut 30 s blind).
                lasted = operation == "watch" and self._clock() - started >= self._min_watch_seconds
                failures = 1 if lasted else failures + 1
                reason = "error"
                self.errors += 1
                log.warning("informer %s: %s failed (%s), retrying", self.target.resource, operation, describe_failure(exc))
                self._post(self._hook_error, operation)
                self._post(self._report, "failed", operation, short_failure(exc))
            if reason != "error":
                # A server that ends (or expires) streams at once must not make us hammer it.
                quick = not delivered and self._clock() - started < self._min_watch_seconds
                failures = failures + 1 if quick else 0
            if self._stop.is_set():
                return
            self.restarts += 1
            self._post(self._hook_restart, reason)
            if failures:
                self._pause(self._backoff(failures))

    def _list(self) -> str:
        # In pages, as client-go's reflector lists: only one page of raw JSON is alive at a time, so listing
        # 10,000 objects does not leave the process holding (and the allocator keeping) a 100 MiB parse tree.
        projected: list[Any] = []
        rv, token = "", ""
        while True:
            paging = {"limit": self._list_page, "_continue": token} if token else {"limit": self._list_page}
            response = self.target.list_call(
                **self._selectors(), **paging, _preload_content=False,
                _request_timeout=(min(self._connect_timeout, self._list_timeout), self._list_timeout),
            )
            body = json_body(response)
            projected.extend(item for item in map(self.target.project, body.get("items") or []) if item is not None)
            meta = body.get("metadata") or {}
            rv = rv or str(meta.get("resourceVersion") or "")  # every page is the first page's snapshot
            token = str(meta.get("continue") or "")
            del body, response
            if not token:
                break
        self._post(self._apply_list, projected, rv)
        return rv

    def _watch(self, rv: str) -> tuple[str, bool]:
        try:
            response = self.target.list_call(
                **self._selectors(),
                watch=True,
                resource_version=rv,
                allow_watch_bookmarks=True,
                timeout_seconds=self._watch_timeout,
                _preload_content=False,
                # The read timeout only catches a dead connection; the server ends the stream first.
                # A short connect timeout: a blackholed API server turns the cache stale within seconds.
                _request_timeout=(self._connect_timeout, self._watch_timeout + 30),
            )
        except ApiException as exc:
            if exc.status == 410:
                raise Expired() from exc
            raise
        self._post(self._report, "watching")  # accepted: the stream resumes from `rv`, replaying what was missed
        with self._response_lock:
            self._response = response
        delivered = False
        try:
            if self._stop.is_set():
                return rv, delivered
            for line in ndjson_lines(response):
                rv = self._handle(line, rv)
                delivered = True
        finally:
            with self._response_lock:
                self._response = None
            response.close()
        return rv, delivered

    def _handle(self, line: bytes, rv: str) -> str:
        event = json.loads(line.decode("utf-8", "surrogatepass"))  # what json.loads(bytes) does, minus sniffing
        kind, raw = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            if raw.get("code") == 410:
                raise Expired()
            raise WatchFailed(f"watch error {raw.get('code')}: {raw.get('reason')}")
        new_rv = str(((raw.get("metadata") or {}).get("resourceVersion")) or rv)
        if kind == "BOOKMARK":
            self._post(self._note_rv, new_rv)
            return new_rv
        item = self.target.project(raw) if kind in ("ADDED", "MODIFIED") else None
        if item is not None:
            self._post(self._upserted, item, new_rv)  # one hand-over per event: the change and its version
            return new_rv
        key = object_key(raw)
        if key is not None:
            # DELETED, or an object that became malformed: either way it must not linger in the cache.
            self._post(self._discarded, key, new_rv)
        else:
            self._post(self._note_rv, new_rv)
        return new_rv

    def _selectors(self) -> dict[str, str]:
        selectors = {}
        if self.target.field_selector:
            selectors["field_selector"] = self.target.field_selector
        if self.target.label_selector:
            selectors["label_selector"] = self.target.label_selector
        return selectors

    def _pause(self, delay: float) -> None:
        if self._sleep is not None:
            self._sleep(delay)
        else:
            self._stop.wait(delay)

    def _request_stop(self) -> None:
        self._stop.set()
        with self._response_lock:
            response = self._response
        if response is not None:
            try:
                response.shutdown()  # wakes the thread blocked in recv
            except (ValueError, RuntimeError, OSError):
                pass

    def _post(self, callback: Callable[..., None], *args: Any) -> None:
        # Changes queue up in order; the loop is woken once per batch, not once per event: a wake-up is a
        # lock and a pipe write, which made applying a burst of watch events cost more than parsing them.
        self._handoff.append((callback, args))
        if self._wakeup_pending:
            return
        self._wakeup_pending = True
        try:
            self._loop.call_soon_threadsafe(self._drain)  # type: ignore[union-attr]  # set by start()
        except RuntimeError:  # loop closed: we are shutting down
            self._stop.set()

    # -- loop side -----------------------------------------------------------------------------------

    def _drain(self) -> None:
        """Everything handed over so far, in order. After a drain that found changes, the loop looks again
        `COALESCE_SECONDS` later instead of letting the thread wake it for each event: in a burst, waking the loop
        (a pipe write, then both threads trading the GIL) cost more than the event itself. Only a drain that
        finds nothing clears the flag, so the first change after a quiet spell still wakes the loop at once."""
        handoff = self._handoff
        if not handoff:
            self._wakeup_pending = False
            if handoff:  # queued between the check and the clear, and the thread saw the flag still set
                self._wakeup_pending = True
                asyncio.get_running_loop().call_soon(self._drain)
            return
        while handoff:
            callback, args = handoff.popleft()
            self._on_loop(callback, args)
        asyncio.get_running_loop().call_later(COALESCE_SECONDS, self._drain)

    def _on_loop(self, callback: Callable[..., None], args: tuple[Any, ...]) -> None:
        try:
            callback(*args)
        except Exception as exc:  # a bug in a store: the cache can no longer be trusted, so run() fails
            self._request_stop()
            if self._done is not None and not self._done.done():
                self._done.set_exception(exc)

    def _apply_list(self, items: list[Any], rv: str) -> None:
        self.store.replace(items)
        self.resource_version = rv
        if self.synced.is_set():
            self.relists += 1
        self.synced.set()
        if self.health is not None:
            self.health.listed(self.target.resource)
        log.debug("informer %s: listed %d objects at %s", self.target.resource, len(items), rv)

    def _report(self, what: str, *args: str) -> None:
        if self.health is not None:
            getattr(self.health, what)(self.target.resource, *args)

    def _note_rv(self, rv: str) -> None:
        self.resource_version = rv

    def _upserted(self, item: Any, rv: str) -> None:
        self.store.upsert(item)
        self.resource_version = rv

    def _discarded(self, key: tuple[str, str], rv: str) -> None:
        self.store.discard(*key)
        self.resource_version = rv

    def _hook_restart(self, reason: str) -> None:
        if reason != "closed":
            log.info("informer %s: watch restarting (%s)", self.target.resource, reason)
        if self.on_restart is not None:
            self.on_restart(self.target.resource, reason)

    def _hook_error(self, operation: str) -> None:
        if self.on_api_error is not None:
            self.on_api_error(self.target.resource, operation)


def _settle(done: asyncio.Future[None], error: BaseException | None) -> None:
    if done.done():
        return
    if error is None:
        done.set_result(None)
    else:
        done.set_exception(error)
