"""Token issuance audit: bounded aggregation on the request path, Events flushed in the background."""

from __future__ import annotations

import asyncio
import inspect
import logging

import pytest

from nmi.audit import AuditRecorder, EventsForbidden, EventWriteFailed
from nmi.metrics import Metrics
from tests.eventually import eventually

T0 = 1_800_000_000.0  # 2027-01-15T08:00:00Z


class RecordingWriter:
    """An EventWriter double: keeps every Event, or fails the way the Kubernetes adapter does."""

    def __init__(self) -> None:
        self.events: list[dict] = []
        self.fail_with: Exception | None = None
        self.fail_names: set[str] = set()
        self.calls = 0
        self.written = asyncio.Queue()

    async def write(self, event):
        self.calls += 1
        if self.fail_with is not None:
            raise self.fail_with
        if event["involvedObject"]["name"] in self.fail_names:
            raise EventWriteFailed("HTTP 500 Internal Server Error")
        self.events.append(event)
        self.written.put_nowait(event)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def recorder(writer, clock=None, **kwargs) -> AuditRecorder:
    return AuditRecorder(writer, node="node-1", clock=clock or Clock(), **kwargs)


async def test_a_burst_from_one_pod_becomes_one_event_with_its_count_and_time_span():
    writer, clock = RecordingWriter(), Clock()
    audit = recorder(writer, clock)
    for _ in range(10_000):
        audit.record("default", "app-binding", "default", "app-1", "app-identity", "https://vault.azure.net")
        clock.now += 0.001
    assert audit.pending == 1
    assert await audit.flush() == 1
    [event] = writer.events
    assert event["count"] == 10_000
    assert event["firstTimestamp"] == "2027-01-15T08:00:00Z"
    assert event["lastTimestamp"] == "2027-01-15T08:00:09Z"
    assert event["involvedObject"] == {"apiVersion": "aadpodidentity.k8s.io/v1", "kind": "AzureIdentityBinding",
                                       "name": "app-binding", "namespace": "default"}
    assert event["metadata"]["namespace"] == "default"
    assert event["metadata"]["name"].startswith("app-binding.")
    assert event["reason"] == "TokenIssued" and event["type"] == "Normal"
    assert event["source"] == {"component": "nmi", "host": "node-1"}
    assert event["message"] == ("Token for identity app-identity and resource https://vault.azure.net issued to pod "
                                "default/app-1 10000 times")
    assert audit.pending == 0 and await audit.flush() == 0


async def test_one_event_per_binding_pod_identity_and_resource_per_interval():
    writer = RecordingWriter()
    audit = recorder(writer)
    for pod in ("a", "b"):
        for resource in ("https://vault.azure.net", "https://storage.azure.com/"):
            for _ in range(3):
                audit.record("team", "bind", "team", pod, "id", resource)
    audit.record("other-ns", "bind", "team", "a", "id", "https://vault.azure.net")
    assert await audit.flush() == 5
    assert sorted(e["count"] for e in writer.events) == [1, 3, 3, 3, 3]
    assert len({e["metadata"]["name"] for e in writer.events}) == 5
    assert {e["metadata"]["namespace"] for e in writer.events} == {"team", "other-ns"}
    assert next(e for e in writer.events if e["count"] == 1)["message"].endswith("team/a once")


async def test_distinct_issuances_beyond_the_cap_are_counted_and_dropped_so_memory_stays_bounded(caplog):
    writer, dropped = RecordingWriter(), []
    audit = recorder(writer, max_events_per_interval=10, on_dropped=lambda n, reason: dropped.append((n, reason)))
    for i in range(5000):
        audit.record("default", "bind", "default", "noisy", "id", f"https://junk-{i}.example/")
    audit.record("default", "bind", "default", "noisy", "id", "https://junk-0.example/")  # known key: still counted
    assert audit.pending == 10
    with caplog.at_level(logging.WARNING, logger="nmi.audit"):
        assert await audit.flush() == 10
    assert dropped == [(4990, "overflow")]
    assert "4990 issuances beyond 10 Events per interval" in caplog.text
    assert writer.events[0]["count"] == 2
    audit.record("default", "bind", "default", "noisy", "id", "https://next.example/")
    assert audit.pending == 1  # the cap is per interval


