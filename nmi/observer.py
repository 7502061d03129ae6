"""What the daemon learns from each token request: the server reports every one, whatever its status, to an
`AccessObserver`; the daemon's `TokenObserver` turns it into metrics, one access-log line and the audit record.
"""

from __future__ import annotations

from .access_log import log_access
from .audit import AuditRecorder
from .broker import Outcome
from .metrics import Metrics
from .model import PodInfo
from .readiness import DaemonState


class AccessObserver:
    """Hooks the server calls after each token request (this base ignores them)."""

    def token_request(self, *, route: str, method: str, status: int, remote: str, resource: str,
                      outcome: Outcome | None, pod: PodInfo | None, seconds: float) -> None:
        """Called once per token-route or host-token request, whatever the status. `pod` is the caller once
        identified, also when the request failed afterwards (then `outcome` is None)."""


class TokenObserver(AccessObserver):
    """Per token request: the upstream metric, one access line, and the audit record on success."""

    def __init__(self, metrics: Metrics, state: DaemonState, audit: AuditRecorder | None) -> None:
        self._metrics, self._state, self._audit = metrics, state, audit

    def token_request(self, *, route: str, method: str, status: int, remote: str, resource: str,
                      outcome: Outcome | None, pod: PodInfo | None, seconds: float) -> None:
        pod_key = pod.key if pod is not None else ""
        self._metrics.observe_request(route=route, status=status, namespace=pod.namespace if pod else "",
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
