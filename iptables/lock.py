"""The xtables lock: the advisory flock every iptables command takes before it changes a table.

python-iptables takes no lock of its own, and a legacy commit replaces the whole table, so without it a commit
racing kube-proxy's would fail or undo the other's work. We lock the way iptables 1.8 does: flock on
/run/xtables.lock (created 0600 if absent), polling, with a bounded wait.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from typing import Callable, Iterator

from .errors import IptablesError, XtablesLockTimeout

DEFAULT_LOCK_PATH = "/run/xtables.lock"


class XtablesLock:
    def __init__(
        self,
        path: str | None = None,
        *,
        timeout: float = 5.0,
        poll_interval: float = 0.05,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        # XTABLES_LOCKFILE is where iptables itself looks when it is set: nmi and the node's tools share one lock.
        self.path = path or os.environ.get("XTABLES_LOCKFILE") or DEFAULT_LOCK_PATH
        self._timeout = timeout
        self._poll_interval = poll_interval
        self._clock = clock
        self._sleep = sleep

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Hold the lock for the duration of the block; raise XtablesLockTimeout after `timeout` seconds."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise IptablesError(f"cannot open xtables lock {self.path}: {exc.strerror}") from exc
        try:
            deadline = self._clock() + self._timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if self._clock() >= deadline:
                        raise XtablesLockTimeout(
                            f"xtables lock {self.path} held by another process for more than {self._timeout:g}s"
                        ) from None
                    self._sleep(self._poll_interval)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the flock
