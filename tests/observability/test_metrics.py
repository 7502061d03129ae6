"""The /metrics exposition: upstream names, types, labels and buckets kept; label values bounded."""

from __future__ import annotations

import re

import pytest
from prometheus_client.parser import text_string_to_metric_families

from nmi.metrics import (
    AAD_TOKEN,
    CONTENT_TYPE,
    IMDS_SYSTEM_ASSIGNED,
    IMDS_USER_ASSIGNED,
    KUBE_GET_POD_LIST,
    KUBE_GET_SECRET,
    MAX_SERIES_PER_FAMILY,
    Metrics,
    fold_resource,
    fold_route,
    go_float,
)

UPSTREAM_NMI_BUCKETS = ["0.5", "1", "2", "3", "4", "5", "10", "15", "20", "25", "30", "40", "50", "60", "70",
                        "80", "90", "100", "+Inf"]
UPSTREAM_IMDS_BUCKETS = ["0.01", "0.02", "0.05", "0.1", "0.2", "0.3", "0.4", "0.5", "0.6", "0.7", "0.8", "0.9",
                         "1", "2", "3", "4", "5", "10", "+Inf"]
SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})? (?P<value>\S+)$")
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def samples(text: str) -> list[tuple[str, dict[str, str], str]]:
    out = []
    for line in text.splitlines():
        if line.startswith("#") or not line:
            continue
        match = SAMPLE.match(line)
        assert match, f"malformed sample line: {line!r}"
        out.append((match["name"], dict(LABEL.findall(match["labels"] or "")), match["value"]))
    return out


def exposition(metrics: Metrics) -> str:
    body, content_type = metrics.render()
    assert content_type == CONTENT_TYPE
    return body.decode()


def test_upstream_series_keep_their_exact_names_types_label_names_and_buckets():
    metrics = Metrics()
    metrics.observe_request(route="/metadata/identity/oauth2/token", status=200, namespace="default",
                            resource="https://management.azure.com/", seconds=0.7)
    metrics.imds_succeeded(IMDS_USER_ASSIGNED, seconds=0.03)
    metrics.imds_error(AAD_TOKEN)
    metrics.kube_error(KUBE_GET_POD_LIST)
    text = exposition(metrics)

    for name, kind in [("aadpodidentity_nmi_operations_duration_seconds", "histogram"),
                       ("aadpodidentity_imds_operations_duration_seconds", "histogram"),
                       ("aadpodidentity_imds_operations_errors_count", "counter"),
                       ("aadpodidentity_kubernetes_api_operations_errors_count", "counter")]:
        assert f"# TYPE {name} {kind}\n" in text
    assert "# HELP aadpodidentity_nmi_operations_duration_seconds Duration in seconds for nmi operations\n" in text
    assert ('aadpodidentity_imds_operations_errors_count{operation_type="adal_token"} 1\n') in text
    assert ('aadpodidentity_kubernetes_api_operations_errors_count{operation_type="get_pod_list"} 1\n') in text
    assert "_total" not in "".join(line for line in text.splitlines() if "aadpodidentity_" in line)

    rows = samples(text)
    nmi_buckets = [labels for name, labels, _ in rows if name == "aadpodidentity_nmi_operations_duration_seconds_bucket"]
    assert [b["le"] for b in nmi_buckets] == UPSTREAM_NMI_BUCKETS
    assert set(nmi_buckets[0]) == {"operation_type", "status_code", "namespace", "resource", "le"}
    assert nmi_buckets[0] | {"le": "x"} == {"operation_type": "/metadata/identity/oauth2/token", "status_code": "200",
                                            "namespace": "default", "resource": "https://management.azure.com/",
                                            "le": "x"}
    counts = {b["le"]: v for (n, b, v) in rows if n == "aadpodidentity_nmi_operations_duration_seconds_bucket"}
    assert counts["0.5"] == "0" and counts["1"] == "1" and counts["+Inf"] == "1"
    imds_buckets = [labels for name, labels, _ in rows if name == "aadpodidentity_imds_operations_duration_seconds_bucket"]
    assert [b["le"] for b in imds_buckets] == UPSTREAM_IMDS_BUCKETS
    assert imds_buckets[0]["operation_type"] == "adal_token_msi_userassignedid"
    assert ("aadpodidentity_imds_operations_duration_seconds_sum", {"operation_type": IMDS_USER_ASSIGNED}, "0.03") in rows
    assert ("aadpodidentity_imds_operations_duration_seconds_count", {"operation_type": IMDS_USER_ASSIGNED}, "1") in rows


def test_upstream_series_appear_only_after_their_first_observation():
    text = exposition(Metrics())
    assert "aadpodidentity_" not in text
    assert "nmi_pods_indexed 0\n" in text and "nmi_requests_not_ready_total 0\n" in text


def test_exposition_is_valid_prometheus_text():
    metrics = exercised_metrics()
    families = {f.name: f for f in text_string_to_metric_families(exposition(metrics))}
    assert families["aadpodidentity_nmi_operations_duration_seconds"].type == "histogram"
    assert families["nmi_upstream_requests_in_flight"].type == "gauge"
    assert families["nmi_watch_restarts"].type == "counter"


