"""The supervisor's logic against an in-memory backend, with injected sleep: no kernel, no waiting."""

from __future__ import annotations

import asyncio
from typing import Callable

import pytest

from iptables.errors import IptablesError, XtablesLockTimeout
from iptables.rules import CHAIN, ActualState, ChainSpec
from iptables.supervisor import check_and_repair, remove_chain, supervise
from tests.iptables.fake_backend import FakeBackend

SPEC = ChainSpec("169.254.169.254", 80, "10.244.0.1", 2579)


class FakeSleep:
    """Records every requested pause and returns at once; runs `actions[n]` during the n-th pause."""

    def __init__(self) -> None:
        self.calls: list[float] = []
        self.actions: dict[int, Callable[[], None]] = {}

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)
        action = self.actions.get(len(self.calls))
        if action is not None:
            action()
        await asyncio.sleep(0)


@pytest.fixture
def backend() -> FakeBackend:
    return FakeBackend()


@pytest.fixture
def stop() -> asyncio.Event:
    return asyncio.Event()


@pytest.fixture
def sleep() -> FakeSleep:
    return FakeSleep()


async def run(backend, stop, sleep, **kwargs) -> tuple[list[bool], list[str]]:
    states: list[bool] = []
    repairs: list[str] = []
    await asyncio.wait_for(supervise(backend, SPEC, interval=60, on_state=states.append, stop=stop, sleep=sleep,
                                     on_repair=repairs.append, **kwargs), timeout=5)
    return states, repairs


async def test_ready_is_reported_only_once_the_chain_is_in_place(backend, stop, sleep):
    seen_installed: list[bool] = []

    def on_state(ok: bool) -> None:
        seen_installed.append(ok and backend.installed(SPEC))

    sleep.actions[1] = stop.set
    await supervise(backend, SPEC, interval=60, on_state=on_state, stop=stop, sleep=sleep)
    assert seen_installed == [True, False]  # True while installed, then False on the way out
    assert sleep.calls == [60]


async def test_after_install_runs_once_before_ready(backend, stop, sleep):
    order: list[str] = []
    sleep.actions[3] = stop.set
    await supervise(backend, SPEC, interval=60, stop=stop, sleep=sleep,
                    on_state=lambda ok: order.append(f"state {ok}"),
                    after_install=lambda: order.append("conntrack"))
    assert order == ["conntrack", "state True", "state False"]


async def test_drift_is_repaired_at_the_next_check_and_reported(backend, stop, sleep):
    def flush_chain() -> None:
        chains = dict(backend.state.chains)
        chains[CHAIN] = ()
        backend.state = ActualState(chains)

    sleep.actions[1] = flush_chain
    sleep.actions[2] = lambda: None if backend.installed(SPEC) else pytest.fail("not repaired")
    sleep.actions[3] = stop.set
    states, repairs = await run(backend, stop, sleep)
    assert repairs == ["chain aad-metadata is empty"]
    assert states == [True, False]  # repaired without ever reporting broken
    assert sleep.calls == [60, 60, 60]


async def test_a_pass_without_drift_never_takes_the_lock(backend):
    check_and_repair(backend, SPEC)
    assert backend.converge_calls == 1
    for _ in range(3):
        assert check_and_repair(backend, SPEC).is_empty
    assert backend.converge_calls == 1


async def test_failures_back_off_exponentially_report_broken_then_recover(backend, stop, sleep):
    backend.fail_next = [XtablesLockTimeout("lock busy")] * 4
    sleep.actions[6] = stop.set
    states, repairs = await run(backend, stop, sleep, retry_initial=0.5, retry_max=3)
    assert sleep.calls == [0.5, 1.0, 2.0, 3.0, 60, 60]
    assert states == [False, True, False]
    assert repairs == []  # the first successful pass is the install, not a repair


async def test_stop_removes_jump_and_chain_and_leaves_other_rules(backend, stop, sleep):
    sleep.actions[1] = stop.set
    await run(backend, stop, sleep)
    assert not backend.state.has_chain(CHAIN)
    assert backend.state.rules("PREROUTING") == ("-j KUBE-SERVICES",)


async def test_stop_during_a_pause_ends_the_pause(backend, stop):
    async def sleep_forever(seconds: float) -> None:
        await asyncio.Event().wait()

    task = asyncio.create_task(supervise(backend, SPEC, interval=60, on_state=lambda ok: None, stop=stop,
                                         sleep=sleep_forever))
    while not backend.installed(SPEC):
        await asyncio.sleep(0.01)
    stop.set()
    await asyncio.wait_for(task, timeout=5)
    assert not backend.state.has_chain(CHAIN)


