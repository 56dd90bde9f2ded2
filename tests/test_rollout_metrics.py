"""Per-arm metrics: the role label on the request and queue series keeps shadow traffic out of the
client-facing series, and the serve_rollout_* gauges show each rollout's phase, weights, verdict and
gates beside their thresholds."""

from __future__ import annotations

import math
from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from serve.events import BatchTimings, RequestEvent
from serve.metrics.prometheus import PrometheusMetrics
from serve.metrics.rollout_gauges import RolloutGauges
from serve.monitor.slo import parse_metrics
from serve.repository.repository import READY, ModelVersion
from serve.rollout.gates import GateResult

TIMINGS = BatchTimings(1_000_000, 0, 0, 0, 1)


def _metrics(triton_compat: bool = False) -> tuple[CollectorRegistry, PrometheusMetrics]:
    registry = CollectorRegistry()
    metrics = PrometheusMetrics(registry, process_metrics=False, triton_compat=triton_compat)
    for version in (1, 2):
        metrics.changed(ModelVersion("m", version, Path("."), state=READY))
    return registry, metrics


def _request(version: int, role: str, outcome: str = "success") -> RequestEvent:
    model = ModelVersion("m", version, Path("."), state=READY)
    return RequestEvent(model.key, "http", outcome, 2_000_000, TIMINGS, role=role)


def _requests(registry: CollectorRegistry, version: int, role: str) -> float | None:
    labels = {"model": "m", "version": str(version), "role": role, "protocol": "http", "outcome": "success"}
    return registry.get_sample_value("serve_requests_total", labels)


def test_requests_are_counted_per_role() -> None:
    registry, metrics = _metrics()
    for version, role in ((1, "primary"), (1, "primary"), (2, "candidate"), (1, "")):
        metrics.on_request(_request(version, role))
    assert (_requests(registry, 1, "primary"), _requests(registry, 2, "candidate"), _requests(registry, 1, "")) == (
        2,
        1,
        1,
    )


def test_shadow_requests_appear_only_in_series_with_role_shadow() -> None:
    registry, metrics = _metrics()
    metrics.on_request(_request(2, "shadow"))
    metrics.on_request(_request(2, "shadow", "model_error"))
    for family in registry.collect():
        if family.name in ("serve_requests", "serve_request_duration_seconds", "serve_queue_duration_seconds"):
            assert {s.labels["role"] for s in family.samples} == {"shadow"}, family.name
    assert _requests(registry, 2, "shadow") == 1


def test_queue_duration_is_labelled_by_role() -> None:
    registry, metrics = _metrics()
    metrics.on_request(_request(2, "candidate"))
    labels = {"model": "m", "version": "2", "role": "candidate"}
    assert registry.get_sample_value("serve_queue_duration_seconds_count", labels) == 1


def test_shadow_requests_are_not_counted_by_tritons_client_facing_counters() -> None:
    registry, metrics = _metrics(triton_compat=True)
    metrics.on_request(_request(2, "shadow"))
    metrics.on_request(_request(2, "shadow", "model_error"))
    metrics.on_request(_request(2, "candidate"))
    samples = {
        (s.name, s.labels.get("reason", "")): s.value
        for family in text_string_to_metric_families(metrics.exposition()[0].decode())
        for s in family.samples
        if s.labels.get("version") == "2"
    }
    assert samples[("nv_inference_request_success", "")] == 1
    assert samples[("nv_inference_request_failure", "BACKEND")] == 0


# ---- the serve_rollout_* gauges ----------------------------------------------------------------


def _gauges() -> tuple[CollectorRegistry, RolloutGauges]:
    registry = CollectorRegistry()
    return registry, RolloutGauges(registry)


def test_the_plan_phase_is_one_hot() -> None:
    registry, gauges = _gauges()
    gauges.show_plan("m", "rolled_back", [("1", "primary", 100.0)])
    phases = {
        p: registry.get_sample_value("serve_rollout_phase", {"model": "m", "phase": p})
        for p in ("running", "rolled_back")
    }
    assert phases == {"running": 0, "rolled_back": 1}


