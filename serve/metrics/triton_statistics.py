"""Counters of Triton's statistics extension for one model version (GET .../stats, ModelStatistics).

Semantics follow Triton: ``inference_count`` counts rows, ``execution_count`` counts model
executions; per-request durations (success, fail, queue, compute_*) are counted once per
request, and each request is charged its whole batch's compute durations; ``batch_stats``
has one entry per executed batch size. Everything runs on the event loop thread.

Counts start afresh whenever a version is (re)loaded, as Triton's do.

Mirrored copies of a rollout's shadow (RequestEvent.role "shadow") are no client's requests: they
count in ``shadow_stats`` (their rows, outcomes and durations), never in the version's
``inference_count`` or ``inference_stats``. ``execution_count`` and ``batch_stats`` still describe
every execution of the model, as one batch may hold client requests and copies together. Only the
HTTP document carries ``shadow_stats``: Triton's gRPC ModelStatistics message has no field for it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, TypedDict

from serve.events import Execution, Observer, RequestEvent, VersionKey
from serve.repository.model_version import ModelVersion, VersionListener


class DurationDocument(TypedDict):
    count: int
    ns: int


class InferenceStatsDocument(TypedDict):
    success: DurationDocument
    fail: DurationDocument
    queue: DurationDocument
    compute_input: DurationDocument
    compute_infer: DurationDocument
    compute_output: DurationDocument
    cache_hit: DurationDocument
    cache_miss: DurationDocument


class BatchStatsDocument(TypedDict):
    batch_size: int
    compute_input: DurationDocument
    compute_infer: DurationDocument
    compute_output: DurationDocument


class ShadowStatsDocument(TypedDict):
    """A version's work as a rollout's shadow (serve extension; HTTP only)."""

    inference_count: int  # rows of the copies that succeeded
    success: DurationDocument
    fail: DurationDocument
    queue: DurationDocument
    compute_input: DurationDocument
    compute_infer: DurationDocument
    compute_output: DurationDocument


class ModelStatsDocument(TypedDict):
    """One model version's statistics, as Triton's statistics extension writes them in JSON."""

    name: str
    version: str
    last_inference: int  # ms since the epoch
    inference_count: int
    execution_count: int
    inference_stats: InferenceStatsDocument
    response_stats: dict[str, DurationDocument]  # always empty: no decoupled models
    batch_stats: list[BatchStatsDocument]
    memory_usage: list[dict[str, str]]  # always empty
    shadow_stats: ShadowStatsDocument


@dataclass(slots=True)
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int) -> None:
        self.count += 1
        self.ns += max(0, ns)

    def as_dict(self) -> DurationDocument:
        return {"count": self.count, "ns": self.ns}


@dataclass(slots=True)
class BatchSizeStats:
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


@dataclass(slots=True)
class RequestDurations:
    """Per-request durations of one kind of request (a client's, or a shadow's copy)."""

    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    rows: int = 0  # of the requests that succeeded, where the event says (RequestEvent.rows)

    def add(self, event: RequestEvent) -> None:
        timings = event.timings
        if event.outcome != "success" or timings is None:
            self.fail.add(event.duration_ns)
            return
        self.success.add(event.duration_ns)
        self.queue.add(timings.queue_ns)
        self.compute_input.add(timings.compute_input_ns)
        self.compute_infer.add(timings.compute_infer_ns)
        self.compute_output.add(timings.compute_output_ns)
        self.rows += event.rows


class InferenceStatistics:
    def __init__(self) -> None:
        self.client = RequestDurations()
        self.shadow = RequestDurations()
        self.executed_rows = 0  # every successful execution's, copies of a shadow included
        self.execution_count = 0
        self.last_inference_ms = 0
        self.batch_stats: dict[int, BatchSizeStats] = {}

    def add_execution(self, execution: Execution) -> None:
        if execution.error is not None:
            return
        self.execution_count += 1
        self.executed_rows += execution.rows
        self.last_inference_ms = int(time.time() * 1000)
        stats = self.batch_stats.get(execution.rows)
        if stats is None:
            stats = self.batch_stats[execution.rows] = BatchSizeStats()
        stats.compute_input.add(execution.compute_input_ns)
        stats.compute_infer.add(execution.compute_infer_ns)
        stats.compute_output.add(execution.compute_output_ns)

    def add_request(self, event: RequestEvent) -> None:
        (self.shadow if event.role == "shadow" else self.client).add(event)

    @property
    def inference_count(self) -> int:
        """Rows the clients' requests ran: every execution's rows but the shadow copies' (each copy that
        succeeded ran in an execution that succeeded, and is told after it)."""
        return max(0, self.executed_rows - self.shadow.rows)

    def as_dict(self, name: str, version: str) -> ModelStatsDocument:
        empty = Duration().as_dict()
        client, shadow = self.client, self.shadow
        return {
            "name": name,
            "version": version,
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": {
                "success": client.success.as_dict(),
                "fail": client.fail.as_dict(),
                "queue": client.queue.as_dict(),
                "compute_input": client.compute_input.as_dict(),
                "compute_infer": client.compute_infer.as_dict(),
                "compute_output": client.compute_output.as_dict(),
                "cache_hit": empty,
                "cache_miss": Duration().as_dict(),
            },
            "response_stats": {},
            "batch_stats": [
                {
                    "batch_size": size,
                    "compute_input": s.compute_input.as_dict(),
                    "compute_infer": s.compute_infer.as_dict(),
                    "compute_output": s.compute_output.as_dict(),
                }
                for size, s in sorted(self.batch_stats.items())
            ],
            "memory_usage": [],
            "shadow_stats": {
                "inference_count": shadow.rows,
                "success": shadow.success.as_dict(),
                "fail": shadow.fail.as_dict(),
                "queue": shadow.queue.as_dict(),
                "compute_input": shadow.compute_input.as_dict(),
                "compute_infer": shadow.compute_infer.as_dict(),
                "compute_output": shadow.compute_output.as_dict(),
            },
        }


class TritonStatistics(Observer, VersionListener):
    """The statistics extension's counters of every loaded version."""

    def __init__(self) -> None:
        self._by_key: dict[VersionKey, InferenceStatistics] = {}

    def attached(self, version: ModelVersion) -> None:
        self._by_key[version.key] = InferenceStatistics()

    async def detached(self, version: ModelVersion) -> None:
        self._by_key.pop(version.key, None)

    def on_request(self, event: RequestEvent) -> None:
        stats = self._by_key.get(event.key)
        if stats is not None:
            stats.add_request(event)

    def on_execution(self, execution: Execution) -> None:
        stats = self._by_key.get(execution.key)
        if stats is not None:
            stats.add_execution(execution)

    def as_dict(self, version: ModelVersion) -> dict[str, Any]:
        # Untyped only because the core's statistics path (core/service.py) still takes an untyped dict;
        # once it takes ModelStatsDocument this returns the document itself.
        stats = self._by_key.get(version.key) or InferenceStatistics()
        return dict(stats.as_dict(version.name, version.version_str))


