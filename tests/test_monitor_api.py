"""The monitor's own port: /metrics (MONITOR.md §4.5 gauges, bounded labels), /api/models, /api/drift, the report."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from serve.monitor.app import create_monitor_app
from tests.fixtures.monitoring import MODEL, AppServer, monitor_with_history


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, str]]:
    import asyncio

    monitor, replica = asyncio.run(monitor_with_history(tmp_path_factory.mktemp("api")))
    replica.close()
    server = AppServer(create_monitor_app(monitor))
    yield monitor, server.url
    server.close()
    monitor.close()


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_metrics_export_drift_gauges_with_bounded_labels(served: tuple[Any, str]) -> None:
    _, url = served
    status, body = _get(url + "/metrics")
    assert status == 200
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    for name in (
        "serve_drift_score",
        "serve_drift_threshold",
        "serve_drift_detected",
        "serve_drift_window_samples",
        "serve_drifted_inputs_ratio",
        "serve_input_missing_ratio",
        "serve_input_unseen_category_ratio",
        "serve_input_out_of_range_ratio",
        "serve_drift_last_evaluation_timestamp_seconds",
        "serve_baseline_info",
    ):
        assert name in families, name
    allowed = {"model", "version", "input", "role", "method", "verdict", "baseline_id", "status", "server", "outcome"}
    for family in families.values():
        for sample in family.samples:
            assert set(sample.labels) <= allowed, (family.name, sample.labels)
            assert ":" not in sample.name
    age_psi = [
        s for s in families["serve_drift_score"].samples if s.labels["input"] == "age" and s.labels["method"] == "psi"
    ]
    assert age_psi and age_psi[0].labels["role"] == "input" and age_psi[0].value > 0.25


def test_api_models_lists_each_model_version_with_its_state(served: tuple[Any, str]) -> None:
    _, url = served
    status, body = _get(url + "/api/models")
    assert status == 200
    (model,) = json.loads(body)["models"]
    assert (model["model"], model["version"], model["baseline"]["status"]) == (MODEL, "1", "ok")
    assert "age" in model["drifted_features"] and "country" in model["drifted_features"]


def test_api_drift_gives_measures_and_history_per_feature(served: tuple[Any, str]) -> None:
    _, url = served
    status, body = _get(url + f"/api/drift?model={MODEL}&history=3600")
    assert status == 200
    features = {f["name"]: f for f in json.loads(body)["features"]}
    assert features["country"]["measures"]["unseen"]["drifted"] is True
    assert features["age"]["state"] == "drifted"
    assert len(features["age"]["history"]["psi"]) == 8


def test_api_drift_without_a_model_is_a_400_and_an_unknown_model_a_404(served: tuple[Any, str]) -> None:
    _, url = served
    assert _get(url + "/api/drift")[0] == 400
    assert _get(url + "/api/drift?model=nope")[0] == 404


def test_report_page_embeds_one_plot_per_feature(served: tuple[Any, str]) -> None:
    monitor, url = served
    status, body = _get(url + "/")
    page = body.decode()
    assert status == 200
    features = monitor.latest[(MODEL, "1")].features
    assert page.count('<img src="data:image/png;base64,') == len(features)
    assert page.index(">age</a>") < page.index(">score</a>")  # sorted by drift: the shifted feature first


def test_metrics_give_each_feature_one_verdict_of_three_and_the_rows_it_needs(served: tuple[Any, str]) -> None:
    _, url = served
    families = {f.name: f for f in text_string_to_metric_families(_get(url + "/metrics")[1].decode())}
    verdicts: dict[str, dict[str, float]] = {}
    for s in families["serve_drift_verdict"].samples:
        verdicts.setdefault(s.labels["input"], {})[s.labels["verdict"]] = s.value
    assert verdicts and all(set(v) == {"drifted", "stable", "undecided"} for v in verdicts.values())
    assert all(sum(v.values()) == 1.0 for v in verdicts.values())
    assert verdicts["age"]["drifted"] == 1.0
    needed = {s.labels["input"]: s.value for s in families["serve_drift_rows_needed"].samples}
    assert set(needed) == set(verdicts) and needed["age"] == 0.0
    ceilings = [s for s in families["serve_drift_noise_ceiling"].samples if s.labels["input"] == "age"]
    assert {s.labels["method"] for s in ceilings} >= {"psi", "js", "ks", "wasserstein"}
    assert families["serve_drift_detectable_shift"].samples


def test_api_drift_and_the_report_show_verdicts_noise_and_detectable_shifts(served: tuple[Any, str]) -> None:
    _, url = served
    features = {f["name"]: f for f in json.loads(_get(url + f"/api/drift?model={MODEL}")[1])["features"]}
    age = features["age"]
    assert age["verdict"] == "drifted" and age["rows_needed"] is None
    assert {"typical", "ceiling", "level", "source"} <= set(age["measures"]["ks"]["noise"])
    assert age["measures"]["ks"]["noise"]["source"] == "calibrated"
    assert features["score"]["verdict"] in ("stable", "undecided")
    page = _get(url + "/")[1].decode()
    assert "detectable at this window" in page and "σ in mean" in page
    assert ">drifted<" in page and (">stable<" in page or ">undecided<" in page)
