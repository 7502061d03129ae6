"""Builds nmi's parts from Settings: the indexes and informers, the token service, the broker, the
observability hooks and the iptables supervisor. Every part that owns a resource registers its cleanup on
the caller's exit stack, so a failure half-way through start-up still releases what was built.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Awaitable, Callable, Coroutine

from . import __version__
from .audit import REASON_INVALID_ACTIVE_WINDOWS, AuditRecorder
from .broker import MANAGED, BrokerPolicy, Outcome, TokenBroker
from .cache import IdentityIndex, PodIndex
from .cli import Settings
from .kube.client import KubeConfigError, build_api_client
from .kube.events import KubeEventWriter
from .kube.reads import KubeSecretReader, LivePodLookup
from .kube.tokenrequests import KubeServiceAccountTokens
from .kube.watches import node_informers
from .errors import NmiError
from .access_log import log_access
from .freshness import CacheHealth
from .explain import Explainer
from .loop_lag import watch_loop_lag
from .model import Identity
from .metrics import KUBE_GET_POD_LIST, KUBE_GET_SECRET, Metrics
from .proxy import ImdsProxy
from .server import AccessObserver, DaemonState, TokenServerConfig
from .tokens.config import ImdsEndpoint, UpstreamHooks
from .tokens.credential_policy import CredentialPolicy
from .tokens.credentials import ParserProcess
from .tokens.service import TokenService, workload_owner_key
from .window_reports import WindowErrorReporter
from .workloads import WorkloadIndex

log = logging.getLogger("nmi")


class StartupError(Exception):
    """A configuration or environment problem found at start: one line, exit 1, no traceback."""


@dataclass
class Parts:
    broker: TokenBroker
    proxy: ImdsProxy
    metrics: Metrics
    observer: AccessObserver
    server_config: TokenServerConfig
    root_tasks: dict[str, Callable[[], Coroutine]]  # started only once the servers listen
    chain_task: Callable[[asyncio.Event], Awaitable[None]] | None
    explainer: Explainer | None = None  # /explain on the probe port


class TokenObserver(AccessObserver):
    """Per token request: the upstream metric, one access line, and the audit record on success."""

    def __init__(self, metrics: Metrics, state: DaemonState, audit: AuditRecorder | None) -> None:
        self._metrics, self._state, self._audit = metrics, state, audit

    def token_request(self, *, route: str, method: str, status: int, remote: str, resource: str,
                      outcome: Outcome | None, pod_key: str, seconds: float) -> None:
        pod = outcome.pod if outcome else None
        pod_key = pod.key if pod else pod_key
        self._metrics.observe_request(route=route, status=status, namespace=pod_key.partition("/")[0],
                                      resource=resource, seconds=seconds)
        if outcome is not None:
            self._metrics.cache_lookup(hit=outcome.grant.cached)
        if not self._state.ready:
            self._metrics.served_not_ready()
        identity = outcome.identity if outcome else None
        log_access(pod=pod_key, identity_client_id=identity.client_id if identity else "",
                   resource=resource, status=status, cache_hit=bool(outcome and outcome.grant.cached),
                   seconds=seconds, method=method, route=route, remote=remote)
        if self._audit is not None and outcome is not None and outcome.binding is not None and identity is not None:
            self._audit.record(outcome.binding.namespace, outcome.binding.name, outcome.pod.namespace,
                               outcome.pod.name, identity.name, resource)


class CountedSecretReader:
    """A SecretReader that counts failed reads as upstream's `get_secret` API error."""

    def __init__(self, inner: KubeSecretReader, metrics: Metrics) -> None:
        self._inner, self._metrics = inner, metrics

    async def read_secret(self, namespace: str, name: str):
        try:
            return await self._inner.read_secret(namespace, name)
        except NmiError:
            self._metrics.kube_error(KUBE_GET_SECRET)
            raise


def _restart_hook(metrics: Metrics):
    def on_restart(resource: str, reason: str) -> None:
        metrics.watch_restarted(resource, reason)
        if reason == "expired":  # a 410: the informer lists again
            metrics.watch_relisted(resource, reason)

    return on_restart


