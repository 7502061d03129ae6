"""KubeEventWriter: the real `kubernetes` client posting audit Events to the fake API server over HTTP."""

from __future__ import annotations

import socket
from datetime import datetime, timezone

import pytest

from nmi.audit import AuditRecorder, EventWriteFailed, IssuanceKey
from nmi.kube import build_api_client
from nmi.kube.events import KubeEventWriter

T0 = 1_800_000_000.0  # 2027-01-15T08:00:00Z


@pytest.fixture
async def writer(api_client):
    writer = KubeEventWriter(api_client, request_timeout=5)
    try:
        yield writer
    finally:
        writer.close()


def one_event(audit: AuditRecorder) -> dict:
    key = IssuanceKey("default", "bind", "default", "a", "id", "https://vault.azure.net")
    return audit.event(key, count=1, first=T0, last=T0)


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


async def test_audit_events_reach_the_api_server_on_the_bindings_namespace(apiserver, writer):
    now = [T0]
    audit = AuditRecorder(writer, node="node-1", clock=lambda: now[0])
    audit.record("team-a", "app-binding", "team-a", "app-7d9f", "app-identity", "https://vault.azure.net")
    now[0] += 42
    audit.record("team-a", "app-binding", "team-a", "app-7d9f", "app-identity", "https://vault.azure.net")
    assert await audit.flush() == 1

    [request] = apiserver.requests_for("events", "create")
    assert request.method == "POST" and request.path == "/api/v1/namespaces/team-a/events"
    [event] = apiserver.posted_events
    assert event["involvedObject"] == {"apiVersion": "aadpodidentity.k8s.io/v1", "kind": "AzureIdentityBinding",
                                       "name": "app-binding", "namespace": "team-a"}
    assert event["metadata"]["namespace"] == "team-a" and event["metadata"]["name"].startswith("app-binding.")
    assert event["reason"] == "TokenIssued" and event["type"] == "Normal" and event["count"] == 2
    assert "team-a/app-7d9f" in event["message"] and "app-identity" in event["message"]
    assert parse_time(event["firstTimestamp"]) == datetime(2027, 1, 15, 8, 0, 0, tzinfo=timezone.utc)
    assert parse_time(event["lastTimestamp"]) == datetime(2027, 1, 15, 8, 0, 42, tzinfo=timezone.utc)
    assert event["source"] == {"component": "nmi", "host": "node-1"}
    assert event["reportingComponent"] == "nmi" and event["reportingInstance"] == "node-1"


async def test_forbidden_answer_disables_the_audit(apiserver, writer):
    apiserver.fail_next(1, status=403, verb="create")
    audit = AuditRecorder(writer, node="node-1", clock=lambda: T0)
    audit.record("default", "bind", "default", "a", "id", "https://vault.azure.net")
    audit.record("default", "bind", "default", "b", "id", "https://vault.azure.net")
    assert await audit.flush() == 0
    assert not audit.enabled
    assert apiserver.count("events", "create") == 1 and apiserver.posted_events == []


@pytest.mark.parametrize("status", [500, 422, None])
async def test_other_failures_become_write_failures(apiserver, writer, status):
    apiserver.fail_next(5, status=status, verb="create")
    audit = AuditRecorder(writer, node="node-1", clock=lambda: T0)
    with pytest.raises(EventWriteFailed):
        await writer.write(one_event(audit))


async def test_an_unreachable_api_server_is_a_write_failure():
    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    api_client = build_api_client(host=f"http://127.0.0.1:{port}")
    writer = KubeEventWriter(api_client, request_timeout=2)
    try:
        audit = AuditRecorder(writer, node="node-1", clock=lambda: T0)
        with pytest.raises(EventWriteFailed):
            await writer.write(one_event(audit))
    finally:
        writer.close()
        api_client.close()
