"""deploy/grafana and deploy/prometheus: the dashboard loads into Grafana's published dashboard model, and every
PromQL expression in it and in the alert rules (parsed, not grepped) names only metrics that a live server's
/metrics or the drift monitor's /metrics export."""

from __future__ import annotations

import asyncio
import enum
import json
import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import promql_parser
import pytest
import tritonclient.grpc as grpcclient
from prometheus_client.parser import text_string_to_metric_families

from serve.monitor.app import create_monitor_app
from tests.fixtures.clients import post_json
from tests.fixtures.local_servers import serving_in_thread
from tests.fixtures.manifests import DEPLOY, documents, dropped
from tests.fixtures.monitoring import AppServer, monitor_with_history

DASHBOARD_PATH = DEPLOY / "grafana" / "serve.json"
DASHBOARD: dict[str, Any] = json.loads(DASHBOARD_PATH.read_text())
(RULES,) = documents(DEPLOY / "prometheus" / "alerts.yaml")
PANELS = [p for p in DASHBOARD["panels"] if p["type"] != "row"]


def _exported_names(text: str) -> set[str]:
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
        # a family without samples yet (a histogram before its first request) still promises its series
        names.update(f"{family.name}{suffix}" for suffix in _SUFFIXES.get(family.type, ()))
    return names


_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}


def _scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as response:
        return str(response.read().decode())


