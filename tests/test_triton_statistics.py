"""Triton's statistics extension keeps a rollout's shadow copies apart (serve/metrics/triton_statistics.py)."""

from __future__ import annotations

from pathlib import Path

from serve.events import BatchTimings, Execution, RequestEvent
from serve.metrics.triton_statistics import ModelStatsDocument, TritonStatistics, sum_statistics
from serve.repository.model_version import ModelVersion

TIMINGS = BatchTimings(queue_ns=10, compute_input_ns=1, compute_infer_ns=100, compute_output_ns=2, batch_size=10)


def _loaded() -> tuple[TritonStatistics, ModelVersion]:
    statistics = TritonStatistics()
    version = ModelVersion("m", 2, Path("."))
    statistics.attached(version)
    return statistics, version


def _document(statistics: TritonStatistics, version: ModelVersion) -> ModelStatsDocument:
    return statistics.as_dict(version)  # type: ignore[return-value]


def _batch_of_a_client_request_and_a_copy(statistics: TritonStatistics, version: ModelVersion) -> None:
    statistics.on_execution(Execution(version.key, rows=10, requests=2, compute_input_ns=1, compute_infer_ns=100,
                                      compute_output_ns=2))  # fmt: skip
    statistics.on_request(RequestEvent(version.key, "http", "success", 500, TIMINGS))
    statistics.on_request(RequestEvent(version.key, "http", "success", 700, TIMINGS, role="shadow", rows=6))


def test_shadow_rows_are_left_out_of_the_client_inference_count() -> None:
    statistics, version = _loaded()
    _batch_of_a_client_request_and_a_copy(statistics, version)
    document = _document(statistics, version)
    assert document["inference_count"] == 4
    assert document["shadow_stats"]["inference_count"] == 6
    assert document["execution_count"] == 1  # the model ran once, for both


def test_shadow_requests_are_counted_apart_from_the_client_requests() -> None:
    statistics, version = _loaded()
    _batch_of_a_client_request_and_a_copy(statistics, version)
    document = _document(statistics, version)
    assert document["inference_stats"]["success"] == {"count": 1, "ns": 500}
    assert document["shadow_stats"]["success"] == {"count": 1, "ns": 700}
    assert document["shadow_stats"]["queue"] == {"count": 1, "ns": 10}


def test_a_failed_shadow_copy_is_not_a_client_failure() -> None:
    statistics, version = _loaded()
    statistics.on_request(RequestEvent(version.key, "grpc", "model_error", 300, role="shadow", rows=3))
    document = _document(statistics, version)
    assert document["inference_stats"]["fail"] == {"count": 0, "ns": 0}
    assert document["shadow_stats"]["fail"] == {"count": 1, "ns": 300}
    assert document["shadow_stats"]["inference_count"] == 0


def test_shadow_statistics_are_summed_over_workers() -> None:
    statistics, version = _loaded()
    _batch_of_a_client_request_and_a_copy(statistics, version)
    one = _document(statistics, version)
    (merged,) = sum_statistics([[one], [one]])
    assert merged["inference_count"] == 8
    assert merged["shadow_stats"]["inference_count"] == 12
    assert merged["shadow_stats"]["success"] == {"count": 2, "ns": 1400}
