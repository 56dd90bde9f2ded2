"""Counters of Triton's statistics extension for one model version (GET .../stats, ModelStatistics).

Semantics follow Triton: ``inference_count`` counts rows, ``execution_count`` counts model
executions; per-request durations (success, fail, queue, compute_*) are counted once per
request, and each request is charged its whole batch's compute durations; ``batch_stats``
has one entry per executed batch size. Everything runs on the event loop thread.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int) -> None:
        self.count += 1
        self.ns += max(0, ns)

    def as_dict(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass(slots=True)
class BatchSizeStats:
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


class InferenceStatistics:
    def __init__(self) -> None:
        self.success = Duration()
        self.fail = Duration()
        self.queue = Duration()
        self.compute_input = Duration()
        self.compute_infer = Duration()
        self.compute_output = Duration()
        self.inference_count = 0
        self.execution_count = 0
        self.last_inference_ms = 0
        self.batch_stats: dict[int, BatchSizeStats] = {}

    # BatchObserver
    def on_execution(
        self,
        batch_size: int,
        requests: int,
        compute_input_ns: int,
        compute_infer_ns: int,
        compute_output_ns: int,
        error: BaseException | None,
    ) -> None:
        if error is not None:
            return
        self.execution_count += 1
        self.inference_count += batch_size
        self.last_inference_ms = int(time.time() * 1000)
        stats = self.batch_stats.get(batch_size)
        if stats is None:
            stats = self.batch_stats[batch_size] = BatchSizeStats()
        stats.compute_input.add(compute_input_ns)
        stats.compute_infer.add(compute_infer_ns)
        stats.compute_output.add(compute_output_ns)

    def record_success(
        self, total_ns: int, queue_ns: int, compute_input_ns: int, compute_infer_ns: int, compute_output_ns: int
    ) -> None:
        self.success.add(total_ns)
        self.queue.add(queue_ns)
        self.compute_input.add(compute_input_ns)
        self.compute_infer.add(compute_infer_ns)
        self.compute_output.add(compute_output_ns)

    def record_failure(self, total_ns: int) -> None:
        self.fail.add(total_ns)

    def as_dict(self, name: str, version: str) -> dict[str, Any]:
        empty = Duration().as_dict()
        return {
            "name": name,
            "version": version,
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": {
                "success": self.success.as_dict(),
                "fail": self.fail.as_dict(),
                "queue": self.queue.as_dict(),
                "compute_input": self.compute_input.as_dict(),
                "compute_infer": self.compute_infer.as_dict(),
                "compute_output": self.compute_output.as_dict(),
                "cache_hit": empty,
                "cache_miss": dict(empty),
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
        }
