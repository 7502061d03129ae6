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
from typing import Any, Callable, Coroutine

from . import __version__
from .audit import REASON_INVALID_ACTIVE_WINDOWS, AuditRecorder
from .broker import MANAGED, BrokerPolicy, TokenBroker
from .cache import IdentityIndex
from .cli import Settings
from .kube.client import ApiClient, KubeConfigError, build_api_client
from .kube.events import KubeEventWriter
from .kube.reads import KubeSecretReader, LivePodLookup
from .kube.tokenrequests import KubeServiceAccountTokens
from .kube.watches import node_informers
from .freshness import CacheHealth
from .explain import Explainer
from .loop_lag import watch_loop_lag
from .metrics import KUBE_GET_POD_LIST, KUBE_GET_SECRET, Metrics
from .model import Binding
from .observer import AccessObserver, TokenObserver
from .pod_index import PodIndex
from .proxy import ImdsProxy
from .readiness import DaemonState
from .root_tasks import (chain_keeper, final_audit_flush, forget_vanished_identities, log_when_synced,
                         report_window_errors)
from .server import TokenServerConfig
from .tokens.config import ImdsEndpoint, UpstreamHooks
from .tokens.credential_policy import CredentialPolicy
from .tokens.credentials import ParserProcess
from .tokens.service import TokenService
from .window_reports import WarnBinding, WindowErrorReporter
from .workloads import WorkloadIndex

log = logging.getLogger("nmi")


class StartupError(Exception):
    """A configuration or environment problem found at start: one line, exit 1, no traceback."""


RootTask = Callable[[], Coroutine[Any, Any, object]]


@dataclass
class Parts:
    broker: TokenBroker
    state: DaemonState
    proxy: ImdsProxy
    metrics: Metrics
    observer: AccessObserver
    server_config: TokenServerConfig
    root_tasks: dict[str, RootTask]  # started only once the servers listen
    chain_task: Callable[[asyncio.Event], Coroutine[Any, Any, None]] | None
    explainer: Explainer | None = None  # /explain on the probe port


def _restart_hook(metrics: Metrics) -> Callable[[str, str], None]:
    def on_restart(resource: str, reason: str) -> None:
        metrics.watch_restarted(resource, reason)
        if reason == "expired":  # a 410: the informer lists again
            metrics.watch_relisted(resource, reason)

    return on_restart