@pytest.fixture(scope="module")
def exported(demo_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[set[str]]:
    names: set[str] = set()
    with serving_in_thread(demo_repository, tmp_path_factory.mktemp("dashboard-server")) as server:
        row = {"name": "features", "shape": [1, 8], "datatype": "FP32", "data": [0.5] * 8}
        assert post_json(server.http_port, "/v2/models/tabular/infer", {"inputs": [row]}).status == 200
        bad = {**row, "shape": [1, 7], "data": [0.5] * 7}
        assert post_json(server.http_port, "/v2/models/tabular/infer", {"inputs": [bad]}).status == 400
        with grpcclient.InferenceServerClient(server.grpc_url) as client:
            features = grpcclient.InferInput("features", [2, 8], "FP32")
            features.set_data_from_numpy(np.ones((2, 8), dtype=np.float32))
            client.infer("tabular", [features])
        names |= _exported_names(_scrape(server.base + "/metrics"))
    monitor, replica = asyncio.run(monitor_with_history(tmp_path_factory.mktemp("dashboard-monitor")))
    replica.close()
    app = AppServer(create_monitor_app(monitor))
    try:
        names |= _exported_names(_scrape(app.url + "/metrics"))
    finally:
        app.close()
        monitor.close()
    yield names


# ---------------------------------------------------------------- PromQL


def _as_promql(expr: str) -> str:
    """Grafana's template variables replaced by values PromQL accepts, so that the parser sees a real query."""
    expr = re.sub(r"\$__(rate_interval|interval|range)\b", "5m", expr)
    return re.sub(r"\$\{?\w+\}?", "x", expr)


def metric_names(expr: str) -> set[str]:
    names: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            by_matcher = [m.value for m in node.matchers.matchers if m.name == "__name__"]
            names.update([node.name] if node.name else by_matcher)

    promql_parser.walk(promql_parser.parse(_as_promql(expr)), visit)
    return names


def _dashboard_queries() -> Iterator[tuple[str, str]]:
    for panel in PANELS:
        for target in panel["targets"]:
            yield f"{panel['title']} / {target['refId']}", target["expr"]
    for variable in DASHBOARD["templating"]["list"]:
        if variable["type"] == "query":  # label_values(<selector>, <label>), Grafana's, around a selector
            match = re.fullmatch(r"label_values\((.+),\s*\w+\)", variable["query"]["query"])
            assert match, variable["query"]
            yield f"variable {variable['name']}", match.group(1)


def _rules() -> Iterator[dict[str, Any]]:
    for group in RULES["groups"]:
        yield from group["rules"]


def test_promql_metric_names_come_from_the_parsed_query() -> None:
    expr = 'sum by (le) (rate(a_bucket{model=~"$model"}[$__rate_interval])) / on (le) b and {__name__="c"}'
    assert metric_names(expr) == {"a_bucket", "b", "c"}


@pytest.mark.parametrize("query", list(_dashboard_queries()), ids=lambda q: q[0])
def test_dashboard_query_uses_only_exported_metrics(query: tuple[str, str], exported: set[str]) -> None:
    names = metric_names(query[1])
    assert names, "a query without a metric"
    assert names <= exported, f"not exported: {sorted(names - exported)}"


@pytest.mark.parametrize("rule", list(_rules()), ids=lambda r: r["alert"])
def test_alert_rule_uses_only_exported_metrics(rule: dict[str, Any], exported: set[str]) -> None:
    names = metric_names(rule["expr"])
    assert names and names <= exported, f"not exported: {sorted(names - exported)}"


# ---------------------------------------------------------------- the dashboard as Grafana's model


def _grafana_round_trip(data: dict[str, Any]) -> dict[str, Any]:
    from grafana_foundation_sdk.cog import runtime
    from grafana_foundation_sdk.models import heatmap, prometheus, stat, table, timeseries
    from grafana_foundation_sdk.models.dashboard import Dashboard

    # Typed targets and panel options instead of the SDK's untyped fallback, so their fields are checked too.
    runtime.register_dataquery_variant(prometheus.variant_config())
    for panel_type in (heatmap, stat, table, timeseries):
        runtime.register_panelcfg_variant(panel_type.variant_config())

    def encode(value: Any) -> Any:
        if isinstance(value, enum.Enum):
            return value.value
        return value.to_json()

    return dict(json.loads(json.dumps(Dashboard.from_json(data).to_json(), default=encode)))


def test_dashboard_loads_into_grafanas_dashboard_model_without_losing_a_field() -> None:
    assert dropped(DASHBOARD, _grafana_round_trip(DASHBOARD)) == []


def test_dashboard_model_check_refuses_an_unknown_field() -> None:
    panel = {**PANELS[0], "fieldConfg": {}}
    typo = {**DASHBOARD, "panels": [panel]}
    assert dropped(typo, _grafana_round_trip(typo)) == [".panels[0].fieldConfg: unknown field"]


def test_dashboard_declares_a_schema_version_and_unique_panel_ids() -> None:
    assert DASHBOARD["schemaVersion"] >= 36
    ids = [p["id"] for p in DASHBOARD["panels"]]
    assert len(ids) == len(set(ids))


def test_every_panel_and_query_reads_the_selected_prometheus_datasource() -> None:
    (variable,) = [v for v in DASHBOARD["templating"]["list"] if v["type"] == "datasource"]
    assert variable["query"] == "prometheus"
    selected = {"type": "prometheus", "uid": f"${{{variable['name']}}}"}
    for panel in PANELS:
        assert panel["datasource"] == selected, panel["title"]
        assert all(t["datasource"] == selected for t in panel["targets"]), panel["title"]


def test_dashboard_covers_traffic_errors_latency_batching_queue_drift_and_baselines() -> None:
    used = set().union(*(metric_names(t["expr"]) for p in PANELS for t in p["targets"]))
    assert {
        "serve_requests_total",
        "serve_request_duration_seconds_bucket",
        "serve_queue_duration_seconds_bucket",
        "serve_compute_duration_seconds_bucket",
        "serve_batch_size_bucket",
        "serve_queue_depth",
        "serve_drift_score",
        "serve_baseline_info",
    } <= used


# ---------------------------------------------------------------- the rule file


def test_alert_rules_file_has_prometheus_rule_file_structure() -> None:
    assert set(RULES) == {"groups"}
    names = [g["name"] for g in RULES["groups"]]
    assert len(names) == len(set(names))
    for group in RULES["groups"]:
        assert set(group) <= {"name", "interval", "rules"}
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "expr", "for", "keep_firing_for", "labels", "annotations"}, rule
            assert rule["labels"]["severity"] in {"warning", "critical"}
            assert rule["annotations"]["summary"]
            assert re.fullmatch(r"\d+[smhd]", rule.get("for", "0s"))


def test_alert_names_are_unique() -> None:
    alerts = [r["alert"] for r in _rules()]
    assert len(alerts) == len(set(alerts))
