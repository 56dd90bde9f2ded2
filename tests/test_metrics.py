"""Prometheus metrics: units on a fresh registry, then a server fed a known sequence of requests: in-process
for what serve counts, and a real server for what needs its flags (--metrics-triton-compat, --metrics-port)
or its process (process metrics, workers)."""

from __future__ import annotations

import asyncio
import json
import math
import time
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import pytest_asyncio
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from serve.demo import TABULAR_CONFIG, tabular_model
from serve.events import UNKNOWN_VERSION, BatchTimings, Execution, RequestEvent
from serve.metrics.prometheus import PrometheusMetrics, batch_size_buckets
from serve.metrics.triton_compat import HostCpuCollector
from serve.modelgen import to_bytes
from serve.protocol import grpc_service_pb2 as pb
from serve.protocol import grpc_service_pb2_grpc as pb_grpc
from serve.repository.repository import READY, UNAVAILABLE, UNLOADED, ModelVersion
from serve.settings import ServerSettings
from tests.fixtures.inprocess import in_process
from tests.fixtures.servers import free_port, start_server

LATENCY_BUCKETS = ServerSettings().latency_buckets_s
Key = tuple[str, frozenset[tuple[str, str]]]


def parse(text: str) -> dict[Key, float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: dict[Key, float], name: str, **labels: str) -> float:
    """The sample's value; a sample that is not exported fails the test, naming it."""
    key = (name, frozenset(labels.items()))
    assert key in samples, f"{name}{labels} is not exported"
    return samples[key]


def series(samples: dict[Key, float], name: str) -> list[dict[str, str]]:
    return [dict(labels) for (n, labels) in samples if n == name]


# ---- units: one fresh registry per test -------------------------------------------------------


def _ready_model(name: str = "m", version: int = 1, load_seconds: float = 0.25) -> ModelVersion:
    return ModelVersion(name, version, Path("."), state=READY, load_seconds=load_seconds)


def _request(model: ModelVersion | None, protocol: str, outcome: str, duration_ns: int, **kw: Any) -> RequestEvent:
    return RequestEvent(model.key if model is not None else UNKNOWN_VERSION, protocol, outcome, duration_ns, **kw)


def test_each_metrics_object_owns_its_registry() -> None:
    first, second = CollectorRegistry(), CollectorRegistry()
    PrometheusMetrics(first, process_metrics=False).on_request(_request(_ready_model(), "http", "success", 10**7))
    PrometheusMetrics(second, process_metrics=False)  # same names again: no clash, nothing shared
    labels = {"model": "m", "version": "1", "role": "", "protocol": "http", "outcome": "success"}
    assert first.get_sample_value("serve_requests_total", labels) == 1
    assert second.get_sample_value("serve_requests_total", labels) is None


def test_observations_update_counters_histograms_and_gauges() -> None:
    registry = CollectorRegistry()
    metrics = PrometheusMetrics(registry, latency_buckets_s=(0.001, 0.1), max_batch_size_bucket=8)
    model = _ready_model()
    metrics.changed(model)
    metrics.on_execution(Execution(model.key, 3, 2, 1_000_000, 2_000_000, 3_000_000))
    metrics.on_execution(Execution(model.key, 5, 1, 0, 1, 0, RuntimeError("failed batches are not counted")))
    timings = BatchTimings(50_000_000, 1_000_000, 2_000_000, 3_000_000, 3)
    metrics.on_request(_request(model, "grpc", "success", 500_000, timings=timings))
    m = {"model": "m", "version": "1"}
    get = registry.get_sample_value
    assert get("serve_executions_total", m) == 1
    assert get("serve_inference_rows_total", m) == 3
    assert get("serve_batch_size_bucket", {**m, "le": "2.0"}) == 0
    assert get("serve_batch_size_bucket", {**m, "le": "4.0"}) == 1
    assert get("serve_compute_duration_seconds_sum", m) == pytest.approx(0.006)
    assert get("serve_queue_duration_seconds_bucket", {**m, "role": "", "le": "0.1"}) == 1
    assert get("serve_queue_duration_seconds_bucket", {**m, "role": "", "le": "0.001"}) == 0
    request = {**m, "role": "", "protocol": "grpc", "outcome": "success"}
    assert get("serve_request_duration_seconds_bucket", {**request, "le": "0.001"}) == 1
    assert get("serve_model_ready", m) == 1
    assert get("serve_model_load_duration_seconds", m) == 0.25
    assert get("process_cpu_seconds_total") is not None


