"""The xtables lock (a plain flock on a temporary file here) and start-up errors of the backends."""

from __future__ import annotations

import fcntl
import os

import pytest

from iptables.detect import open_backend
from iptables.errors import BackendUnavailable, XtablesLockTimeout
from iptables.lock import XtablesLock
from iptables.nft import NftBackend


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_lock_is_created_private_and_released_after_the_block(tmp_path):
    path = tmp_path / "xtables.lock"
    lock = XtablesLock(str(path))
    with lock.held():
        assert oct(path.stat().st_mode & 0o777) == "0o600"
        other = os.open(path, os.O_RDWR)
        with pytest.raises(BlockingIOError):
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free again
    os.close(other)


def test_a_busy_lock_is_polled_until_the_deadline_then_times_out(tmp_path):
    path = str(tmp_path / "xtables.lock")
    clock = FakeClock()
    lock = XtablesLock(path, timeout=1.0, poll_interval=0.25, clock=clock, sleep=clock.sleep)
    holder = os.open(path, os.O_RDWR | os.O_CREAT)
    fcntl.flock(holder, fcntl.LOCK_EX)
    try:
        with pytest.raises(XtablesLockTimeout, match="held by another process for more than 1s"):
            with lock.held():
                pytest.fail("entered a lock someone else holds")
    finally:
        os.close(holder)
    assert clock.sleeps == [0.25] * 4


def test_a_lock_that_frees_up_while_waiting_is_taken(tmp_path):
    path = str(tmp_path / "xtables.lock")
    holder = os.open(path, os.O_RDWR | os.O_CREAT)
    fcntl.flock(holder, fcntl.LOCK_EX)
    clock = FakeClock()

    def sleep_and_release(seconds: float) -> None:
        clock.sleep(seconds)
        if len(clock.sleeps) == 2:
            os.close(holder)

    lock = XtablesLock(path, timeout=5, poll_interval=0.1, clock=clock, sleep=sleep_and_release)
    with lock.held():
        assert len(clock.sleeps) == 2


def test_unknown_backend_mode_is_refused_in_one_line():
    with pytest.raises(BackendUnavailable, match="unknown iptables backend 'ebpf', expected one of legacy, nft"):
        open_backend("ebpf")


def test_nft_backend_without_its_commands_is_unavailable():
    with pytest.raises(BackendUnavailable, match="iptables backend nft unusable: nmi-no-such-save not found"):
        NftBackend(save_command=("nmi-no-such-save",))