@pytest.mark.parametrize("raw, folded", [
    ("https://management.azure.com/", "https://management.azure.com/"),
    ("https://management.azure.com", "https://management.azure.com/"),
    ("https://management.azure.com/.default", "https://management.azure.com/"),
    ("HTTPS://Vault.Azure.Net/", "https://vault.azure.net"),
    ("https://vault.azure.net/.default", "https://vault.azure.net"),
    ("https://storage.azure.com", "https://storage.azure.com/"),
    ("https://graph.microsoft.com/.default", "https://graph.microsoft.com/"),
    ("https://database.windows.net//", "https://database.windows.net/"),
    ("https://myaccount.blob.core.windows.net/", "other"),
    ("https://evil.example/\n\"}", "other"),
    ("", ""),
])
def test_resources_fold_to_a_fixed_set_of_well_known_audiences(raw, folded):
    assert fold_resource(raw) == folded


@pytest.mark.parametrize("raw, folded", [
    ("/metadata/identity/oauth2/token", "/metadata/identity/oauth2/token"),
    ("/Metadata/identity/oauth2/token/", "/metadata/identity/oauth2/token"),
    ("/host/token", "/host/token/"),
    ("/host/token/", "/host/token/"),
    ("/metadata/identity/oauth2/token/extra/1234", "other"),
    ("/anything", "other"),
])
def test_routes_fold_to_upstream_operation_types(raw, folded):
    assert fold_route(raw) == folded


def test_thousands_of_junk_paths_resources_and_namespaces_make_a_bounded_number_of_series():
    metrics = Metrics()
    for i in range(5000):
        metrics.observe_request(route=f"/metadata/identity/oauth2/token/{i}", status=400, namespace=f"ns-{i}",
                                resource=f"https://junk-{i}.example/{'x' * 300}", seconds=0.001)
        metrics.observe_request(route="/host/token", status=200, namespace="Not A Namespace!" * 20,
                                resource=f"\u00e9{i}", seconds=0.001)
    rows = samples(exposition(metrics))
    series = [labels for name, labels, _ in rows if name == "aadpodidentity_nmi_operations_duration_seconds_count"]
    assert len(series) <= 502  # 500 namespaces, "other", and the host-token series
    assert {s["resource"] for s in series} == {"other"}
    assert {s["operation_type"] for s in series} == {"other", "/host/token/"}
    assert sum(1 for s in series if s["namespace"] == "other") == 2
    for labels in series:
        assert all(len(v) <= 255 and v.isascii() for v in labels.values())


def test_a_family_never_exceeds_its_hard_series_cap():
    metrics = Metrics()
    for i in range(500):
        for status in range(200, 212):
            metrics.observe_request(route="/metadata/identity/oauth2/token", status=status, namespace=f"ns-{i}",
                                    resource="https://vault.azure.net", seconds=0.1)
    rows = samples(exposition(metrics))
    counts = [(labels, v) for name, labels, v in rows if name == "aadpodidentity_nmi_operations_duration_seconds_count"]
    assert len(counts) == MAX_SERIES_PER_FAMILY + 1
    assert sum(float(v) for _, v in counts) == 500 * 12  # folded, not lost


def test_namespaces_beyond_the_cap_are_reported_as_other():
    metrics = Metrics(max_namespaces=2)
    for namespace in ["a", "b", "c", "d", ""]:
        metrics.observe_request(route="/metadata/identity/oauth2/token", status=403, namespace=namespace,
                                resource="https://vault.azure.net", seconds=0.1)
    rows = samples(exposition(metrics))
    namespaces = [l["namespace"] for n, l, _ in rows if n == "aadpodidentity_nmi_operations_duration_seconds_count"]
    assert sorted(namespaces) == ["", "a", "b", "other"]


def test_code_chosen_labels_are_bounded_too():
    metrics = Metrics()
    for i in range(200):
        metrics.kube_error(f"op_{i}")
        metrics.watch_restarted(f"res_{i}", f"reason_{i}")
        metrics.iptables_repaired("Bad Reason With Spaces")
    rows = samples(exposition(metrics))
    assert len([1 for n, _, _ in rows if n == "aadpodidentity_kubernetes_api_operations_errors_count"]) == 33
    assert len([1 for n, _, _ in rows if n == "nmi_watch_restarts_total"]) <= 33
    assert ("nmi_iptables_repairs_total", {"reason": "other"}, "200") in rows


