"""Prometheus metrics with bounded label values, in a private registry.

The four `aadpodidentity_*` series keep upstream's exact names, types, label names and buckets so existing
dashboards keep working. Upstream exported them through OpenCensus: counters carry no `_total` suffix and a
series appears only after its first observation. prometheus_client's text writer forces `_total` onto every
counter's metadata, so this module keeps its own small store, hands it to the registry as one collector, and
writes the text format itself (`render`).

Every label value passes through a folding rule before it reaches the store (route templates, a fixed set of
well-known Azure resources, a capped set of namespaces...), and each family has a hard series cap on top, so a
caller cannot grow the exposition by sending junk.
"""

from __future__ import annotations

import re
import threading

from prometheus_client import CollectorRegistry

from .exposition import CONTENT_TYPE, MAX_SERIES_PER_FAMILY, OTHER, Family, SeriesStore, go_float, render_text

__all__ = ["CONTENT_TYPE", "MAX_SERIES_PER_FAMILY", "OTHER", "Metrics", "fold_resource", "fold_route", "go_float"]

# Upstream operation_type values for the IMDS/AAD series (pkg/auth/auth.go).
IMDS_SYSTEM_ASSIGNED = "adal_token_msi"
IMDS_USER_ASSIGNED = "adal_token_msi_userassignedid"
AAD_TOKEN = "adal_token"
# Upstream operation_type values for the Kubernetes API error series.
KUBE_GET_POD_LIST = "get_pod_list"
KUBE_GET_SECRET = "get_secret"

TOKEN_ROUTE = "/metadata/identity/oauth2/token"
HOST_TOKEN_ROUTE = "/host/token/"

NMI_BUCKETS = (0.5, 1, 2, 3, 4, 5, 10, 15, 20, 25, 30, 40, 50, 60, 70, 80, 90, 100)
IMDS_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1, 2, 3, 4, 5, 10)
UPSTREAM_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


# Canonical spellings of the resources (audiences) pods commonly ask for, across the public and sovereign
# clouds. Anything else is folded to "other": the `resource` query value is chosen by the caller.
WELL_KNOWN_RESOURCES = (
    "https://management.azure.com/", "https://management.core.windows.net/",
    "https://management.usgovcloudapi.net/", "https://management.core.usgovcloudapi.net/",
    "https://management.chinacloudapi.cn/", "https://management.core.chinacloudapi.cn/",
    "https://vault.azure.net", "https://vault.usgovcloudapi.net", "https://vault.azure.cn",
    "https://managedhsm.azure.net", "https://storage.azure.com/", "https://graph.microsoft.com/",
    "https://graph.windows.net/", "https://database.windows.net/", "https://ossrdbms-aad.database.windows.net",
    "https://servicebus.azure.net", "https://eventhubs.azure.net", "https://eventgrid.azure.net",
    "https://cognitiveservices.azure.com", "https://monitor.azure.com/", "https://api.loganalytics.io",
    "https://api.applicationinsights.io", "https://redis.azure.com", "https://cosmos.azure.com",
    "https://azconfig.io", "https://batch.core.windows.net/", "https://datalake.azure.net/",
    "https://kusto.kusto.windows.net", "https://digitaltwins.azure.net", "https://containerregistry.azure.net",
    "https://ml.azure.com", "https://search.azure.com", "https://atlas.microsoft.com/",
    "https://dev.azuresynapse.net", "https://api.fabric.microsoft.com", "https://analysis.windows.net/powerbi/api",
    "6dae42f8-4368-4678-94ff-3960e28e3630",  # AKS AAD server application (kubelogin)
)


def _resource_key(resource: str) -> str:
    key = resource.strip().lower()
    key = key.removesuffix("/.default")
    return key.rstrip("/")


_RESOURCES = {_resource_key(r): r for r in WELL_KNOWN_RESOURCES}
_NAMESPACE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_IDENTIFIER = re.compile(r"[a-z][a-z0-9_]{0,62}")
_TOKEN_PATH = re.compile(r"/metadata/identity/oauth2/token/?", re.IGNORECASE)
_HOST_TOKEN_PATH = re.compile(r"/host/token/?")


