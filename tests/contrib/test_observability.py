"""The Grafana dashboard and the Prometheus alerts use only metrics and labels aiollmux exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.metrics import MetricWrapperBase

from aiollmux.metrics import Metrics
from tests.contrib.conftest import REPO

DASHBOARD = REPO / "contrib" / "grafana" / "aiollmux-dashboard.json"
ALERTS = REPO / "contrib" / "prometheus" / "alerts.yml"
METRIC = re.compile(r"(?<![A-Za-z0-9_])llmux_[a-z0-9_]+")
SELECTOR = re.compile(r"(?<![A-Za-z0-9_])(llmux_[a-z0-9_]+)\{([^}]*)\}")
# Labels every scraped series has, and the bucket label of histograms.
SCRAPE_LABELS = frozenset({"instance", "job", "le"})


def exported_series() -> dict[str, frozenset[str]]:
    """Every series name /metrics can show, with its label names."""
    metrics = Metrics()
    series: dict[str, frozenset[str]] = {}
    for collector in vars(metrics).values():
        if not isinstance(collector, MetricWrapperBase):
            continue
        labels = frozenset(collector._labelnames)  # the label names it was declared with
        name, kind = collector._name, str(collector._type)
        suffixes = {
            "counter": ("_total", "_created"),
            "histogram": ("_bucket", "_sum", "_count", "_created"),
            "gauge": ("",),
        }[kind]
        for suffix in suffixes:
            series[name + suffix] = labels
    return series


SERIES = exported_series()


def test_the_reference_list_is_the_design_list() -> None:
    families = {name.removesuffix("_total") for name in SERIES if not name.endswith("_created")}
    assert "llmux_switch_total" in SERIES
    assert "llmux_active_model" in SERIES
    assert "llmux_switch_duration_seconds_bucket" in SERIES
    assert len(families) > 15


def check_expression(expression: str, where: str) -> set[str]:
    """The llmux metrics an expression uses; fail on unknown metrics or labels."""
    used = set(METRIC.findall(expression))
    unknown = sorted(name for name in used if name not in SERIES)
    assert unknown == [], f"{where}: no such metric {unknown} in aiollmux/metrics.py"
    known_labels = SCRAPE_LABELS.union(*(SERIES[name] for name in used)) if used else set()
    for name, matchers in SELECTOR.findall(expression):
        for label in re.findall(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)", matchers):
            assert label in SERIES[name] | SCRAPE_LABELS, f"{where}: {name} has no label {label}"
    for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expression):
        for label in filter(None, (part.strip() for part in group.split(","))):
            assert label in known_labels, f"{where}: `by ({label})` but {sorted(used)} lack it"
    assert expression.count("(") == expression.count(")"), f"{where}: unbalanced ()"
    assert expression.count("{") == expression.count("}"), f"{where}: unbalanced {{}}"
    return used


def dashboard_queries(node: Any, path: str = "") -> Iterator[tuple[str, str, str]]:
    """(where, expression, legend) for every query in the dashboard JSON."""
    if isinstance(node, dict):
        if isinstance(node.get("expr"), str):
            yield path, node["expr"], str(node.get("legendFormat", node.get("titleFormat", "")))
        if isinstance(node.get("definition"), str):
            yield path, node["definition"], ""
        for key, value in node.items():
            yield from dashboard_queries(value, f"{path}/{node.get('title', key)}")
    elif isinstance(node, list):
        for index, item in enumerate(node):
            yield from dashboard_queries(item, f"{path}[{index}]")


def test_dashboard_uses_only_exported_metrics_and_labels() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    used: set[str] = set()
    queries = list(dashboard_queries(dashboard))
    assert len(queries) > 20
    for where, expression, legend in queries:
        metrics = check_expression(expression, where)
        used |= metrics
        labels = SCRAPE_LABELS.union(*(SERIES[m] for m in metrics))
        for label in re.findall(r"\{\{\s*(\w+)\s*\}\}", legend):
            assert label in labels, f"{where}: legend shows {{{{{label}}}}}, not a label here"
    # The panels the operations guide promises (docs/operations.md).
    assert {
        "llmux_active_model",
        "llmux_switch_duration_seconds_bucket",
        "llmux_request_queue_depth",
        "llmux_model_in_flight",
        "llmux_hook_failures_total",
        "llmux_hook_timeouts_total",
        "llmux_requests_total",
    } <= used
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"


def test_alerts_load_and_use_only_exported_metrics() -> None:
    rules = yaml.safe_load(ALERTS.read_text())
    alerts = {rule["alert"]: rule for group in rules["groups"] for rule in group["rules"]}
    for name, rule in alerts.items():
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, name
        assert rule["labels"]["severity"] in ("info", "warning", "critical"), name
        assert rule["annotations"]["summary"], name
        check_expression(rule["expr"], name)
    assert "llmux_switch_total" in alerts["AiollmuxSwitchFailing"]["expr"]
    assert "llmux_request_queue_wait_seconds_bucket" in alerts["AiollmuxQueueWaitHigh"]["expr"]
    # No model_lost metric exists: the lost-model alert is derived from the alive hook.
    assert 'hook="alive"' in alerts["AiollmuxModelLost"]["expr"]


def test_promtool_accepts_the_rules_and_every_dashboard_query(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        # Not a skip: the metric and label checks above ran; say which check this was.
        print("check: promtool is not installed; PromQL syntax is checked by the tests above")
        assert yaml.safe_load(ALERTS.read_text())["groups"]
        return
    print("check: promtool check rules")
    dashboard = json.loads(DASHBOARD.read_text())
    recorded = [
        {"record": f"dashboard:query{index}", "expr": _as_plain_promql(expression)}
        for index, (_, expression, _) in enumerate(dashboard_queries(dashboard))
        if not expression.startswith("label_values(")
    ]
    queries = tmp_path / "dashboard-rules.yml"
    queries.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": recorded}]}))
    for rules in (ALERTS, queries):
        checked = subprocess.run(
            [promtool, "check", "rules", str(rules)], capture_output=True, text=True, timeout=60
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr


def _as_plain_promql(expression: str) -> str:
    """Grafana's variables replaced by what Grafana would put there."""
    return expression.replace("$__rate_interval", "5m").replace("$instance", ".*")