async def assemble(settings: Settings, *, stack: AsyncExitStack) -> Parts:
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
    # What the probes report: the watch caches' health, the chain (when nmi manages it), shutting down.
    state = DaemonState(chain_required=settings.manage_iptables, cache_problems=health.problems)
    pods = PodIndex(live.live_pods_for_ip, on_size=metrics.set_pods_indexed, health=health)
    catalog = IdentityIndex()
    managed = settings.operation_mode == MANAGED
    workloads = None if managed else WorkloadIndex()  # the MIC check exists in standard mode only
    informers = node_informers(api_client, node=settings.node, pods=pods, identities=catalog,
                               managed=managed, scale_features=settings.scale_features,
                               workload_identity=settings.workload_identity, health=health,
                               mic_namespace=settings.mic_namespace, workloads=workloads,
                               on_restart=_restart_hook(metrics),
                               on_api_error=lambda resource, operation: metrics.kube_error(operation))
    secrets = KubeSecretReader(api_client, on_api_error=lambda *_: metrics.kube_error(KUBE_GET_SECRET))
    stack.callback(secrets.close)
    minter = None
    if settings.workload_identity:
        minter = KubeServiceAccountTokens(api_client)
        stack.callback(minter.close)
    tokens = TokenService(secrets,
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
    root_tasks: dict[str, RootTask] = {}
    if settings.audit_events:
        writer = KubeEventWriter(api_client)
        stack.callback(writer.close)
        audit = AuditRecorder(writer, node=settings.node, on_dropped=metrics.audit_events_dropped)
        root_tasks["audit"] = audit.run
        stack.push_async_callback(final_audit_flush, audit)  # runs before writer.close: nothing recorded is lost
    for informer in informers:
        root_tasks[f"watch-{informer.target.resource}"] = informer.run
    root_tasks["caches-synced"] = functools.partial(log_when_synced, [i.synced for i in informers])
    root_tasks["forget-vanished-identities"] = functools.partial(forget_vanished_identities, catalog, tokens)
    root_tasks["event-loop-lag"] = functools.partial(watch_loop_lag, metrics.set_event_loop_lag)
    warn: WarnBinding | None = None
    if audit is not None:
        warn = functools.partial(_warn_invalid_windows, audit)
    reporter = WindowErrorReporter(set_gauge=metrics.set_binding_window_errors, warn=warn)
    root_tasks["binding-window-errors"] = functools.partial(report_window_errors, catalog, reporter)
    if settings.node_startup_taint:
        root_tasks["startup-taint"] = _startup_taint_task(settings, state, api_client, stack)

    return Parts(broker=broker, proxy=proxy, metrics=metrics, state=state,
                 observer=TokenObserver(metrics, state, audit),
                 server_config=TokenServerConfig(metadata_header_required=settings.metadata_header_required,
                                                 block_instance_metadata=settings.block_instance_metadata),
                 root_tasks=root_tasks, chain_task=_chain(settings, state, metrics) if settings.manage_iptables else None,
                 explainer=Explainer(broker, pods, state, cached_tokens=tokens.cached_tokens))


def _warn_invalid_windows(audit: AuditRecorder, binding: Binding, message: str) -> None:
    audit.warn(binding.namespace, binding.name, reason=REASON_INVALID_ACTIVE_WINDOWS, message=message)


def _startup_taint_task(settings: Settings, state: DaemonState, api_client: ApiClient,
                        stack: AsyncExitStack) -> RootTask:
    from .kube.nodes import KubeNodeTaints
    from .startup_taint import remove_startup_taint

    nodes = KubeNodeTaints(api_client)
    stack.callback(nodes.close)
    return functools.partial(remove_startup_taint, nodes, node=settings.node, key=settings.node_startup_taint,
                             ready=lambda: state.ready)


def _node_problem(settings: Settings) -> str | None:
    from iptables.node import check_kubenet, check_route_localnet

    if settings.manage_iptables:
        localnet = check_route_localnet(settings.dnat_target)
        if localnet:  # pods may still reach nmi (the CNI may set it per interface later): say so, do not refuse
            log.warning("%s", localnet)
    # Kubenet lets pods spoof each other's IPs whoever owns the chain, so the guard applies in every case.
    return check_kubenet(settings.kubelet_config, allow=settings.allow_kubenet)


def _chain(settings: Settings, state: DaemonState,
           metrics: Metrics) -> Callable[[asyncio.Event], Coroutine[Any, Any, None]]:
    from iptables.detect import detect_backend
    from iptables.errors import BackendUnavailable
    from iptables.node import delete_conntrack
    from iptables.rules import ChainSpec

    try:
        backend, choice = detect_backend(mode=None if settings.iptables_backend == "auto" else settings.iptables_backend)
    except BackendUnavailable as exc:
        raise StartupError(f"--iptables-backend: {exc}") from exc
    log.info("iptables backend %s: %s", choice.mode, choice.reason)
    spec = ChainSpec(metadata_ip=settings.metadata_ip, metadata_port=settings.metadata_port,
                     target_ip=settings.dnat_target, target_port=settings.port)

    def conntrack() -> None:
        deleted = delete_conntrack(settings.metadata_ip, settings.metadata_port)
        log.info("deleted %d conntrack entries to %s:%d", deleted, settings.metadata_ip, settings.metadata_port)

    return chain_keeper(backend, spec, interval=settings.ipt_update_interval, fail_closed=settings.fail_closed,
                        conntrack=conntrack if settings.conntrack_deletion else None, state=state, metrics=metrics)
