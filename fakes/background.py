"""The fake API server and fake IMDS on their own event loop thread, for code that is not async itself: tests and
benchmarks that run nmi as a real process and change the cluster (or break it) while nmi runs.

    with BackgroundFakes([identity]) as fakes:       # started; stopped on exit, also when the caller fails
        fakes.put_all(objects)
        path.write_text(kubeconfig(fakes.api.url))  # for nmi's --kubeconfig; IMDS at 127.0.0.1:fakes.imds.port
        fakes.call(lambda: fakes.api.requests_for("pods"))   # any look at the fakes' state runs on their loop
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Callable, Coroutine, Iterable, TypeVar

from .apiserver import FakeApiServer
from .imds import FakeImds, VmIdentity

T = TypeVar("T")


class BackgroundFakes:
    """FakeApiServer + FakeImds on a private loop thread. Their state is touched only on that loop: `call(fn)`
    runs fn there, `run(coro)` awaits coro there; each waits at most `timeout` seconds."""

    def __init__(self, vm_identities: Iterable[VmIdentity], *, bookmark_interval: float | None = 1.0,
                 timeout: float = 10.0) -> None:
        self.loop = asyncio.new_event_loop()
        self.api = FakeApiServer(bookmark_interval=bookmark_interval)
        self.imds = FakeImds(list(vm_identities))
        self.timeout = timeout
        self._thread = threading.Thread(target=self.loop.run_forever, name="fakes", daemon=True)

    def start(self, *, api_port: int | None = 0) -> BackgroundFakes:
        """The loop and IMDS, and the API server on `api_port` (0: a free one) unless it is None: a test that
        starts nmi before the cluster is reachable calls `start_api` later. Stops what it started if it fails."""
        self._thread.start()
        try:
            self.run(self.imds.start())
            if api_port is not None:
                self.start_api(api_port)
        except BaseException:
            self.stop()
            raise
        return self

    def start_api(self, port: int = 0) -> None:
        self.run(self.api.start(port=port))

    def stop_api(self) -> None:
        """The API server goes away mid-watch: streams are cut (no clean end), then the socket closes."""
        self.call(self.api.cut_watches)
        self.run(self.api.stop(close_watches=False))

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(self.timeout)

    def call(self, fn: Callable[[], T]) -> T:
        async def on_loop() -> T:
            return fn()
        return self.run(on_loop())

    def put(self, obj: dict[str, Any]) -> None:
        self.call(lambda: self.api.put(obj))

    def put_all(self, objects: Iterable[dict[str, Any]]) -> None:
        objects = list(objects)
        self.call(lambda: [self.api.put(obj) for obj in objects])

    def delete(self, kind: str, namespace: str, name: str) -> None:
        self.call(lambda: self.api.delete(kind, namespace, name))

    def imds_token_requests(self) -> int:
        return self.call(lambda: self.imds.token_requests)

    def stop(self) -> None:
        """Stops both fakes and the loop thread, and closes the loop; also when never started, or again."""
        if self._thread.is_alive():
            try:
                self.run(self.imds.stop())
                self.run(self.api.stop())
            finally:
                self.loop.call_soon_threadsafe(self.loop.stop)
                self._thread.join(5)
        if not self._thread.is_alive() and not self.loop.is_closed():
            self.loop.close()

    def __enter__(self) -> BackgroundFakes:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def kubeconfig(server_url: str) -> str:
    """A kubeconfig for nmi's --kubeconfig pointing at a fake API server (which takes any bearer token)."""
    return f"""apiVersion: v1
kind: Config
clusters:
- name: demo
  cluster:
    server: {server_url}
users:
- name: nmi
  user:
    token: demo-token
contexts:
- name: demo
  context:
    cluster: demo
    user: nmi
current-context: demo
"""