def sum_statistics(per_worker: Iterable[list[ModelStatsDocument]]) -> list[ModelStatsDocument]:
    """Several workers' statistics documents as one: every count and duration summed per model
    version and per batch size, ``last_inference`` the latest."""
    merged: dict[tuple[str, str], ModelStatsDocument] = {}
    for entries in per_worker:
        for entry in entries:
            key = (entry["name"], entry["version"])
            held = merged.get(key)
            merged[key] = entry if held is None else _add_entries(held, entry)
    return [merged[key] for key in sorted(merged)]


def _add_durations(a: DurationDocument, b: DurationDocument) -> DurationDocument:
    return {"count": a["count"] + b["count"], "ns": a["ns"] + b["ns"]}


def _add_inference_stats(a: InferenceStatsDocument, b: InferenceStatsDocument) -> InferenceStatsDocument:
    return {
        "success": _add_durations(a["success"], b["success"]),
        "fail": _add_durations(a["fail"], b["fail"]),
        "queue": _add_durations(a["queue"], b["queue"]),
        "compute_input": _add_durations(a["compute_input"], b["compute_input"]),
        "compute_infer": _add_durations(a["compute_infer"], b["compute_infer"]),
        "compute_output": _add_durations(a["compute_output"], b["compute_output"]),
        "cache_hit": _add_durations(a["cache_hit"], b["cache_hit"]),
        "cache_miss": _add_durations(a["cache_miss"], b["cache_miss"]),
    }


def _add_batch_stats(a: BatchStatsDocument, b: BatchStatsDocument) -> BatchStatsDocument:
    return {
        "batch_size": b["batch_size"],
        "compute_input": _add_durations(a["compute_input"], b["compute_input"]),
        "compute_infer": _add_durations(a["compute_infer"], b["compute_infer"]),
        "compute_output": _add_durations(a["compute_output"], b["compute_output"]),
    }


def _add_shadow_stats(a: ShadowStatsDocument, b: ShadowStatsDocument) -> ShadowStatsDocument:
    return {
        "inference_count": a["inference_count"] + b["inference_count"],
        "success": _add_durations(a["success"], b["success"]),
        "fail": _add_durations(a["fail"], b["fail"]),
        "queue": _add_durations(a["queue"], b["queue"]),
        "compute_input": _add_durations(a["compute_input"], b["compute_input"]),
        "compute_infer": _add_durations(a["compute_infer"], b["compute_infer"]),
        "compute_output": _add_durations(a["compute_output"], b["compute_output"]),
    }


def _add_entries(a: ModelStatsDocument, b: ModelStatsDocument) -> ModelStatsDocument:
    batches = {s["batch_size"]: s for s in a["batch_stats"]}
    for s in b["batch_stats"]:
        held = batches.get(s["batch_size"])
        batches[s["batch_size"]] = s if held is None else _add_batch_stats(held, s)
    return {
        **a,
        "last_inference": max(a["last_inference"], b["last_inference"]),
        "inference_count": a["inference_count"] + b["inference_count"],
        "execution_count": a["execution_count"] + b["execution_count"],
        "inference_stats": _add_inference_stats(a["inference_stats"], b["inference_stats"]),
        "batch_stats": [batches[size] for size in sorted(batches)],
        "shadow_stats": _add_shadow_stats(a["shadow_stats"], b["shadow_stats"]),
    }