def test_weights_are_exported_per_version_and_role_and_drop_to_zero_when_gone() -> None:
    registry, gauges = _gauges()
    gauges.show_plan("m", "running", [("1", "primary", 90.0), ("2", "candidate", 10.0), ("3", "shadow", 100.0)])
    gauges.show_plan("m", "rolled_back", [("1", "primary", 100.0)])

    def weight(version: str, role: str) -> float | None:
        return registry.get_sample_value("serve_rollout_weight", {"model": "m", "version": version, "role": role})

    assert (weight("1", "primary"), weight("2", "candidate"), weight("3", "shadow")) == (100, 0, 0)


def test_an_evaluation_exports_state_and_each_gates_value_threshold_and_samples() -> None:
    registry, gauges = _gauges()
    gates = [
        GateResult("error_rate", 0.19, 0.02, 2000, 400, "failing"),
        GateResult("p99_ratio", None, 1.5, 0, 0, "inconclusive"),
    ]
    gauges.show_evaluation("m", "failing", gates)
    get = registry.get_sample_value
    assert get("serve_rollout_state", {"model": "m"}) == 2
    assert get("serve_rollout_gate_value", {"model": "m", "gate": "error_rate"}) == 0.19
    assert get("serve_rollout_gate_threshold", {"model": "m", "gate": "error_rate"}) == 0.02
    assert get("serve_rollout_gate_samples", {"model": "m", "gate": "error_rate", "arm": "primary"}) == 2000
    assert get("serve_rollout_gate_samples", {"model": "m", "gate": "error_rate", "arm": "candidate"}) == 400
    assert math.isnan(get("serve_rollout_gate_value", {"model": "m", "gate": "p99_ratio"}) or 0.0)


def test_a_gate_switched_off_since_reads_nan() -> None:
    registry, gauges = _gauges()
    gauges.show_evaluation("m", "healthy", [GateResult("p99_ratio", 1.1, 1.5, 500, 500, "healthy")])
    gauges.show_evaluation("m", "healthy", [])
    assert math.isnan(registry.get_sample_value("serve_rollout_gate_value", {"model": "m", "gate": "p99_ratio"}) or 0.0)


def test_a_model_without_a_rollout_any_more_has_no_phase_weight_or_state() -> None:
    registry, gauges = _gauges()
    gauges.show_plan("m", "running", [("1", "primary", 90.0), ("2", "candidate", 10.0)])
    gauges.show_evaluation("m", "healthy", [])
    gauges.forget("m")
    get = registry.get_sample_value
    assert get("serve_rollout_phase", {"model": "m", "phase": "running"}) == 0
    assert get("serve_rollout_weight", {"model": "m", "version": "2", "role": "candidate"}) == 0
    assert math.isnan(get("serve_rollout_state", {"model": "m"}) or 0.0)


def test_rollout_gauges_merge_over_workers_as_the_deciding_workers_latest_value() -> None:
    _, gauges = _gauges()
    for gauge in (
        gauges.state,
        gauges.phase,
        gauges.weight,
        gauges.gate_value,
        gauges.gate_threshold,
        gauges.gate_samples,
    ):
        assert gauge._multiprocess_mode == "livemostrecent"


def test_every_server_declares_the_rollout_gauges() -> None:
    registry, _ = _metrics()
    names = {family.name for family in registry.collect()}
    assert {"serve_rollout_state", "serve_rollout_weight", "serve_rollout_gate_value"} <= names


def test_the_monitors_slo_leaves_shadow_requests_out() -> None:
    _, metrics = _metrics()
    metrics.on_request(_request(1, "primary"))
    metrics.on_request(_request(1, "shadow", "model_error"))
    counters = parse_metrics(metrics.exposition()[0].decode())[("m", "1")]
    assert (counters.requests, counters.errors) == (1, 0)
