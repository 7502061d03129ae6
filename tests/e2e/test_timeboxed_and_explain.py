"""The real daemon with time-boxed bindings (windows chosen relative to the real clock: one always open, one that
opens in three days, one malformed — nothing waits), and the `nmi explain` CLI asking that daemon."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pytest

from fakes.background import BackgroundFakes
from fakes.kubeobjects import make_binding, make_identity, make_pod
from nmi.windows import DAY_NAMES

from tests.e2e.conftest import A, NODE, NODE_IDENTITY
from tests.e2e.harness import NmiProcess

NS = "tb"
IN_THREE_DAYS = datetime.now(timezone.utc).date() + timedelta(days=3)
CLOSED = f"{DAY_NAMES[IN_THREE_DAYS.weekday()]} 00:00-00:01 UTC"
NEXT_WINDOW = f"{IN_THREE_DAYS.isoformat()}T00:00:00+00:00"
IPS = {"open": "127.0.0.21", "closed": "127.0.0.22", "broken": "127.0.0.23"}


@pytest.fixture(scope="module")
def fakes():
    with BackgroundFakes([A, NODE_IDENTITY]) as fakes:
        fakes.put(make_identity("id-a", NS, client_id=A.client_id, resource_id=A.resource_id))
        for name, windows in (("open", "Mon-Sun 00:00-24:00 UTC"), ("closed", CLOSED),
                              ("broken", "Funday 00:00-01:00 UTC")):
            fakes.put(make_binding(name, NS, identity="id-a", selector=name, active_windows=windows))
            fakes.put(make_pod(name, NS, IPS[name], NODE, labels={"aadpodidbinding": name}))
        yield fakes


@pytest.fixture(scope="module")
def nmi(fakes, tmp_path_factory):
    process = NmiProcess(tmp_path_factory.mktemp("nmi"), fakes, node=NODE,
                         extra=["--operation-mode=managed", "--forceNamespaced"])
    process.start()
    yield process
    process.stop()


def test_only_the_binding_inside_its_window_is_served(nmi):
    assert nmi.token(source=IPS["open"]).status == 200
    for _ in range(3):
        closed = nmi.token(source=IPS["closed"])
        assert closed.status == 403 and closed.json == {
            "error": "access_denied",
            "error_description": f"binding {NS}/closed is not active now; next window {NEXT_WINDOW}"}
        broken = nmi.token(source=IPS["broken"])
        assert broken.status == 403 and "malformed" in broken.json["error_description"]
        assert "Funday" not in broken.body  # the annotation's text is not the caller's business
    reports = [line for line in nmi.log().splitlines() if f"{NS}/broken" in line and "malformed" in line]
    assert len(reports) == 1, reports  # once per binding, not per request
    metrics = nmi.get("/metrics", port=nmi.metrics_port).body
    assert "\nnmi_binding_window_errors 1\n" in metrics


def explain(nmi, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nmi", "explain", f"--http-probe-port={nmi.probe_port}", *args],
                          capture_output=True, text=True, timeout=30)


def test_nmi_explain_asks_the_running_daemon(nmi):
    assert nmi.token(source=IPS["open"]).status == 200
    served = explain(nmi, "--namespace", NS, "--pod", "open", "--resource", "https://management.azure.com/")
    assert served.returncode == 0, served.stderr
    assert "verdict:   200 (bound) identity tb/id-a" in served.stdout
    assert "cached:    https://management.azure.com/ obtained" in served.stdout

    refused = explain(nmi, "-n", NS, "--pod", "closed", "-o", "json")
    assert refused.returncode == 1, refused.stderr
    report = json.loads(refused.stdout)
    assert (report["status"], report["reason"]) == (403, "inactive-window")
    assert next(r for r in report["bindings"] if r["binding"] == f"{NS}/closed")["next_window"] == NEXT_WINDOW

    unknown = explain(nmi, "-n", NS, "--pod", "nowhere", "-o", "json")
    assert unknown.returncode == 1 and json.loads(unknown.stdout)["reason"] == "not-on-node"


def test_nmi_explain_says_when_it_cannot_reach_the_daemon(tmp_path):
    from fakes.ports import unused_ports

    (port,) = unused_ports(1)
    done = subprocess.run([sys.executable, "-m", "nmi", "explain", "-n", NS, "--pod", "x", f"--http-probe-port={port}"],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 3 and "cannot reach nmi" in done.stderr


def test_a_malformed_annotation_becomes_a_warning_event_on_the_binding(nmi, fakes):
    assert nmi.stop() == 0  # the audit's last flush writes the pending Events
    events = fakes.call(lambda: list(fakes.api.posted_events))
    warnings = [e for e in events if e["reason"] == "InvalidActiveWindows"]
    assert [(e["involvedObject"]["namespace"], e["involvedObject"]["name"], e["type"]) for e in warnings] == [
        (NS, "broken", "Warning")]