def fold_resource(resource: str) -> str:
    """The canonical spelling of a well-known resource (with or without trailing slash or `/.default`),
    "" when none was given, "other" for anything else."""
    if not resource:
        return ""
    return _RESOURCES.get(_resource_key(resource), OTHER)


def fold_route(route: str) -> str:
    """Upstream's `operation_type` value for the two token routes, "other" for anything else."""
    if _TOKEN_PATH.fullmatch(route):
        return TOKEN_ROUTE
    if _HOST_TOKEN_PATH.fullmatch(route):
        return HOST_TOKEN_ROUTE
    return OTHER


class BoundedValues:
    """Passes the first `limit` distinct values that satisfy `pattern`; everything else becomes "other"."""

    def __init__(self, limit: int, *, pattern: re.Pattern[str] = _IDENTIFIER, allow_empty: bool = False) -> None:
        self._limit = limit
        self._pattern = pattern
        self._allow_empty = allow_empty
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, value: str) -> str:
        if value == "" and self._allow_empty:
            return ""
        if value in self._seen:
            return value
        if not self._pattern.fullmatch(value):
            return OTHER
        with self._lock:
            if len(self._seen) >= self._limit:
                return OTHER
            self._seen.add(value)
        return value


def _families() -> list[Family]:
    return [
        Family("aadpodidentity_nmi_operations_duration_seconds", "Duration in seconds for nmi operations",
                "histogram", ("operation_type", "status_code", "namespace", "resource"), NMI_BUCKETS),
        Family("aadpodidentity_imds_operations_duration_seconds", "Duration in seconds of imds token operations",
                "histogram", ("operation_type",), IMDS_BUCKETS),
        Family("aadpodidentity_imds_operations_errors_count", "Total number of errors in imds token operations",
                "counter", ("operation_type",)),
        Family("aadpodidentity_kubernetes_api_operations_errors_count",
                "Total number of errors in kubernetes api operations", "counter", ("operation_type",)),
        Family("nmi_token_cache_lookups_total", "Token cache lookups by result (hit or miss)", "counter", ("result",)),
        Family("nmi_upstream_requests_in_flight", "Token requests to IMDS or Azure AD in progress", "gauge",
                ("source",)),
        Family("nmi_upstream_request_duration_seconds", "Duration in seconds of token requests to IMDS or Azure AD",
                "histogram", ("source", "outcome"), UPSTREAM_BUCKETS),
        Family("nmi_pods_indexed", "Pods on this node held in the pod index", "gauge"),
        Family("nmi_watch_restarts_total", "Kubernetes watches restarted", "counter", ("resource", "reason")),
        Family("nmi_watch_relists_total", "Kubernetes watches that had to list again", "counter",
                ("resource", "reason")),
        Family("nmi_iptables_repairs_total", "Repairs of the aad-metadata chain", "counter", ("reason",)),
        Family("nmi_requests_not_ready_total", "Token requests answered while nmi was not ready", "counter"),
        Family("nmi_audit_events_dropped_total", "Token issuance audit Events not written", "counter", ("reason",)),
        Family("nmi_event_loop_lag_seconds", "Largest lateness of a 0.5 s event-loop timer over the last 10 s",
               "gauge"),
        Family("nmi_binding_window_errors", "AzureIdentityBindings whose active-windows annotation is malformed "
               "(never active)", "gauge"),
    ]