async def assemble(settings: Settings, *, state: DaemonState, stack: AsyncExitStack) -> Parts:
    problem = _node_problem(settings)
    if problem:
        raise StartupError(problem)
    try:
        api_client = build_api_client(kubeconfig=settings.kubeconfig or None)
    except KubeConfigError as exc:
        raise StartupError(f"--kubeconfig: {exc}") from exc
    stack.callback(api_client.close)
    api_client.user_agent = " ".join(filter(None, (f"nmi/{__version__}", settings.custom_user_agent)))
    metrics = Metrics()

    live = LivePodLookup(api_client, settings.node, on_api_error=lambda *_: metrics.kube_error(KUBE_GET_POD_LIST))
    stack.callback(live.close)
    health = CacheHealth()
    state.cache_problems = health.problems
    pods = PodIndex(live.live_pods_for_ip, on_change=None, health=health)
    pods.on_change = lambda: metrics.set_pods_indexed(pods.pods_indexed)
    catalog = IdentityIndex()
    managed = settings.operation_mode == MANAGED
    workloads = None if managed else WorkloadIndex()  # the MIC check exists in standard mode only
    informers = node_informers(api_client, node=settings.node, pods=pods, identities=catalog,
                               managed=managed, scale_features=settings.scale_features,
                               workload_identity=settings.workload_identity, health=health,
                               mic_namespace=settings.mic_namespace, workloads=workloads,
                               on_restart=_restart_hook(metrics),
                               on_api_error=lambda resource, operation: metrics.kube_error(operation))
    secrets = KubeSecretReader(api_client)
    stack.callback(secrets.close)
    minter = None
    if settings.workload_identity:
        minter = KubeServiceAccountTokens(api_client)
        stack.callback(minter.close)
    tokens = TokenService(CountedSecretReader(secrets, metrics),
                          imds=ImdsEndpoint(settings.metadata_ip, settings.metadata_port),
                          hooks=UpstreamHooks(observe=lambda source, seconds, ok: metrics.upstream_finished(
                              source, seconds=seconds, ok=ok), in_flight=metrics.upstream_in_flight),
                          service_account_tokens=minter,
                          credential_policy=CredentialPolicy(
                              allowed_authority_hosts=frozenset(settings.allowed_authority_hosts),
                              cross_namespace_secrets=settings.allow_cross_namespace_secrets))
    stack.push_async_callback(tokens.close)
    # A PKCS#12 parse still running must not hold the exit (the pool's exit handler would wait for it).
    stack.callback(ParserProcess.kill)
    policy = BrokerPolicy(
        mode=settings.operation_mode, namespaced=settings.force_namespaced, mic_namespace=settings.mic_namespace,
        wait_for_created=float(settings.retry_attempts_for_created * settings.find_identity_retry_interval),
        wait_total=settings.identity_wait_seconds, retry_after_while_waiting=settings.set_retry_after_header,
        workload_identity=settings.workload_identity, workload_identity_tenant=settings.workload_identity_tenant_id,
        workload_identity_authority=settings.workload_identity_authority_host)
    broker = TokenBroker(pods, catalog, tokens, policy=policy, service_accounts=catalog, workloads=workloads,
                         caches=health)
    proxy = ImdsProxy(settings.metadata_ip, settings.metadata_port)
    await proxy.start()
    stack.push_async_callback(proxy.close)

    audit = None
    root_tasks: dict[str, Callable[[], Coroutine]] = {}
    if settings.audit_events:
        writer = KubeEventWriter(api_client)
        stack.callback(writer.close)
        audit = AuditRecorder(writer, node=settings.node, on_dropped=metrics.audit_events_dropped)
        root_tasks["audit"] = audit.run
        stack.push_async_callback(_final_flush, audit)  # runs before writer.close: nothing recorded is lost
    for informer in informers:
        root_tasks[f"watch-{informer.target.resource}"] = informer.run
    root_tasks["caches-synced"] = functools.partial(_log_synced, [i.synced for i in informers])
    root_tasks["forget-vanished-identities"] = functools.partial(_forget_vanished, catalog, tokens)
    root_tasks["event-loop-lag"] = functools.partial(watch_loop_lag, metrics.set_event_loop_lag)
    warn = None
    if audit is not None:
        def warn(binding, message, audit=audit):
            audit.warn(binding.namespace, binding.name, reason=REASON_INVALID_ACTIVE_WINDOWS, message=message)
    reporter = WindowErrorReporter(set_gauge=metrics.set_binding_window_errors, warn=warn)
    root_tasks["binding-window-errors"] = functools.partial(_report_window_errors, catalog, reporter)
    if settings.node_startup_taint:
        root_tasks["startup-taint"] = _startup_taint_task(settings, state, api_client, stack)

    return Parts(broker=broker, proxy=proxy, metrics=metrics,
                 observer=TokenObserver(metrics, state, audit),
                 server_config=TokenServerConfig(metadata_header_required=settings.metadata_header_required,
                                                 block_instance_metadata=settings.block_instance_metadata),
                 root_tasks=root_tasks, chain_task=_chain(settings, state, metrics) if settings.manage_iptables else None,
                 explainer=Explainer(broker, pods, state, cached_tokens=tokens.cached_tokens))


