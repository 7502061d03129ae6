"""Malformed active-windows annotations: reported once per binding and value (log, gauge, Warning Event), never
per request, and forgotten once fixed."""

from __future__ import annotations

import logging

from nmi.audit import REASON_INVALID_ACTIVE_WINDOWS, AuditRecorder
from nmi.cache import IdentityIndex
from fakes.kubeobjects import make_binding
from nmi.kube.projection import project_binding
from nmi.metrics import Metrics
from nmi.window_reports import WindowErrorReporter

from tests.observability.test_audit import Clock, RecordingWriter


def broken(name: str, text: str = "Funday 00:00-01:00 UTC"):
    return project_binding(make_binding(name, "team", identity="id", selector="sel", active_windows=text))


def fine(name: str):
    return project_binding(make_binding(name, "team", identity="id", selector="sel", active_windows="Sat 10:00-12:00 UTC"))


def gauge(metrics: Metrics) -> str:
    return next(line for line in metrics.render()[0].decode().splitlines()
                if line.startswith("nmi_binding_window_errors "))


async def test_a_malformed_annotation_is_logged_counted_and_evented_once_per_value(caplog):
    metrics, writer = Metrics(), RecordingWriter()
    audit = AuditRecorder(writer, node="node-1", clock=Clock())
    index = IdentityIndex()
    reporter = WindowErrorReporter(set_gauge=metrics.set_binding_window_errors, warn=lambda b, message: audit.warn(
        b.namespace, b.name, reason=REASON_INVALID_ACTIVE_WINDOWS, message=message))
    assert gauge(metrics) == "nmi_binding_window_errors 0"
    caplog.set_level(logging.WARNING, logger="nmi.window_reports")
    index.binding_store.replace([broken("night"), fine("day")])
    for _ in range(3):  # every review of the same bindings (a relist, another binding changing) stays quiet
        reporter.review(index.binding_store.all())
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "team/night" in lines[0] and "Funday" in lines[0]
    assert gauge(metrics) == "nmi_binding_window_errors 1"
    assert await audit.flush() == 1
    (event,) = writer.events
    assert (event["type"], event["reason"]) == ("Warning", "InvalidActiveWindows")
    assert event["involvedObject"] == {"apiVersion": "aadpodidentity.k8s.io/v1", "kind": "AzureIdentityBinding",
                                       "name": "night", "namespace": "team"}
    assert "aadpodidentity.k8s.io/active-windows" in event["message"]

    index.binding_store.upsert(broken("night", "Mon 25:00-26:00 UTC"))  # edited, still malformed: new value
    reporter.review(index.binding_store.all())
    assert len(caplog.records) == 2 and await audit.flush() == 1
    index.binding_store.upsert(fine("night"))  # fixed
    reporter.review(index.binding_store.all())
    assert gauge(metrics) == "nmi_binding_window_errors 0" and len(caplog.records) == 2


def test_the_gauge_has_no_labels_a_namespace_user_could_grow():
    metrics = Metrics()
    reporter = WindowErrorReporter(set_gauge=metrics.set_binding_window_errors)
    reporter.review([broken(f"b{i}", f"Mon 0{i % 10}:00-0{i % 10}:00 UTC") for i in range(200)])
    text = metrics.render()[0].decode()
    assert [line for line in text.splitlines() if line.startswith("nmi_binding_window_errors")] == [
        "nmi_binding_window_errors 200"]