class Metrics:
    """Every metric nmi exports. One instance per process, built by the composition root."""

    def __init__(self, *, max_namespaces: int = 500) -> None:
        self._store = SeriesStore(_families())
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self._store)
        self._namespaces = BoundedValues(max_namespaces, pattern=_NAMESPACE, allow_empty=True)
        self._operations = BoundedValues(32)
        self._sources = BoundedValues(8)
        self._reasons = BoundedValues(32)
        self._watched = BoundedValues(16)
        self._request_labels: dict[tuple[str, int, str, str], tuple[str, str, str, str]] = {}
        # Label-less series exist from the start so rate() works before the first event.
        self._store.set("nmi_pods_indexed", (), 0)
        self._store.add("nmi_requests_not_ready_total", (), 0)
        self._store.set("nmi_binding_window_errors", (), 0)
        self._store.set("nmi_event_loop_lag_seconds", (), 0)

    # -- the token routes -------------------------------------------------------------------------------
    def observe_request(self, *, route: str, status: int, namespace: str, resource: str, seconds: float) -> None:
        """After every token-route and host-token-route request (any status), like upstream."""
        raw = (route, status, namespace, resource)
        labels = self._request_labels.get(raw)
        if labels is None:  # folded once per distinct raw value set; the cache is bounded like the series
            status_code = str(status) if 100 <= status <= 599 else OTHER
            labels = (fold_route(route), status_code, self._namespaces(namespace), fold_resource(resource))
            if len(self._request_labels) >= MAX_SERIES_PER_FAMILY:
                self._request_labels.clear()
            self._request_labels[raw] = labels
        self._store.observe("aadpodidentity_nmi_operations_duration_seconds", labels, seconds)

    def served_not_ready(self) -> None:
        self._store.add("nmi_requests_not_ready_total")

    # -- token acquisition ------------------------------------------------------------------------------
    def cache_lookup(self, *, hit: bool) -> None:
        self._store.add("nmi_token_cache_lookups_total", ("hit" if hit else "miss",))

    def imds_succeeded(self, operation: str, *, seconds: float) -> None:
        """A successful upstream token acquisition; `operation` is one of IMDS_* / AAD_TOKEN."""
        self._store.observe("aadpodidentity_imds_operations_duration_seconds", (self._operations(operation),), seconds)

    def imds_error(self, operation: str) -> None:
        self._store.add("aadpodidentity_imds_operations_errors_count", (self._operations(operation),))

    def upstream_in_flight(self, source: str, delta: int) -> None:
        """The in-flight hook form (`UpstreamGate`'s InFlightHook): +1 when a call starts, -1 when it ends."""
        self._store.add("nmi_upstream_requests_in_flight", (self._sources(source),), delta)

    def upstream_finished(self, source: str, *, seconds: float, ok: bool, operation: str = "") -> None:
        """One finished call to IMDS (`source="imds"`) or Azure AD (`"aad"`): the new latency series, and
        upstream's duration/error series under `operation` (one of IMDS_* / AAD_TOKEN). Without `operation`,
        "aad" counts as AAD_TOKEN and "imds" as IMDS_USER_ASSIGNED (nmi asks IMDS for pods' user-assigned
        identities; pass IMDS_SYSTEM_ASSIGNED for node-identity calls without a selector)."""
        self._store.observe("nmi_upstream_request_duration_seconds",
                            (self._sources(source), "ok" if ok else "error"), seconds)
        operation = operation or (AAD_TOKEN if source == "aad" else IMDS_USER_ASSIGNED)
        if ok:
            self.imds_succeeded(operation, seconds=seconds)
        else:
            self.imds_error(operation)

    # -- Kubernetes -------------------------------------------------------------------------------------
    def kube_error(self, operation: str) -> None:
        self._store.add("aadpodidentity_kubernetes_api_operations_errors_count", (self._operations(operation),))

    def set_pods_indexed(self, count: int) -> None:
        self._store.set("nmi_pods_indexed", (), count)

    def watch_restarted(self, resource: str, reason: str) -> None:
        self._store.add("nmi_watch_restarts_total", (self._watched(resource), self._reasons(reason)))

    def watch_relisted(self, resource: str, reason: str) -> None:
        self._store.add("nmi_watch_relists_total", (self._watched(resource), self._reasons(reason)))

    def audit_events_dropped(self, count: int, reason: str) -> None:
        """Matches AuditRecorder's `on_dropped(count, reason)` hook."""
        self._store.add("nmi_audit_events_dropped_total", (self._reasons(reason),), count)

    def set_binding_window_errors(self, count: int) -> None:
        self._store.set("nmi_binding_window_errors", (), count)

    # -- the node ---------------------------------------------------------------------------------------
    def iptables_repaired(self, reason: str) -> None:
        self._store.add("nmi_iptables_repairs_total", (self._reasons(reason),))

    def set_event_loop_lag(self, seconds: float) -> None:
        self._store.set("nmi_event_loop_lag_seconds", (), seconds)

    # -- exposition -------------------------------------------------------------------------------------
    def render(self) -> tuple[bytes, str]:
        """The text exposition (format 0.0.4) of the registry and its content type, for `/metrics`."""
        return render_text(self.registry), CONTENT_TYPE
