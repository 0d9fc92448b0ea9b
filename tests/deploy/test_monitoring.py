"""The Grafana dashboard and the alert rules use only metrics, and labels, that a
running node exposes on /metrics."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from service.durations import parse_duration

from ..api.conftest import running_app
from ..support import ADMIN_TOKEN, auth
from .tools import CHART

DASHBOARD = CHART / "files" / "grafana-dashboard.json"
RULES = CHART / "files" / "prometheus-rules.yaml"
#: labels Prometheus adds when it scrapes (Kubernetes service discovery), and `le`
TARGET_LABELS = {"namespace", "pod", "job", "instance", "le"}
_SELECTOR = re.compile(r"\b(aos_[a-z0-9_]+)(?:\{([^}]*)\})?")
_MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
_BY = re.compile(r"\bby\s*\(([^)]*)\)")


@pytest.fixture
async def exposed() -> dict[str, set[str]]:
    """Each sample name a node exposes, with the label names it carries (a metric
    with labels but no samples yet counts with the labels it declares)."""
    async with running_app() as client:
        admin = {**auth(ADMIN_TOKEN), "X-Namespace": "m"}
        await client.put("/api/v1/namespaces/m", headers=admin)
        await client.post("/api/v1/jobs", json={"jobId": "a"}, headers=admin)
        await client.post("/api/v1/jobs/a/output", content=b"x", headers=admin)
        text = (await client.get("/metrics")).text
    names: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        suffixes = {
            "counter": ["_total", "_created"],
            "histogram": ["_bucket", "_count", "_sum", "_created"],
            "gauge": [""],
        }[family.type]
        for suffix in suffixes:
            names.setdefault(family.name + suffix, set())
        for sample in family.samples:
            names.setdefault(sample.name, set()).update(sample.labels)
    for name in ("aos_forwarded_requests_total",):  # labelled, no sample until a forward
        names[name].add("outcome")
    return names


def dashboard_exprs() -> Iterator[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]


def rules() -> list[dict[str, Any]]:
    loaded = yaml.safe_load(RULES.read_text())
    return [rule for group in loaded["groups"] for rule in group["rules"]]


def check_expr(where: str, expr: str, exposed: dict[str, set[str]]) -> set[str]:
    used = set()
    for match in _SELECTOR.finditer(expr):
        name, matchers = match.group(1), match.group(2) or ""
        assert name in exposed, f"{where}: {name} is not exposed by the service"
        used.add(name)
        for label, _ in _MATCHER.findall(matchers):
            assert label in exposed[name] | TARGET_LABELS, f"{where}: {name} has no label {label}"
    for group in _BY.findall(expr):
        for label in filter(None, (part.strip() for part in group.split(","))):
            assert any(label in exposed[n] for n in used) or label in TARGET_LABELS, (
                f"{where}: no metric of the expression has the label {label}"
            )
    assert used, f"{where}: no aos_ metric in {expr!r}"
    return used


def test_dashboard_uses_exposed_metrics(exposed: dict[str, set[str]]) -> None:
    used = set()
    for title, expr in dashboard_exprs():
        used |= check_expr(f"panel {title!r}", expr.replace("$__rate_interval", "5m"), exposed)
    # what the issue asks the dashboard to show
    for metric in (
        "aos_jobs_total",  # submissions, completions, errors
        "aos_http_request_duration_seconds_bucket",  # latency percentiles
        "aos_open_streams",
        "aos_webhook_outbox_pending",
        "aos_store_up",
    ):
        assert metric in used


def test_dashboard_is_importable() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"]
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert variables == {"datasource", "namespace"}
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}"
            assert panel["description"], panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24


def test_rules_use_exposed_metrics(exposed: dict[str, set[str]]) -> None:
    for rule in rules():
        check_expr(f"alert {rule['alert']}", rule["expr"], exposed)


def test_rules_are_complete() -> None:
    names = [rule["alert"] for rule in rules()]
    assert len(names) == len(set(names))
    for rule in rules():
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        if "for" in rule:
            assert parse_duration(f"PT{rule['for'].upper()}") > 0
    # the degradations operations.md tells operators about
    assert {"AOSStoreDown", "AOSHighErrorRate", "AOSWebhookBacklog"} <= set(names)
