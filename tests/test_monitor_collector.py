"""StatsCollector: what the monitor holds of each server's windows, counted once, closed once."""

from __future__ import annotations

import numpy as np
import orjson

from serve.input_stats.recorder import StatsRecorder
from serve.input_stats.windows import ServerInstance
from serve.monitor.collector import StatsCollector
from serve.types import TensorSpec
from tests.fixtures.monitoring import Clock

URL = "http://127.0.0.1:8000"
START = 1_800_000_000.0  # a multiple of 60


def _recorder(clock: Clock, instance_id: str) -> StatsRecorder:
    return StatsRecorder(
        "m", 1, [TensorSpec("x", "FP32", (2,))], [], instance=ServerInstance(instance_id, "r1", clock()), clock=clock
    )


def _record(recorder: StatsRecorder, rows: int) -> None:
    recorder.submit({"x": np.ones((rows, 2), np.float32)}, {})
    assert recorder.flush(5)


def _poll(collector: StatsCollector, recorder: StatsRecorder) -> None:
    # As the monitor receives documents: JSON over HTTP.
    if collector.ingest(URL, orjson.loads(recorder.export_json(collector.since(URL, "m", "1")))):
        collector.ingest(URL, orjson.loads(recorder.export_json(0)))


def _closed_rows(collector: StatsCollector) -> int:
    collected = collector.collected("m", "1", 0.0, include_open=False, baseline_sha256=None)
    return sum(int(w["rows"]) for w in collected.windows)


def test_a_window_polled_while_open_counts_once_after_the_poll_that_follows_its_close() -> None:
    clock, collector = Clock(START + 1), StatsCollector()
    recorder = _recorder(clock, "a")
    _record(recorder, 5)
    _poll(collector, recorder)
    assert _closed_rows(collector) == 0
    clock.t = START + 60
    _poll(collector, recorder)
    _poll(collector, recorder)
    assert _closed_rows(collector) == 5
    recorder.close()


def test_the_ended_open_windows_of_a_server_that_restarted_count_as_closed() -> None:
    clock, collector = Clock(START + 1), StatsCollector()
    before = _recorder(clock, "before")
    _record(before, 5)
    _poll(collector, before)
    before.close()  # killed before it could close its window
    clock.t = START + 61
    after = _recorder(clock, "after")
    _record(after, 3)
    _poll(collector, after)
    assert _closed_rows(collector) == 5  # the new process's window is still open
    after.close()


def test_the_ended_windows_of_a_replica_that_left_count_as_closed() -> None:
    clock, collector = Clock(START + 1), StatsCollector()
    recorder = _recorder(clock, "a")
    _record(recorder, 4)
    _poll(collector, recorder)
    recorder.close()
    collector.close_ended_from(URL, START + 60)
    assert _closed_rows(collector) == 4