def _startup_taint_task(settings: Settings, state: DaemonState, api_client, stack: AsyncExitStack):
    from .kube.nodes import KubeNodeTaints
    from .startup_taint import remove_startup_taint

    nodes = KubeNodeTaints(api_client)
    stack.callback(nodes.close)
    return functools.partial(remove_startup_taint, nodes, node=settings.node, key=settings.node_startup_taint,
                             ready=lambda: state.ready)


async def _final_flush(audit: AuditRecorder) -> None:
    try:
        await asyncio.wait_for(audit.flush(), timeout=5)
    except asyncio.TimeoutError:
        log.warning("token issuance audit: final flush timed out")


async def _log_synced(events: list[asyncio.Event]) -> None:
    """Readiness follows CacheHealth directly (it also turns stale caches not-ready); this only logs."""
    await asyncio.gather(*(e.wait() for e in events))
    log.info("caches synced")
    await asyncio.Event().wait()  # a root task lives as long as the daemon


async def _forget_vanished(catalog: IdentityIndex, tokens: TokenService) -> None:
    """Tokens of identities that disappeared are dropped from the cache."""
    while True:
        await catalog.wait_changed(timeout=3600)
        keys = {i.key for i in catalog.identity_store.all()}
        keys |= {a.identity.key for a in catalog.assigned_store.all() if a.identity is not None}
        # Workload identity: tokens live while their ServiceAccount exists and still names a client ID.
        keys |= {workload_owner_key(Identity(namespace=sa.namespace, name=sa.name, service_account=sa.name))
                 for sa in catalog.service_account_store.all() if sa.client_id}
        tokens.forget(keys)


async def _report_window_errors(catalog: IdentityIndex, reporter: WindowErrorReporter) -> None:
    """Malformed active-windows annotations, reviewed only when a binding changed (not per request)."""
    seen = -1
    while True:
        if catalog.bindings_generation != seen:
            seen = catalog.bindings_generation
            reporter.review(catalog.binding_store.all())
        await catalog.wait_changed(timeout=3600)


def _node_problem(settings: Settings) -> str | None:
    from iptables.node import check_kubenet, check_route_localnet

    if settings.manage_iptables:
        localnet = check_route_localnet(settings.dnat_target)
        if localnet:  # pods may still reach nmi (the CNI may set it per interface later): say so, do not refuse
            log.warning("%s", localnet)
    # Kubenet lets pods spoof each other's IPs whoever owns the chain, so the guard applies in every case.
    return check_kubenet(settings.kubelet_config, allow=settings.allow_kubenet)


def _chain(settings: Settings, state: DaemonState, metrics: Metrics):
    from iptables.detect import detect_backend
    from iptables.errors import BackendUnavailable
    from iptables.node import delete_conntrack
    from iptables.rules import ChainSpec
    from iptables.supervisor import REJECT, REMOVE, supervise

    try:
        backend, choice = detect_backend(mode=None if settings.iptables_backend == "auto" else settings.iptables_backend)
    except BackendUnavailable as exc:
        raise StartupError(f"--iptables-backend: {exc}") from exc
    log.info("iptables backend %s: %s", choice.mode, choice.reason)
    spec = ChainSpec(metadata_ip=settings.metadata_ip, metadata_port=settings.metadata_port,
                     target_ip=settings.dnat_target, target_port=settings.port)

    def on_state(ok: bool) -> None:
        state.chain_installed = ok

    def conntrack() -> None:
        deleted = delete_conntrack(settings.metadata_ip, settings.metadata_port)
        log.info("deleted %d conntrack entries to %s:%d", deleted, settings.metadata_ip, settings.metadata_port)

    async def run(stop: asyncio.Event) -> None:
        # `stop` is set on SIGTERM/SIGINT only: then the reject with --fail-closed, else remove everything
        # (upstream). A dying root task cancels the supervisor instead, which leaves the DNAT.
        await supervise(backend, spec, interval=settings.ipt_update_interval, on_state=on_state, stop=stop,
                        on_repair=metrics.iptables_repaired, on_stop=REJECT if settings.fail_closed else REMOVE,
                        after_install=conntrack if settings.conntrack_deletion else None)

    return run