async def test_dropped_events_are_reported_to_the_metrics():
    metrics = Metrics()
    audit = recorder(RecordingWriter(), max_events_per_interval=1, on_dropped=metrics.audit_events_dropped)
    for pod in ("a", "b", "c"):
        audit.record("default", "bind", "default", pod, "id", "https://vault.azure.net")
    await audit.flush()
    assert 'nmi_audit_events_dropped_total{reason="overflow"} 2\n' in metrics.render()[0].decode()


async def test_resource_in_the_message_is_truncated():
    writer = RecordingWriter()
    audit = recorder(writer)
    audit.record("default", "bind", "default", "p", "id", "https://x/" + "y" * 5000)
    await audit.flush()
    assert len(writer.events[0]["message"]) < 400


async def test_forbidden_disables_the_audit_with_a_single_warning(caplog):
    writer, dropped = RecordingWriter(), []
    writer.fail_with = EventsForbidden("forbidden")
    audit = recorder(writer, on_dropped=lambda n, reason: dropped.append((n, reason)))
    for pod in ("a", "b", "c"):
        audit.record("default", "bind", "default", pod, "id", "https://vault.azure.net")
    with caplog.at_level(logging.WARNING, logger="nmi.audit"):
        assert await audit.flush() == 0
        audit.record("default", "bind", "default", "a", "id", "https://vault.azure.net")
        assert await audit.flush() == 0
    assert not audit.enabled and audit.pending == 0
    assert writer.calls == 1
    assert dropped == [(3, "forbidden")]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "403" in warnings[0].getMessage()


async def test_a_failed_write_drops_that_event_and_the_rest_are_written():
    writer, dropped = RecordingWriter(), []
    writer.fail_names = {"broken"}
    audit = recorder(writer, on_dropped=lambda n, reason: dropped.append((n, reason)))
    audit.record("default", "broken", "default", "a", "id", "https://vault.azure.net")
    audit.record("default", "fine", "default", "a", "id", "https://vault.azure.net")
    assert await audit.flush() == 1
    assert [e["involvedObject"]["name"] for e in writer.events] == ["fine"]
    assert dropped == [(1, "write_failed")]
    assert audit.enabled


def test_recording_is_synchronous_and_touches_no_writer():
    writer = RecordingWriter()
    audit = recorder(writer)
    assert not inspect.iscoroutinefunction(audit.record)
    audit.record("default", "bind", "default", "a", "id", "https://vault.azure.net")
    assert writer.calls == 0


async def test_run_flushes_once_per_interval_using_the_injected_sleep():
    writer, slept, ticks = RecordingWriter(), [], asyncio.Queue()

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        await ticks.get()

    audit = recorder(writer, interval=30, sleep=sleep)
    task = asyncio.create_task(audit.run())
    try:
        audit.record("default", "bind", "default", "a", "id", "https://vault.azure.net")
        ticks.put_nowait(None)
        first = await asyncio.wait_for(writer.written.get(), 5)
        audit.record("default", "bind", "default", "a", "id", "https://vault.azure.net")
        audit.record("default", "bind", "default", "a", "id", "https://vault.azure.net")
        ticks.put_nowait(None)
        second = await asyncio.wait_for(writer.written.get(), 5)
        assert (first["count"], second["count"]) == (1, 2)
        assert slept[:2] == [30, 30]
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_run_keeps_going_idle_after_being_disabled():
    writer, ticks = RecordingWriter(), asyncio.Queue()
    writer.fail_with = EventsForbidden("forbidden")

    async def sleep(seconds: float) -> None:
        await ticks.get()

    audit = recorder(writer, sleep=sleep)
    task = asyncio.create_task(audit.run())
    try:
        audit.record("default", "bind", "default", "a", "id", "https://vault.azure.net")
        for _ in range(3):
            ticks.put_nowait(None)
            await eventually(ticks.empty, timeout=5, interval=0)  # the recorder took the tick
        assert not audit.enabled and not task.done() and writer.calls == 1
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
