"""The Grafana dashboard shipped in daemonset/: valid JSON whose queries name only series nmi exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

from .test_metrics import exercised_metrics, samples

DASHBOARD = Path(__file__).resolve().parents[2] / "daemonset" / "dashboards" / "nmi-grafana.json"
METRIC_NAME = re.compile(r"\b((?:aadpodidentity|nmi)_[a-z0-9_]+)")


def panels(dashboard: dict) -> list[dict]:
    found = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def expressions(dashboard: dict) -> list[str]:
    exprs = [t["expr"] for p in panels(dashboard) for t in p.get("targets", [])]
    exprs += [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]
    return exprs


def test_dashboard_is_grafana_json_with_unique_panel_ids():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 30
    ids = [p["id"] for p in panels(dashboard)]
    assert len(ids) == len(set(ids))
    for panel in panels(dashboard):
        if panel["type"] != "row":
            assert panel["targets"] and panel["datasource"]["uid"] == "${datasource}"


def test_every_metric_the_dashboard_queries_is_in_the_exposition():
    dashboard = json.loads(DASHBOARD.read_text())
    body, _ = exercised_metrics().render()
    exported = {name for name, _, _ in samples(body.decode())}
    referenced = {name for expr in expressions(dashboard) for name in METRIC_NAME.findall(expr)}
    assert referenced, "no metric found in the dashboard"
    assert referenced - exported == set()


def test_every_exported_family_has_a_panel():
    dashboard = json.loads(DASHBOARD.read_text())
    body, _ = exercised_metrics().render()
    families = {line.split()[2] for line in body.decode().splitlines() if line.startswith("# TYPE ")}
    text = "\n".join(expressions(dashboard))
    assert {f for f in families if f not in text} == set()