async def test_removal_is_retried_then_its_error_is_raised(backend, stop, sleep):
    backend.fail_remove = [IptablesError("busy")] * 3
    sleep.actions[1] = stop.set
    with pytest.raises(IptablesError, match="busy"):
        await run(backend, stop, sleep, remove_attempts=3)
    assert backend.state.has_chain(CHAIN)


async def test_removal_succeeds_after_transient_failures(backend, stop, sleep):
    backend.fail_remove = [IptablesError("busy")] * 2
    sleep.actions[1] = stop.set
    await run(backend, stop, sleep, remove_attempts=3)
    assert not backend.state.has_chain(CHAIN)


async def test_a_bug_ends_the_supervisor_and_leaves_the_chain_in_place(backend, stop, sleep):
    """Fail closed: a dying supervisor must not hand pods the node's IMDS by removing the DNAT."""
    states: list[bool] = []

    def broken_after_install() -> None:
        raise RuntimeError("bug")

    with pytest.raises(RuntimeError, match="bug"):
        await asyncio.wait_for(supervise(backend, SPEC, interval=60, on_state=states.append, stop=stop, sleep=sleep,
                                         after_install=broken_after_install), timeout=5)
    assert backend.installed(SPEC)
    assert states == [False]  # never reported ready


async def test_cancelling_the_supervisor_leaves_the_chain_in_place(backend, stop):
    states: list[bool] = []
    task = asyncio.create_task(supervise(backend, SPEC, interval=60, on_state=states.append, stop=stop))
    while not backend.installed(SPEC):
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert backend.installed(SPEC)
    assert states[-1] is False


async def test_non_positive_interval_is_refused(backend, stop):
    with pytest.raises(ValueError):
        await supervise(backend, SPEC, interval=0, on_state=lambda ok: None, stop=stop)


def test_remove_chain_cleans_up_synchronously(backend):
    check_and_repair(backend, SPEC)
    assert "remove chain aad-metadata" in remove_chain(backend).describe()
    assert remove_chain(backend).is_empty


async def test_stop_with_reject_swaps_the_dnat_for_the_reject(backend, stop, sleep):
    from iptables.failclosed import REJECT_CHAIN, reject_rule
    from iptables.supervisor import REJECT

    sleep.actions[1] = stop.set
    await run(backend, stop, sleep, on_stop=REJECT)
    assert not backend.rules.nat.has_chain(CHAIN)
    assert backend.rules.filter.rules(REJECT_CHAIN) == (reject_rule(SPEC),)
    assert backend.rules.filter.rules("FORWARD") == (f"-j {REJECT_CHAIN}", "-j KUBE-FORWARD")


async def test_the_next_supervisor_swaps_the_reject_back_before_reporting_ready(backend, stop, sleep):
    from iptables.failclosed import REJECT_CHAIN
    from iptables.supervisor import REJECT

    sleep.actions[1] = stop.set
    await run(backend, stop, sleep, on_stop=REJECT)
    seen: list[tuple[bool, bool]] = []

    def on_state(ok: bool) -> None:
        seen.append((ok, backend.rules.filter.has_chain(REJECT_CHAIN)))

    again, sleep2 = asyncio.Event(), FakeSleep()
    sleep2.actions[1] = again.set
    await supervise(backend, SPEC, interval=60, on_state=on_state, stop=again, sleep=sleep2)
    assert seen == [(True, False), (False, False)]  # ready only with the DNAT back and the reject gone


async def test_a_failing_swap_is_retried_then_raised_leaving_the_dnat(backend, stop, sleep):
    from iptables.supervisor import REJECT

    backend.fail_remove = [IptablesError("busy")] * 3
    sleep.actions[1] = stop.set
    with pytest.raises(IptablesError, match="busy"):
        await run(backend, stop, sleep, on_stop=REJECT, remove_attempts=3)
    assert backend.installed(SPEC)  # never neither: pods' connections are refused by the absent nmi


async def test_hours_of_failures_keep_retrying_at_the_cap(backend, stop, sleep):
    # Found while typing: the doubling overflowed a float after ~1025 failed checks in a row and the
    # supervisor ended with OverflowError instead of retrying (the node then kept a stale chain).
    failures = 1100
    backend.fail_next = [XtablesLockTimeout("lock busy")] * failures
    sleep.actions[failures + 1] = stop.set
    states: list[bool] = []
    await asyncio.wait_for(supervise(backend, SPEC, interval=60, on_state=states.append, stop=stop, sleep=sleep,
                                     retry_initial=0.5, retry_max=3), timeout=60)
    assert sleep.calls[failures - 1] == 3 and sleep.calls[failures] == 60  # capped to the end, then healthy
    assert states == [False, True, False]
