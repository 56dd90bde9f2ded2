"""WorkerDocuments: the supervisor's one statistics document made of its workers', closing included."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

from serve.input_stats.recorder import StatsRecorder
from serve.input_stats.windows import ServerInstance
from serve.types import TensorSpec
from serve.workers.merged_input_stats import WorkerDocuments
from tests.fixtures.monitoring import Clock

START = 1_800_000_000.0  # a multiple of 60


def _worker(clock: Clock, instance_id: str, rows: int) -> StatsRecorder:
    recorder = StatsRecorder(
        "m", 1, [TensorSpec("x", "FP32", (2,))], [], instance=ServerInstance(instance_id, "r1", clock()), clock=clock
    )
    recorder.submit({"x": np.ones((rows, 2), np.float32)}, {})
    assert recorder.flush(5)
    return recorder


def _fetched(recorder: StatsRecorder) -> Any:
    """A worker's document as the supervisor receives it: JSON over the worker pipe."""
    return orjson.loads(recorder.export_json())


def test_a_merged_window_read_open_is_sent_again_once_every_worker_closed_it() -> None:
    clock = Clock(START + 1)
    documents = WorkerDocuments(ServerInstance("supervisor", "r1", START), clock)
    workers = [_worker(clock, "w1", 2), _worker(clock, "w2", 3)]
    seen_open = orjson.loads(documents.combine([_fetched(w) for w in workers], 0))
    assert [(w["rows"], w["closed"]) for w in seen_open["windows"]] == [(5, False)]
    clock.t = START + 60
    closing = orjson.loads(documents.combine([_fetched(w) for w in workers], seen_open["seq"]))
    assert [(w["rows"], w["closed"]) for w in closing["windows"]] == [(5, True)]
    again = orjson.loads(documents.combine([_fetched(w) for w in workers], closing["seq"]))
    assert again["windows"] == []
    for w in workers:
        w.close()


def test_the_ended_window_of_a_worker_that_died_counts_as_closed() -> None:
    clock = Clock(START + 1)
    documents = WorkerDocuments(ServerInstance("supervisor", "r1", START), clock)
    survivor, dead = _worker(clock, "w1", 2), _worker(clock, "w2", 3)
    seen_open = orjson.loads(documents.combine([_fetched(survivor), _fetched(dead)], 0))
    dead.close()  # its window never closes on its own now
    clock.t = START + 60
    closing = orjson.loads(documents.combine([_fetched(survivor)], seen_open["seq"]))
    assert [(w["rows"], w["closed"]) for w in closing["windows"]] == [(5, True)]
    survivor.close()