def test_upstream_calls_track_in_flight_calls_and_latency_by_source_and_outcome():
    # The hooks as the MSAL adapter calls them around each call in its worker threads (ok: it produced a result).
    metrics = Metrics()
    metrics.upstream_in_flight("imds", 1)
    assert ("nmi_upstream_requests_in_flight", {"source": "imds"}, "1") in samples(exposition(metrics))
    metrics.upstream_in_flight("imds", -1)
    metrics.upstream_finished("imds", seconds=0.25, ok=True)
    metrics.upstream_in_flight("aad", 1)
    metrics.upstream_in_flight("aad", -1)
    metrics.upstream_finished("aad", seconds=3, ok=False)
    rows = samples(exposition(metrics))
    assert ("nmi_upstream_requests_in_flight", {"source": "imds"}, "0") in rows
    assert ("nmi_upstream_requests_in_flight", {"source": "aad"}, "0") in rows
    assert ("nmi_upstream_request_duration_seconds_sum", {"source": "imds", "outcome": "ok"}, "0.25") in rows
    assert ("nmi_upstream_request_duration_seconds_bucket", {"source": "imds", "outcome": "ok", "le": "0.1"}, "0") in rows
    assert ("nmi_upstream_request_duration_seconds_bucket", {"source": "imds", "outcome": "ok", "le": "0.25"}, "1") in rows
    assert ("nmi_upstream_request_duration_seconds_sum", {"source": "aad", "outcome": "error"}, "3") in rows
    assert ("nmi_upstream_request_duration_seconds_count", {"source": "aad", "outcome": "error"}, "1") in rows


def test_new_series_report_cache_pods_watches_iptables_and_readiness():
    metrics = exercised_metrics()
    rows = samples(exposition(metrics))
    assert ("nmi_token_cache_lookups_total", {"result": "hit"}, "2") in rows
    assert ("nmi_token_cache_lookups_total", {"result": "miss"}, "1") in rows
    assert ("nmi_pods_indexed", {}, "42") in rows
    assert ("nmi_watch_restarts_total", {"resource": "pods", "reason": "expired"}, "1") in rows
    assert ("nmi_watch_relists_total", {"resource": "azureidentities", "reason": "expired"}, "1") in rows
    assert ("nmi_iptables_repairs_total", {"reason": "rules_drifted"}, "1") in rows
    assert ("nmi_requests_not_ready_total", {}, "1") in rows
    assert ("nmi_audit_events_dropped_total", {"reason": "overflow"}, "7") in rows


def test_the_token_service_hooks_feed_both_the_new_and_the_upstream_series():
    metrics = Metrics()
    metrics.upstream_in_flight("imds", 1)
    metrics.upstream_in_flight("imds", 1)
    metrics.upstream_in_flight("imds", -1)
    metrics.upstream_finished("imds", seconds=0.05, ok=True)
    metrics.upstream_finished("imds", seconds=0.05, ok=True, operation=IMDS_SYSTEM_ASSIGNED)
    metrics.upstream_finished("aad", seconds=2, ok=False)
    rows = samples(exposition(metrics))
    assert ("nmi_upstream_requests_in_flight", {"source": "imds"}, "1") in rows
    assert ("nmi_upstream_request_duration_seconds_count", {"source": "imds", "outcome": "ok"}, "2") in rows
    assert ("nmi_upstream_request_duration_seconds_count", {"source": "aad", "outcome": "error"}, "1") in rows
    assert ("aadpodidentity_imds_operations_duration_seconds_count", {"operation_type": IMDS_USER_ASSIGNED}, "1") in rows
    assert ("aadpodidentity_imds_operations_duration_seconds_count", {"operation_type": IMDS_SYSTEM_ASSIGNED}, "1") in rows
    assert ("aadpodidentity_imds_operations_errors_count", {"operation_type": AAD_TOKEN}, "1") in rows


@pytest.mark.parametrize("value, text", [(1.0, "1"), (0.5, "0.5"), (100, "100"), (float("inf"), "+Inf"),
                                         (0.01, "0.01"), (1e-06, "1e-06"), (float("nan"), "NaN")])
def test_numbers_are_written_as_go_wrote_them(value, text):
    assert go_float(value) == text


def exercised_metrics() -> Metrics:
    """Every public recording method called at least once (also used by the dashboard test)."""
    metrics = Metrics()
    metrics.observe_request(route="/metadata/identity/oauth2/token", status=200, namespace="default",
                            resource="https://vault.azure.net", seconds=0.01)
    metrics.observe_request(route="/host/token", status=404, namespace="", resource="", seconds=1.5)
    metrics.served_not_ready()
    metrics.cache_lookup(hit=True)
    metrics.cache_lookup(hit=True)
    metrics.cache_lookup(hit=False)
    metrics.imds_succeeded(IMDS_SYSTEM_ASSIGNED, seconds=0.05)
    metrics.imds_error(IMDS_USER_ASSIGNED)
    metrics.kube_error(KUBE_GET_SECRET)
    for source in ("imds", "aad"):
        metrics.upstream_in_flight(source, 1)
        metrics.upstream_in_flight(source, -1)
        metrics.upstream_finished(source, seconds=0.01, ok=True)
    metrics.set_pods_indexed(42)
    metrics.watch_restarted("pods", "expired")
    metrics.watch_relisted("azureidentities", "expired")
    metrics.iptables_repaired("rules_drifted")
    metrics.audit_events_dropped(7, "overflow")
    return metrics
