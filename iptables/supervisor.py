"""The chain's life in the daemon: install, keep it exactly as specified, remove it on the way out.

Unlike upstream NMI, an iptables failure is not fatal: the supervisor reports itself broken (on_state(False),
which the daemon turns into "Not Active" and not-ready), retries with exponential backoff, and recovers.
Only a stop request (the daemon's SIGTERM/SIGINT path) removes the chain. A supervisor that dies any other way
(a bug, a failing conntrack, cancellation by a dying daemon) leaves the DNAT in place: pods then get connection
refused from the dead nmi, never the node's IMDS with every identity on the node (fail closed).
The backend is blocking, so every call runs in a worker thread; the event loop never waits on iptables.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable

from .backend import Backend
from .errors import IptablesError
from .failclosed import Transaction, open_transaction
from .rules import ChainSpec

logger = logging.getLogger(__name__)

Sleep = Callable[[float], Awaitable[object]]

# What the supervisor leaves on the node when asked to stop (SIGTERM/SIGINT). A supervisor that dies or is
# cancelled instead leaves the DNAT: pods' connections are refused while nmi is down.
REMOVE = "remove"  # delete the chain (and any reject): pods reach the metadata address directly (upstream)
REJECT = "reject"  # --fail-closed: swap the DNAT for the reject, pods' connections are reset until nmi is back


async def supervise(
    backend: Backend,
    spec: ChainSpec,
    *,
    interval: float,
    on_state: Callable[[bool], None],
    stop: asyncio.Event,
    sleep: Sleep = asyncio.sleep,
    on_repair: Callable[[str], None] | None = None,
    after_install: Callable[[], object] | None = None,
    retry_initial: float = 0.5,
    retry_max: float | None = None,
    remove_attempts: int = 3,
    on_stop: str = REMOVE,
) -> None:
    """Keep the chain installed (and any reject left by a previous nmi removed, after the DNAT is in place)
    until `stop` is set, then remove it, or swap it for the reject when `on_stop` is REJECT, and return.

    on_state(True) is called once the chain is in place (after `after_install`, e.g. conntrack deletion, ran
    once, blocking, in a thread), on_state(False) whenever a check or repair fails and again before removal;
    only changes are reported. on_repair(reason) is called for every drift repaired after the first install.
    Failed checks are retried after retry_initial, doubling up to retry_max (default: interval).
    IptablesError from `after_install` counts as a failed check; any other exception ends the supervisor and,
    like cancellation, leaves the chain installed (fail closed). Only `stop` leads to `on_stop`: REMOVE the
    chain (and any reject), or swap it for the REJECT (--fail-closed).
    If that still fails after `remove_attempts`, the last IptablesError is raised.
    """
    if interval <= 0:
        raise ValueError("interval must be positive")
    retry_max = interval if retry_max is None else retry_max
    state: list[bool | None] = [None]
    installed = False
    failures = 0

    def report(ok: bool) -> None:
        if state[0] is not ok:
            state[0] = ok
            on_state(ok)

    try:
        while not stop.is_set():
            try:
                applied = await asyncio.to_thread(check_and_repair, backend, spec)
                if not installed:
                    if after_install is not None:
                        await asyncio.to_thread(after_install)
                    installed = True
                    logger.info("iptables chain installed (%s backend)", backend.name)
                elif not applied.is_empty:
                    logger.warning("iptables drift repaired: %s", applied.describe())
                    if on_repair is not None:
                        on_repair(applied.describe())
                failures = 0
                report(True)
                delay = interval
            except IptablesError as exc:
                failures += 1
                # Bounded doubling: 2**(failures - 1) overflows a float after ~1025 failures in a row.
                delay = min(retry_initial * 2.0 ** min(failures - 1, 64), retry_max)
                logger.warning("iptables check failed (attempt %d, retrying in %.1fs): %s", failures, delay, exc)
                report(False)
            await _pause(stop, delay, sleep)
    except BaseException:
        report(False)
        logger.error("iptables supervisor ended without a stop request: the chain stays (fail closed)")
        raise
    report(False)
    if on_stop == REJECT:
        await _with_retries(lambda: backend.fail_closed(spec), "swapped for the reject (fail-closed)",
                            attempts=remove_attempts, sleep=sleep, pause=retry_initial)
    else:
        await _with_retries(backend.remove, "removed", attempts=remove_attempts, sleep=sleep, pause=retry_initial)


def check_and_repair(backend: Backend, spec: ChainSpec) -> Transaction:
    """One pass, blocking. Reads without the lock; only when something drifted does it lock and converge."""
    if open_transaction(backend.read(spec), spec).is_empty:
        return Transaction()
    return backend.converge(spec)


def remove_chain(backend: Backend) -> Transaction:
    """Blocking cleanup for any time (crash recovery, an uninstall command): delete all jumps and the chains."""
    return backend.remove()


async def _with_retries(change: Callable[[], Transaction], done: str, *, attempts: int, sleep: Sleep,
                        pause: float) -> None:
    for attempt in range(1, attempts + 1):
        try:
            applied = await asyncio.shield(asyncio.to_thread(change))
            logger.info("iptables chain %s: %s", done, applied.describe())
            return
        except IptablesError as exc:
            if attempt == attempts:
                raise
            logger.warning("iptables chain could not be %s (attempt %d): %s", done, attempt, exc)
            await sleep(pause * 2.0 ** (attempt - 1))  # attempts are few: no overflow


async def _pause(stop: asyncio.Event, seconds: float, sleep: Sleep) -> None:
    """Sleep `seconds` through the injected sleep, or less if `stop` is set meanwhile."""
    if stop.is_set():
        return
    sleeper = asyncio.ensure_future(sleep(seconds))
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({sleeper, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (sleeper, stopper):
            task.cancel()
        await asyncio.gather(sleeper, stopper, return_exceptions=True)