def test_queue_gauges_follow_the_probe_and_drop_to_zero_after_unload() -> None:
    registry = CollectorRegistry()
    metrics = PrometheusMetrics(registry, process_metrics=False)
    model = _ready_model()
    metrics.changed(model)
    serving = [(model.key, 4, 1)]
    metrics.queue_probe = lambda: serving
    metrics.refresh()
    m = {"model": "m", "version": "1"}
    assert registry.get_sample_value("serve_queue_depth", m) == 4
    assert registry.get_sample_value("serve_batches_in_flight", m) == 1
    model.state = UNAVAILABLE
    metrics.changed(model)
    serving.clear()
    metrics.refresh()
    assert registry.get_sample_value("serve_model_ready", m) == 0
    assert registry.get_sample_value("serve_queue_depth", m) == 0
    assert registry.get_sample_value("serve_batches_in_flight", m) == 0


def test_a_retired_version_loses_its_gauges_and_keeps_its_counters() -> None:
    registry = CollectorRegistry()
    metrics = PrometheusMetrics(registry, process_metrics=False, triton_compat=True)
    model = _ready_model()
    metrics.changed(model)
    metrics.on_request(_request(model, "http", "success", 10**6))
    model.state, model.reason = UNAVAILABLE, UNLOADED
    metrics.changed(model)
    samples = parse(metrics.exposition()[0].decode())
    for gauge in ("serve_model_ready", "serve_model_load_duration_seconds", "serve_queue_depth"):
        assert series(samples, gauge) == [], gauge
    assert series(samples, "nv_model_load_duration_secs") == []
    ok = {"model": "m", "version": "1", "role": "", "protocol": "http", "outcome": "success"}
    assert value(samples, "serve_requests_total", **ok) == 1


def test_a_request_observed_after_its_version_retired_brings_back_no_ready_series() -> None:
    registry = CollectorRegistry()
    metrics = PrometheusMetrics(registry, process_metrics=False)
    model = _ready_model()
    metrics.changed(model)
    model.state, model.reason = UNAVAILABLE, UNLOADED
    metrics.changed(model)
    metrics.on_request(_request(model, "grpc", "success", 10**6))  # answered as the version drained
    assert series(parse(metrics.exposition()[0].decode()), "serve_model_ready") == []


def test_a_version_that_failed_to_load_is_exported_not_ready() -> None:
    registry = CollectorRegistry()
    metrics = PrometheusMetrics(registry, process_metrics=False)
    failed = ModelVersion("m", 2, Path("."), state=UNAVAILABLE, reason="model.onnx is not a valid ONNX model")
    metrics.changed(failed)
    assert registry.get_sample_value("serve_model_ready", {"model": "m", "version": "2"}) == 0


def test_requests_for_unknown_models_share_one_empty_label_set() -> None:
    registry = CollectorRegistry()
    metrics = PrometheusMetrics(registry, process_metrics=False, triton_compat=True)
    for _ in ("a", "b", "c"):
        metrics.on_request(_request(None, "http", "unavailable", 10**6))
    samples = parse(metrics.exposition()[0].decode())
    unknown = {"model": "", "version": "", "role": "", "protocol": "http", "outcome": "unavailable"}
    assert value(samples, "serve_requests_total", **unknown) == 3
    assert {labels["model"] for labels in series(samples, "serve_requests_total")} == {""}
    assert series(samples, "nv_inference_request_success") == []  # Triton counts per model only


