"""The composition root and supervisor: builds every part from Settings, runs the named root tasks, and shuts
down in a fixed order on SIGTERM/SIGINT (stop accepting -> remove the chain -> drain -> exit).

If any root task dies (an informer's thread, the iptables supervisor, conntrack deletion...) the daemon stops
accepting, drains, and exits 1 *leaving the chain in place*: pods then get connection refused until the next nmi,
never the node's IMDS (fail closed, SPEC §7). Only SIGTERM/SIGINT remove the chain.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from . import __version__
from .assembly import Parts, StartupError, assemble
from .cli import Settings
from .listen import (KEEPALIVE_SECONDS, ConnectionLimits, FastLane, GuardedSite, raise_fd_soft_limit,
                     total_connections_for)
from .readiness import DaemonState
from .server import DRAIN, FAST_LANE, metrics_app, probe_app, token_app

log = logging.getLogger("nmi")

SHUTDOWN_DRAIN_SECONDS = 5.0
DRAIN_ANSWER_MARGIN = 1.0  # before the drain ends, requests still in flight are answered 503
LAST_RESORT_SECONDS = 20.0  # below the DaemonSet's 30 s termination grace period


@dataclass
class Daemon:
    settings: Settings
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    state: DaemonState | None = None  # what the probes report, built by `assemble`

    async def run(self) -> int:
        settings = self.settings
        # One budget for every listener: a source holds at most 64 connections, all together stay below the fd limit.
        limits = ConnectionLimits(total=total_connections_for(raise_fd_soft_limit()))
        async with AsyncExitStack() as stack:
            parts: Parts = await assemble(settings, stack=stack)
            self.state = state = parts.state
            tokens = token_app(parts.broker, config=parts.server_config, state=state, proxy=parts.proxy,
                               observer=parts.observer)
            token_runner = web.AppRunner(tokens, access_log=None, shutdown_timeout=SHUTDOWN_DRAIN_SECONDS,
                                         keepalive_timeout=KEEPALIVE_SECONDS)
            explain = parts.explainer.answer if parts.explainer else None
            side_runners = [web.AppRunner(probe_app(state, explain=explain), access_log=None,
                                          keepalive_timeout=KEEPALIVE_SECONDS),
                            web.AppRunner(metrics_app(parts.metrics.render), access_log=None,
                                          keepalive_timeout=KEEPALIVE_SECONDS)]
            for runner in (token_runner, *side_runners):
                await runner.setup()
                stack.push_async_callback(_cleanup_once, runner)
            await _listen(side_runners[0], "0.0.0.0", settings.probe_port, "--http-probe-port", limits=limits)
            await _listen(side_runners[1], "0.0.0.0", settings.prometheus_port, "--prometheus-port", limits=limits)
            token_site = await _listen(token_runner, settings.listen_address, settings.port, "--nmi-port",
                                       limits=limits, json_errors=True, fast=tokens[FAST_LANE])
            tasks = {name: asyncio.create_task(start(), name=name) for name, start in parts.root_tasks.items()}
            chain = asyncio.create_task(parts.chain_task(self.stop), name="iptables") if parts.chain_task else None
            log.info("listening on %s:%d (nmi %s, %s mode)", settings.listen_address, settings.port, __version__,
                     settings.operation_mode)
            died = await self._wait(list(tasks.values()) + ([chain] if chain else []))
            state.shutting_down = True
            log.info("shutting down%s", f": root task {died.get_name()} ended" if died else "")
            await token_site.stop()  # 1. stop accepting
            if died is None:  # 2. SIGTERM/SIGINT: remove the chain (the supervisor does it on stop)
                self.stop.set()
                if chain is not None:
                    await _finish(chain)
            elif chain is not None:  # 2'. a death: the supervisor, cancelled or dead, leaves the chain
                chain.cancel()
                await asyncio.gather(chain, return_exceptions=True)
                log.error("root task %s ended: exiting with the aad-metadata chain left in place (fail closed)",
                          died.get_name())
            # 3. drain in-flight requests; those still running near the end get 503 + Retry-After, never a reset
            answer_now = asyncio.get_running_loop().call_later(SHUTDOWN_DRAIN_SECONDS - DRAIN_ANSWER_MARGIN,
                                                               tokens[DRAIN].answer_all_now)
            await _cleanup_once(token_runner)
            answer_now.cancel()
            for task in tasks.values():
                task.cancel()
            await asyncio.gather(*tasks.values(), return_exceptions=True)
            if died is not None and not died.cancelled() and died.exception() is not None:
                log.error("root task %s failed: %s", died.get_name(), died.exception())
            return 1 if died is not None else 0

    async def _wait(self, tasks: list[asyncio.Task[Any]]) -> asyncio.Task[Any] | None:
        stopper = asyncio.create_task(self.stop.wait(), name="stop")
        done, _ = await asyncio.wait([stopper, *tasks], return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        died = [t for t in done if t is not stopper]
        return died[0] if died else None


async def _listen(runner: web.AppRunner, host: str, port: int, flag: str, *,
                  limits: ConnectionLimits, json_errors: bool = False, fast: FastLane | None = None) -> web.TCPSite:
    site = GuardedSite(runner, host, port, limits=limits, json_errors=json_errors, reuse_address=True, fast=fast)
    try:
        await site.start()
    except OSError as exc:
        raise StartupError(f"{flag}: cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    return site


async def _cleanup_once(runner: web.AppRunner) -> None:
    """Close the listeners, wait for in-flight requests (up to the runner's shutdown_timeout), free the app."""
    if runner.server is not None:
        await runner.cleanup()


async def _finish(task: asyncio.Task[Any]) -> None:
    try:
        await asyncio.wait_for(task, timeout=LAST_RESORT_SECONDS / 2)
    except asyncio.TimeoutError:
        log.error("iptables chain removal did not finish in time")
    except Exception as exc:  # the error was the task's; report it and carry on shutting down
        log.error("iptables supervisor failed: %s", exc)


def _last_resort_timer() -> threading.Timer:
    def expire() -> None:
        log.error("shutdown took longer than %.0fs; exiting now", LAST_RESORT_SECONDS)
        os._exit(1)

    timer = threading.Timer(LAST_RESORT_SECONDS, expire)
    timer.daemon = True
    return timer


async def serve(settings: Settings) -> int:
    daemon = Daemon(settings)
    loop = asyncio.get_running_loop()
    timer = _last_resort_timer()

    def on_signal(signum: int) -> None:
        if not daemon.stop.is_set():
            log.info("received %s", signal.Signals(signum).name)
            timer.start()
            daemon.stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        return await daemon.run()
    finally:
        timer.cancel()


def run(settings: Settings) -> int:
    """Entry point: returns the process exit code. Start-up problems are one line on stderr, exit 1."""
    from .logs import setup_logging

    setup_logging(log_format=settings.log_format, verbosity=settings.verbosity)
    for warning in settings.flag_warnings:
        log.warning("%s", warning)
    try:
        return asyncio.run(serve(settings))
    except StartupError as exc:
        log.error("%s", exc)
        return 1
    except KeyboardInterrupt:
        return 130
