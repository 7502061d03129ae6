"""The daemon's root tasks: long-running bodies that live as long as the daemon (their death stops it, fail closed),
built by `nmi.assembly` and started by `nmi.daemon` once the servers listen.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Callable, Coroutine

from .audit import AuditRecorder
from .cache import IdentityIndex
from .metrics import Metrics
from .model import Identity
from .readiness import DaemonState
from .tokens.service import TokenService, workload_owner_key
from .window_reports import WindowErrorReporter

if TYPE_CHECKING:  # iptables is imported only when nmi manages the chain
    from iptables.backend import Backend
    from iptables.rules import ChainSpec

log = logging.getLogger("nmi")


async def log_when_synced(events: list[asyncio.Event]) -> None:
    """Readiness follows CacheHealth directly (it also turns stale caches not-ready); this only logs."""
    await asyncio.gather(*(e.wait() for e in events))
    log.info("caches synced")
    await asyncio.Event().wait()  # a root task lives as long as the daemon


async def forget_vanished_identities(catalog: IdentityIndex, tokens: TokenService) -> None:
    """Tokens of identities that disappeared are dropped from the cache."""
    while True:
        await catalog.wait_changed(timeout=3600)
        keys = {i.key for i in catalog.identity_store.all()}
        keys |= {a.identity.key for a in catalog.assigned_store.all() if a.identity is not None}
        # Workload identity: tokens live while their ServiceAccount exists and still names a client ID.
        keys |= {workload_owner_key(Identity(namespace=sa.namespace, name=sa.name, service_account=sa.name))
                 for sa in catalog.service_account_store.all() if sa.client_id}
        tokens.forget(keys)


async def report_window_errors(catalog: IdentityIndex, reporter: WindowErrorReporter) -> None:
    """Malformed active-windows annotations, reviewed only when a binding changed (not per request)."""
    seen = -1
    while True:
        if catalog.bindings_generation != seen:
            seen = catalog.bindings_generation
            reporter.review(catalog.binding_store.all())
        await catalog.wait_changed(timeout=3600)


async def final_audit_flush(audit: AuditRecorder) -> None:
    """At exit, after the audit task stopped: what was recorded still leaves (bounded)."""
    try:
        await asyncio.wait_for(audit.flush(), timeout=5)
    except asyncio.TimeoutError:
        log.warning("token issuance audit: final flush timed out")


def chain_keeper(backend: Backend, spec: ChainSpec, *, interval: float, fail_closed: bool,
                 conntrack: Callable[[], None] | None, state: DaemonState,
                 metrics: Metrics) -> Callable[[asyncio.Event], Coroutine[Any, Any, None]]:
    """The iptables supervisor as a root task: keeps the aad-metadata chain in place and readiness told."""
    from iptables.supervisor import REJECT, REMOVE, supervise

    def on_state(ok: bool) -> None:
        state.chain_installed = ok

    async def run(stop: asyncio.Event) -> None:
        # `stop` is set on SIGTERM/SIGINT only: then the reject with --fail-closed, else remove everything
        # (upstream). A dying root task cancels the supervisor instead, which leaves the DNAT.
        await supervise(backend, spec, interval=interval, on_state=on_state, stop=stop,
                        on_repair=metrics.iptables_repaired, on_stop=REJECT if fail_closed else REMOVE,
                        after_install=conntrack)

    return run