def test_triton_names_are_bare_and_failures_map_to_triton_reasons() -> None:
    registry = CollectorRegistry()
    metrics = PrometheusMetrics(registry, process_metrics=False, triton_compat=True)
    model = _ready_model()
    metrics.changed(model)
    for outcome in ("rejected", "timeout", "cancelled", "model_error", "invalid_input", "error"):
        metrics.on_request(_request(model, "http", outcome, 10**6))
    text = metrics.exposition()[0].decode()
    samples = parse(text)
    failures = {
        labels["reason"]: samples[("nv_inference_request_failure", frozenset(labels.items()))]
        for labels in series(samples, "nv_inference_request_failure")
    }
    assert failures == {"REJECTED": 2, "CANCELED": 1, "BACKEND": 1, "OTHER": 2}
    assert "nv_inference_request_failure_total" not in text
    assert "nv_inference_request_failure_created" not in text


def test_batch_size_buckets_double_up_to_the_maximum() -> None:
    assert batch_size_buckets(8) == (1, 2, 4, 8)
    assert batch_size_buckets(48) == (1, 2, 4, 8, 16, 32, 48)


def test_host_cpu_utilization_is_the_busy_share_between_scrapes(tmp_path: Path) -> None:
    (tmp_path / "meminfo").write_text("MemTotal: 1000 kB\nMemFree: 10 kB\nMemAvailable: 250 kB\n")
    (tmp_path / "stat").write_text("cpu  100 0 100 800 0 0 0 0 0 0\n")
    collector = HostCpuCollector(tmp_path)
    list(collector.collect())
    (tmp_path / "stat").write_text("cpu  175 0 100 825 0 0 0 0 0 0\n")  # 75 busy of 100 jiffies
    got = {s.name: s.value for family in collector.collect() for s in family.samples}
    assert got == {
        "nv_cpu_utilization": 0.75,
        "nv_cpu_memory_total_bytes": 1000 * 1024,
        "nv_cpu_memory_used_bytes": 750 * 1024,
    }


# ---- a real server fed a known sequence --------------------------------------------------------

# A request to "held" waits in the queue for a preferred batch of 4 rows that never comes (a minute
# of max_queue_delay), so it sits there until its own timeout: the queue is full (max_queue_size 1)
# for exactly as long as we need, without depending on how fast the model runs.
HELD_CONFIG = TABULAR_CONFIG.replace('name: "tabular"', 'name: "held"').replace(
    "max_queue_delay_microseconds: 0",
    "preferred_batch_size: [ 4 ]\n  max_queue_delay_microseconds: 60000000\n"
    "  default_queue_policy { max_queue_size: 1 }",
)
HELD_TIMEOUT_US = 1_500_000
HTTP_ROWS = (1, 2, 3)
GRPC_ROWS = (4, 1)


def _write_repository(root: Path) -> Path:
    onnx_bytes = to_bytes(tabular_model())
    for name, config in (("tabular", TABULAR_CONFIG), ("held", HELD_CONFIG)):
        (root / name / "1").mkdir(parents=True)
        (root / name / "config.pbtxt").write_text(config)
        (root / name / "1" / "model.onnx").write_bytes(onnx_bytes)
    return root


def _features(rows: int) -> np.ndarray:
    return np.arange(rows * 8, dtype=np.float32).reshape(rows, 8)


def _infer_body(rows: int, **extra: Any) -> dict[str, Any]:
    data = _features(rows)
    tensor = {"name": "features", "datatype": "FP32", "shape": [rows, 8], "data": data.ravel().tolist()}
    return {"inputs": [tensor], **extra}


def _grpc_request(rows: int) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="tabular")
    request.inputs.add(name="features", datatype="FP32", shape=[rows, 8])
    request.raw_input_contents.append(_features(rows).tobytes())
    return request


