"""StatsRecorder: the background worker, windows on an injected clock, sampling, overflow, export."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import numpy as np
import pytest

from serve.input_stats.baseline import Baseline, BaselineFeature
from serve.input_stats.recorder import StatsOptions, StatsRecorder
from serve.input_stats.windows import ServerInstance
from serve.types import TensorSpec

INPUTS = [TensorSpec("x", "FP32", (2,))]
OUTPUTS = [TensorSpec("y", "FP32", ())]
EDGES = np.array([-1.0, 0.0, 1.0])
START = 6000.0  # a multiple of 60: windows start at START, START + 60, …


class Clock:
    def __init__(self, t: float = START) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _baseline() -> Baseline:
    return Baseline(
        model={},
        features=[
            BaselineFeature("x[0]", "input", "x", 0, None, "numeric", edges=EDGES),
            BaselineFeature("x[1]", "input", "x", 1, None, "numeric", edges=EDGES),
            BaselineFeature("y", "output", "y", None, None, "numeric", edges=EDGES),
        ],
        sha256="abc",
    )


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def recorder(clock: Clock) -> Iterator[StatsRecorder]:
    rec = StatsRecorder(
        "m",
        1,
        INPUTS,
        OUTPUTS,
        instance=ServerInstance("inst-1", "r1", START - 5),
        baseline=_baseline(),
        clock=clock,
    )
    yield rec
    rec.close()


def _batch(rows: int, seed: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 2)).astype(np.float32)
    return {"x": x}, {"y": x.sum(axis=1)}


def _exact_counts(v: np.ndarray) -> list[int]:
    full = np.concatenate([[-np.inf], EDGES, [np.inf]])
    return [int(((v >= lo) & (v < hi)).sum()) for lo, hi in zip(full[:-1], full[1:], strict=True)]


def test_statistics_of_a_known_stream_equal_numpys(recorder: StatsRecorder) -> None:
    batches = [_batch(rows, seed) for seed, rows in enumerate([1, 7, 64, 33, 5])]
    for inputs, outputs in batches:
        recorder.submit(inputs, outputs)
    assert recorder.flush(5)
    x = np.concatenate([b[0]["x"] for b in batches]).astype(np.float64)
    y = np.concatenate([b[1]["y"] for b in batches]).astype(np.float64)
    features = recorder.export()["total"]["features"]
    for name, v in (("x[0]", x[:, 0]), ("x[1]", x[:, 1]), ("y", y)):
        block = features[name]
        assert block["n"] == v.size
        assert block["mean"] == pytest.approx(v.mean(), rel=1e-12, abs=1e-12)
        assert block["m2"] == pytest.approx(((v - v.mean()) ** 2).sum(), rel=1e-10)
        assert (block["min"], block["max"]) == (v.min(), v.max())
        assert block["bins"]["counts"] == _exact_counts(v)


def test_nan_and_infinite_inputs_are_counted_per_feature(recorder: StatsRecorder) -> None:
    x = np.array([[np.nan, 1.0], [np.inf, -np.inf], [0.5, 0.5]], dtype=np.float32)
    recorder.submit({"x": x}, {"y": np.zeros(3, np.float32)})
    recorder.flush(5)
    features = recorder.export()["total"]["features"]
    assert (features["x[0]"]["nan"], features["x[0]"]["posinf"], features["x[0]"]["n"]) == (1, 1, 1)
    assert (features["x[1]"]["neginf"], features["x[1]"]["n"]) == (1, 2)


def test_batches_fall_into_tumbling_windows_of_the_injected_clock(recorder: StatsRecorder, clock: Clock) -> None:
    for t, rows in ((START + 1, 3), (START + 59.9, 4), (START + 60, 5), (START + 185, 6)):
        clock.t = t
        recorder.submit(*_batch(rows, rows))
        recorder.flush(5)
    clock.t = START + 190
    doc = recorder.export()
    windows = [(w["start"], w["end"], w["rows"], w["closed"]) for w in doc["windows"]]
    assert windows == [
        (START, START + 60, 7, True),
        (START + 60, START + 120, 5, True),
        (START + 180, START + 240, 6, False),
    ]
    assert doc["total"]["rows"] == 18
    assert doc["total"]["features"]["y"]["n"] == 18


def test_windows_older_than_the_horizon_leave_the_ring_but_stay_in_the_total(clock: Clock) -> None:
    options = StatsOptions(window_s=60, horizon_s=120)
    rec = StatsRecorder("m", 1, INPUTS, OUTPUTS, instance=ServerInstance("i", "r", START), options=options, clock=clock)
    try:
        for k in range(5):
            clock.t = START + 60 * k
            rec.submit(*_batch(2, k))
            rec.flush(5)
        doc = rec.export()
        # Kept: the windows that overlap the last 120 s.
        assert [w["start"] for w in doc["windows"]] == [START + 120, START + 180, START + 240]
        assert doc["total"]["rows"] == 10
        assert doc["total"]["features"]["x[0]"]["n"] == 10
    finally:
        rec.close()


def test_a_late_batch_counts_in_the_newest_window(recorder: StatsRecorder, clock: Clock) -> None:
    clock.t = START + 70
    recorder.submit(*_batch(2, 0))
    recorder.flush(5)
    clock.t = START + 10  # the wall clock stepped back
    recorder.submit(*_batch(3, 1))
    recorder.flush(5)
    assert [(w["start"], w["rows"]) for w in recorder.export()["windows"]] == [(START + 60, 5)]


def test_since_returns_only_windows_changed_after_that_sequence(recorder: StatsRecorder, clock: Clock) -> None:
    recorder.submit(*_batch(2, 0))
    recorder.flush(5)
    first = recorder.export()
    assert len(first["windows"]) == 1
    assert recorder.export(since=first["seq"])["windows"] == []
    clock.t = START + 61
    recorder.submit(*_batch(3, 1))
    recorder.flush(5)
    later = recorder.export(since=first["seq"])
    # the first window changed too: it closed
    windows = [(w["start"], w["rows"], w["closed"]) for w in later["windows"]]
    assert windows == [(START, 2, True), (START + 60, 3, False)]
    assert later["seq"] > first["seq"] and later["since_reset"] is False
    assert later["total"]["rows"] == 5
    assert recorder.export(since=later["seq"])["windows"] == []


def test_a_window_read_while_open_is_sent_once_more_when_it_closes(recorder: StatsRecorder, clock: Clock) -> None:
    recorder.submit(*_batch(4, 0))
    recorder.flush(5)
    seen_open = recorder.export()
    assert [(w["rows"], w["closed"]) for w in seen_open["windows"]] == [(4, False)]
    clock.t = START + 60  # no traffic since: nothing but the clock closes it
    closing = recorder.export(since=seen_open["seq"])
    assert [(w["start"], w["rows"], w["closed"]) for w in closing["windows"]] == [(START, 4, True)]
    assert recorder.export(since=closing["seq"])["windows"] == []


def test_a_window_stays_open_while_rows_submitted_in_it_wait_in_the_queue(clock: Clock) -> None:
    rec = StatsRecorder(
        "m", 1, INPUTS, OUTPUTS, instance=ServerInstance("inst-1", "r1", START - 5), baseline=_baseline(),
        clock=clock, start=False,
    )  # fmt: skip
    rec.submit(*_batch(4, 0))  # queued: no worker thread applies it
    clock.t = START + 61
    assert rec.export()["windows"] == []  # the window is not even there yet, and certainly not closed
    rec._thread.start()
    rec.flush(5)
    windows = rec.export()["windows"]
    assert [(w["start"], w["rows"], w["closed"]) for w in windows] == [(START, 4, True)]
    rec.close()


def test_dropped_rows_of_a_window_seen_open_are_sent_again_when_it_closes(clock: Clock) -> None:
    rec = StatsRecorder(
        "m", 1, INPUTS, OUTPUTS, instance=ServerInstance("inst-1", "r1", START - 5), baseline=_baseline(),
        clock=clock, options=StatsOptions(queue_size=1), start=False,
    )  # fmt: skip
    rec.submit(*_batch(4, 0))
    rec.submit(*_batch(3, 1))  # the queue is full: dropped and counted in the window
    seen_open = rec.export()
    assert [(w["rows_dropped"], w["closed"]) for w in seen_open["windows"]] == [(3, False)]
    rec._thread.start()
    rec.flush(5)
    clock.t = START + 60
    closing = rec.export(since=seen_open["seq"])
    assert [(w["rows"], w["rows_dropped"], w["closed"]) for w in closing["windows"]] == [(4, 3, True)]
    rec.close()


def test_since_beyond_this_instances_sequence_returns_everything(recorder: StatsRecorder) -> None:
    recorder.submit(*_batch(2, 0))
    recorder.flush(5)
    doc = recorder.export(since=10**9)
    assert doc["since_reset"] is True
    assert len(doc["windows"]) == 1


class GatedRecorder(StatsRecorder):
    """A recorder whose worker blocks inside its first update until the test opens the gate."""

    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        self.entered = threading.Event()
        self.gate = threading.Event()
        super().__init__(*args, **kwargs)

    def _apply(self, items) -> None:  # noqa: ANN001
        self.entered.set()
        self.gate.wait()
        super()._apply(items)


def test_overflow_drops_and_counts_batches_and_submit_never_blocks(clock: Clock) -> None:
    options = StatsOptions(queue_size=4)
    rec = GatedRecorder("m", 1, INPUTS, OUTPUTS, instance=ServerInstance("i", "r", START), options=options, clock=clock)
    try:
        rec.submit(*_batch(1, 0))
        assert rec.entered.wait(5)  # the worker holds batch 1 and is stuck

        def submit_ten() -> None:
            for s in range(10):
                rec.submit(*_batch(2, s))

        submitter = threading.Thread(target=submit_ten)
        submitter.start()
        submitter.join(5)
        assert not submitter.is_alive(), "submit blocked behind a stuck worker"
        assert rec.queue_depth() == 4
        rec.gate.set()
        assert rec.flush(5)
        doc = rec.export()
        counters = doc["counters"]
        assert (counters["batches_submitted"], counters["batches_dropped"], counters["rows_dropped"]) == (
            11,
            6,
            12,
        )
        assert (counters["batches_recorded"], counters["rows_recorded"]) == (5, 9)
        (window,) = doc["windows"]
        assert (window["batches_dropped"], window["rows_dropped"], window["rows"]) == (6, 12, 9)
        assert doc["total"]["rows_dropped"] == 12
    finally:
        rec.gate.set()
        rec.close()


def test_queued_batches_of_one_window_are_applied_as_one_update(clock: Clock) -> None:
    rec = GatedRecorder("m", 1, INPUTS, OUTPUTS, instance=ServerInstance("i", "r", START), clock=clock)
    try:
        rec.submit(*_batch(1, 0))
        assert rec.entered.wait(5)
        for s in range(5):
            rec.submit(*_batch(2, s))
        rec.gate.set()
        rec.flush(5)
        doc = rec.export()
        # Two updates (the first batch, then the five queued ones together): seq advanced twice.
        assert doc["windows"][0]["batches"] == 6
        assert doc["windows"][0]["seq"] == 2
        assert doc["total"]["features"]["x[1]"]["n"] == 11
    finally:
        rec.close()


def test_row_sampling_records_a_counted_subset(clock: Clock) -> None:
    options = StatsOptions(sample_rate=0.25)
    rec = StatsRecorder(
        "m",
        1,
        INPUTS,
        OUTPUTS,
        instance=ServerInstance("i", "r", START),
        options=options,
        clock=clock,
        seed=1,
    )
    try:
        for s in range(20):
            rec.submit(*_batch(100, s))
        rec.flush(5)
        counters = rec.export()["counters"]
        assert counters["rows_recorded"] + counters["rows_sampled_out"] == 2000
        assert 400 <= counters["rows_recorded"] <= 600  # Binomial(2000, 0.25): mean 500, sd 19
        assert rec.export()["total"]["features"]["y"]["n"] == counters["rows_recorded"]
    finally:
        rec.close()


def test_max_rows_per_batch_caps_each_batch(clock: Clock) -> None:
    options = StatsOptions(max_rows_per_batch=8)
    rec = StatsRecorder("m", 1, INPUTS, OUTPUTS, instance=ServerInstance("i", "r", START), options=options, clock=clock)
    try:
        rec.submit(*_batch(100, 0))
        rec.submit(*_batch(5, 1))
        rec.flush(5)
        counters = rec.export()["counters"]
        assert (counters["rows_recorded"], counters["rows_sampled_out"]) == (13, 92)
    finally:
        rec.close()


def test_a_tensor_of_the_wrong_shape_is_skipped_and_counted(recorder: StatsRecorder) -> None:
    recorder.submit({"x": np.zeros((3, 5), np.float32)}, {"y": np.zeros(3, np.float32)})
    recorder.flush(5)
    doc = recorder.export()
    assert doc["counters"]["tensors_skipped"] == 1
    assert doc["total"]["features"]["x[0]"]["count"] == 0
    assert doc["total"]["features"]["y"]["count"] == 3


def test_close_applies_what_is_queued_and_later_submits_are_dropped(clock: Clock) -> None:
    rec = StatsRecorder("m", 1, INPUTS, OUTPUTS, instance=ServerInstance("i", "r", START), clock=clock)
    rec.submit(*_batch(4, 0))
    rec.close()
    rec.submit(*_batch(4, 1))
    counters = rec.export()["counters"]
    assert (counters["rows_recorded"], counters["rows_dropped"]) == (4, 4)


def test_the_document_describes_instance_model_baseline_and_features(recorder: StatsRecorder) -> None:
    doc = recorder.export()
    assert doc["format"] == "serve.input-stats" and doc["format_version"] == 1
    assert doc["instance"] == {"id": "inst-1", "replica": "r1", "start_time": START - 5}
    assert doc["model"] == {"name": "m", "version": "1"}
    assert doc["baseline"]["sha256"] == "abc"
    assert doc["features"][0] == {
        "name": "x[0]", "role": "input", "tensor": "x", "column": 0, "view": None, "kind": "numeric",
        "edges": EDGES.tolist(), "sketch": None,
    }  # fmt: skip
    assert doc["windows"] == []


def test_export_json_is_the_document_as_json(recorder: StatsRecorder) -> None:
    import orjson

    recorder.submit(*_batch(2, 0))
    recorder.flush(5)
    assert orjson.loads(recorder.export_json())["total"]["rows"] == 2


class FailingOnceRecorder(StatsRecorder):
    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        self.failed = False
        super().__init__(*args, **kwargs)

    def _extract(self, batches):  # noqa: ANN001, ANN202
        if not self.failed:
            self.failed = True
            raise RuntimeError("boom")
        return super()._extract(batches)


def test_a_failing_update_is_counted_and_the_worker_keeps_going(clock: Clock) -> None:
    rec = FailingOnceRecorder("m", 1, INPUTS, OUTPUTS, instance=ServerInstance("i", "r", START), clock=clock)
    try:
        rec.submit(*_batch(2, 0))
        rec.flush(5)
        rec.submit(*_batch(3, 1))
        rec.flush(5)
        doc = rec.export()
        assert doc["counters"]["errors"] == 1
        assert doc["total"]["rows"] == 3
    finally:
        rec.close()


def test_drop_counts_kept_per_window_stay_within_the_horizon(clock: Clock) -> None:
    options = StatsOptions(queue_size=1, window_s=60, horizon_s=120)
    rec = GatedRecorder("m", 1, INPUTS, OUTPUTS, instance=ServerInstance("i", "r", START), options=options, clock=clock)
    try:
        rec.submit(*_batch(1, 0))
        assert rec.entered.wait(5)
        for k in range(20):  # the first fills the queue, the rest are dropped, one per window
            clock.t = START + 60 * k
            rec.submit(*_batch(1, k))
        assert len(rec._drops) <= 4
        rec.gate.set()
        rec.flush(5)
        assert rec.export()["counters"]["batches_dropped"] == 19
    finally:
        rec.gate.set()
        rec.close()


def test_updates_are_spaced_so_queued_batches_coalesce_and_close_cuts_the_pause(clock: Clock) -> None:
    options = StatsOptions(min_update_interval_s=60)
    rec = StatsRecorder("m", 1, INPUTS, OUTPUTS, instance=ServerInstance("i", "r", START), options=options, clock=clock)
    rec.submit(*_batch(2, 0))
    assert rec.flush(5)  # the first batch after idle is applied at once
    for s in range(3):
        rec.submit(*_batch(1, s))
    assert not rec.flush(0.05)  # the worker is pausing: the three wait together
    rec.close(timeout_s=5)
    window = rec.export()["windows"][0]
    assert (window["batches"], window["rows"], window["seq"]) == (4, 5, 2)


def test_a_half_full_queue_ends_the_pause(clock: Clock) -> None:
    options = StatsOptions(min_update_interval_s=60, queue_size=4)
    rec = StatsRecorder("m", 1, INPUTS, OUTPUTS, instance=ServerInstance("i", "r", START), options=options, clock=clock)
    try:
        rec.submit(*_batch(1, 0))
        assert rec.flush(5)
        rec.submit(*_batch(1, 1))
        rec.submit(*_batch(1, 2))
        assert rec.flush(5)
        assert rec.export()["counters"]["rows_recorded"] == 3
    finally:
        rec.close()