async def _post(http: httpx.AsyncClient, model: str, body: dict[str, Any]) -> int:
    return (await http.post(f"/v2/models/{model}/infer", content=json.dumps(body).encode())).status_code


async def _scrape(http: httpx.AsyncClient) -> dict[Key, float]:
    return parse((await http.get("/metrics")).text)


@dataclass
class Scenario:
    statuses: dict[str, int]
    during_hold: dict[Key, float]
    final: dict[Key, float]


async def _run_sequence(http: httpx.AsyncClient, grpc_stub: pb_grpc.GRPCInferenceServiceStub) -> Scenario:
    statuses: dict[str, int] = {}
    for rows in HTTP_ROWS:
        assert await _post(http, "tabular", _infer_body(rows)) == 200
    for rows in GRPC_ROWS:
        await grpc_stub.ModelInfer(_grpc_request(rows))
    # Well-formed on the wire, wrong for the model: the core rejects it, so it is counted.
    wrong_shape = {"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 7], "data": [0.0] * 7}]}
    statuses["invalid_input"] = await _post(http, "tabular", wrong_shape)
    statuses["unknown_output"] = await _post(http, "tabular", _infer_body(1, outputs=[{"name": "nope"}]))
    statuses["unknown_model"] = await _post(http, "no_such_model", _infer_body(1))

    timeout = {"parameters": {"timeout": HELD_TIMEOUT_US}}
    held = asyncio.ensure_future(_post(http, "held", _infer_body(1, **timeout)))
    deadline = time.monotonic() + 10
    while True:
        during_hold = await _scrape(http)
        if value(during_hold, "serve_queue_depth", model="held", version="1") == 1:
            break
        assert time.monotonic() < deadline and not held.done(), "the held request never queued"
        await asyncio.sleep(0.02)
    statuses["rejected"] = await _post(http, "held", _infer_body(1, **timeout))
    async with asyncio.timeout(30):
        statuses["timeout"] = await held
    return Scenario(statuses, during_hold, await _scrape(http))


# The sequence in-process: what serve counts (serve_*), on the server's own registry.
@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def scenario(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Scenario]:
    async with in_process(_write_repository(tmp_path_factory.mktemp("metrics") / "repo")) as server:
        yield await _run_sequence(server.http, server.grpc)


TAB = {"model": "tabular", "version": "1"}
HELD = {"model": "held", "version": "1"}


@pytest.mark.asyncio(loop_scope="module")
async def test_the_sequence_got_the_expected_statuses(scenario: Scenario) -> None:
    assert scenario.statuses == {
        "invalid_input": 400,
        "unknown_output": 400,
        "unknown_model": 404,
        "rejected": 429,
        "timeout": 504,
    }


@pytest.mark.asyncio(loop_scope="module")
async def test_requests_are_counted_by_protocol_and_outcome(scenario: Scenario) -> None:
    got = {
        (labels["model"], labels["protocol"], labels["outcome"]): scenario.final[
            ("serve_requests_total", frozenset(labels.items()))
        ]
        for labels in series(scenario.final, "serve_requests_total")
    }
    assert got == {
        ("tabular", "http", "success"): len(HTTP_ROWS),
        ("tabular", "grpc", "success"): len(GRPC_ROWS),
        ("tabular", "http", "invalid_input"): 2,
        ("", "http", "unavailable"): 1,
        ("held", "http", "rejected"): 1,
        ("held", "http", "timeout"): 1,
    }


@pytest.mark.asyncio(loop_scope="module")
async def test_rows_executions_and_batch_sizes_match_the_requests(scenario: Scenario) -> None:
    f = scenario.final
    rows = HTTP_ROWS + GRPC_ROWS
    assert value(f, "serve_inference_rows_total", **TAB) == sum(rows)
    assert value(f, "serve_executions_total", **TAB) == len(rows)
    assert value(f, "serve_executions_total", **HELD) == 0
    assert value(f, "serve_batch_size_sum", **TAB) == sum(rows)
    for le in batch_size_buckets(1024):
        assert value(f, "serve_batch_size_bucket", **TAB, le=str(float(le))) == sum(r <= le for r in rows)
    assert value(f, "serve_batch_size_bucket", **TAB, le="+Inf") == len(rows)


@pytest.mark.asyncio(loop_scope="module")
async def test_latency_histograms_count_what_ran(scenario: Scenario) -> None:
    f = scenario.final
    ran = len(HTTP_ROWS) + len(GRPC_ROWS)
    assert value(f, "serve_queue_duration_seconds_count", **TAB, role="") == ran
    assert value(f, "serve_compute_duration_seconds_count", **TAB) == ran
    assert value(f, "serve_queue_duration_seconds_count", **HELD, role="") == 0
    http_ok = {**TAB, "role": "", "protocol": "http", "outcome": "success"}
    assert value(f, "serve_request_duration_seconds_count", **http_ok) == len(HTTP_ROWS)
    timed_out = {**HELD, "role": "", "protocol": "http", "outcome": "timeout"}
    assert value(f, "serve_request_duration_seconds_sum", **timed_out) >= HELD_TIMEOUT_US / 1e6


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize(
    "name",
    [f"serve_{kind}_duration_seconds_bucket" for kind in ("request", "queue", "compute")],
)
async def test_latency_histograms_have_the_configured_buckets(scenario: Scenario, name: str) -> None:
    les = {float(labels["le"]) for labels in series(scenario.final, name) if labels["model"] == "tabular"}
    assert les == {*LATENCY_BUCKETS, math.inf}


@pytest.mark.asyncio(loop_scope="module")
async def test_queue_depth_shows_the_waiting_request_and_drops_after(scenario: Scenario) -> None:
    assert value(scenario.during_hold, "serve_queue_depth", **HELD) == 1
    assert value(scenario.during_hold, "serve_batches_in_flight", **HELD) == 0
    assert value(scenario.final, "serve_queue_depth", **HELD) == 0


@pytest.mark.asyncio(loop_scope="module")
async def test_model_state_and_load_time_are_exported(scenario: Scenario) -> None:
    for model in (TAB, HELD):
        assert value(scenario.final, "serve_model_ready", **model) == 1
        assert value(scenario.final, "serve_model_load_duration_seconds", **model) > 0


@pytest.mark.asyncio(loop_scope="module")
async def test_triton_names_appear_only_with_the_flag(scenario: Scenario) -> None:
    assert value(scenario.final, "serve_model_ready", model="tabular", version="1") == 1
    assert not [name for name, _ in scenario.final if name.startswith("nv_")]


# ---- the same sequence against a real server started with the metrics flags ---------------------


@dataclass
class FlaggedScenario(Scenario):
    metrics_port_final: dict[Key, float]  # what --metrics-port served at the end


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def flagged(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[FlaggedScenario]:
    tmp = tmp_path_factory.mktemp("metrics-flags")
    metrics_port = free_port()
    server = start_server(
        _write_repository(tmp / "repo"), tmp, "--metrics-triton-compat", "--metrics-port", str(metrics_port)
    )
    try:
        async with (
            httpx.AsyncClient(base_url=server.base, timeout=30) as http,
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{metrics_port}", timeout=30) as metrics_port_http,
            grpc.aio.insecure_channel(server.grpc_url) as channel,
        ):
            ran = await _run_sequence(http, pb_grpc.GRPCInferenceServiceStub(channel))
            yield FlaggedScenario(ran.statuses, ran.during_hold, ran.final, await _scrape(metrics_port_http))
    finally:
        server.stop()


@pytest.mark.asyncio(loop_scope="module")
async def test_process_metrics_are_exported(flagged: FlaggedScenario) -> None:
    assert value(flagged.final, "process_cpu_seconds_total") > 0
    assert series(flagged.final, "python_info")


@pytest.mark.asyncio(loop_scope="module")
async def test_triton_compat_counts_match_triton_semantics(flagged: FlaggedScenario) -> None:
    f = flagged.final
    rows = HTTP_ROWS + GRPC_ROWS
    assert value(flagged.during_hold, "nv_inference_pending_request_count", **HELD) == 1
    assert value(f, "nv_inference_request_success", **TAB) == len(rows)
    assert value(f, "nv_inference_count", **TAB) == sum(rows)
    assert value(f, "nv_inference_exec_count", **TAB) == len(rows)
    assert value(f, "nv_inference_request_failure", **TAB, reason="OTHER") == 2
    assert value(f, "nv_inference_request_failure", **HELD, reason="REJECTED") == 2
    assert value(f, "nv_inference_request_failure", **TAB, reason="BACKEND") == 0
    assert value(f, "nv_inference_pending_request_count", **HELD) == 0
    for name in ("request", "queue", "compute_input", "compute_infer", "compute_output"):
        assert value(f, f"nv_inference_{name}_duration_us", **HELD) == 0
    assert value(f, "nv_inference_compute_infer_duration_us", **TAB) > 0
    assert value(f, "nv_model_load_duration_secs", **TAB) > 0
    assert 0 <= value(f, "nv_cpu_utilization") <= 1


@pytest.mark.asyncio(loop_scope="module")
async def test_metrics_port_serves_the_same_metrics(flagged: FlaggedScenario) -> None:
    def ours(samples: dict[Key, float]) -> dict[Key, float]:
        return {k: v for k, v in samples.items() if k[0].startswith(("serve_", "nv_inference_", "nv_model_"))}

    assert ours(flagged.metrics_port_final) == ours(flagged.final)
    assert len(ours(flagged.final)) > 100


# ---- a rollout across worker processes ---------------------------------------------------------


def _scrape_url(url: str) -> dict[Key, float]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return parse(response.read().decode())


def _ready_series(url: str, model: str) -> dict[str, float]:
    """serve_model_ready of ``model`` by version, as the supervisor merges it from every worker."""
    return {
        dict(labels)["version"]: v
        for (name, labels), v in _scrape_url(url).items()
        if name == "serve_model_ready" and dict(labels)["model"] == model
    }


def _wait_for_ready_series(url: str, model: str, expected: dict[str, float], timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    seen = _ready_series(url, model)
    while seen != expected and time.monotonic() < deadline:
        time.sleep(0.2)
        seen = _ready_series(url, model)
    assert seen == expected


def test_a_rollout_across_workers_leaves_ready_series_only_for_versions_that_should_serve(tmp_path: Path) -> None:
    root = tmp_path / "models"
    onnx_bytes = to_bytes(tabular_model())
    (root / "tabular" / "1").mkdir(parents=True)
    (root / "tabular" / "1" / "model.onnx").write_bytes(onnx_bytes)
    args = (
        "--workers",
        "2",
        "--model-control-mode",
        "poll",
        "--repository-poll-secs",
        "0.2",
        "--model-load-check",
        "off",
    )
    server = start_server(root, tmp_path, *args)
    try:
        url = f"{server.base}/metrics"
        _wait_for_ready_series(url, "tabular", {"1": 1.0})
        (root / "tabular" / "2").mkdir()
        (root / "tabular" / "2" / "model.onnx").write_bytes(onnx_bytes)
        _wait_for_ready_series(url, "tabular", {"2": 1.0})  # version 1 retired on every worker: no series left
        (root / "tabular" / "3").mkdir()
        (root / "tabular" / "3" / "model.onnx").write_bytes(b"not an onnx model")
        _wait_for_ready_series(url, "tabular", {"2": 1.0, "3": 0.0})  # chosen, failed: the alert's case
    finally:
        server.stop()
