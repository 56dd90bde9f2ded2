"""The bounded join store of one model version, and the outcomes of a call (serve/ground_truth/store.py,
outcomes.py)."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from sklearn import metrics

from serve.ground_truth.labels import Label
from serve.ground_truth.outcomes import FeedbackCounts, Outcome, combine
from serve.ground_truth.performance import merged
from serve.ground_truth.realized import realized
from serve.ground_truth.store import PENDING_REQUESTS, JoinStore
from serve.ground_truth.targets import Target

BINARY = Target("probabilities", "classification", 2, ("0", "1"))
PRICE = Target("price", "regression", 0, ())


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def one_row(p1: float) -> np.ndarray:
    return np.array([[1 - p1, p1]], np.float32)


def test_a_label_joins_its_prediction_and_counts_in_the_prediction_window() -> None:
    clock = Clock(600.0)
    store = JoinStore(BINARY, clock=clock)
    store.record("a", one_row(0.8))
    clock.now = 700.0
    assert store.join([Label("a", label=1)]) == ["joined"]
    (window,) = store.windows()
    assert (window.start, window.predicted_rows, window.labelled_rows) == (600.0, 1, 1)
    assert realized(window)["accuracy"] == 1.0


def test_a_label_ten_minutes_late_updates_its_prediction_window_not_the_current_one() -> None:
    clock = Clock(60_000.0)
    store = JoinStore(BINARY, window_s=60.0, clock=clock)
    store.record("early", one_row(0.9))
    clock.now += 600
    store.record("now", one_row(0.9))
    assert store.join([Label("early", label=0)]) == ["joined"]
    early, current = store.windows()
    assert (early.start, early.labelled_rows, current.labelled_rows) == (60_000.0, 1, 0)
    assert realized(early)["accuracy"] == 0.0 and realized(early)["delay_p50_s"] >= 600


def test_the_delay_runs_to_the_label_time_when_the_label_has_one() -> None:
    clock = Clock(1000.0)
    store = JoinStore(BINARY, clock=clock)
    store.record("a", one_row(0.9))
    clock.now = 5000.0
    store.join([Label("a", label=1, time=1003.0)])
    assert realized(store.windows()[0])["delay_p50_s"] == pytest.approx(10**0.5)


def test_the_same_label_again_is_a_duplicate_and_another_is_a_conflict_and_the_first_stands() -> None:
    store = JoinStore(BINARY, clock=Clock())
    store.record("a", one_row(0.9))
    outcomes = store.join([Label("a", label=1), Label("a", label="1"), Label("a", label=0)])
    assert outcomes == ["joined", "duplicate", "conflicting"]
    assert store.join([Label("a", label=0)]) == ["conflicting"]
    (window,) = store.windows()
    assert window.labelled_rows == 1 and realized(window)["accuracy"] == 1.0


def test_ids_never_seen_and_rows_past_the_request_are_unknown() -> None:
    store = JoinStore(BINARY, clock=Clock())
    store.record("a", np.array([[0.5, 0.5], [0.1, 0.9]], np.float32))
    outcomes = store.join([Label("nope", label=1), Label("a", row=2, label=1), Label("a", row=1, label=1)])
    assert outcomes == ["unknown", "unknown", "joined"]


def test_each_row_of_a_request_joins_on_its_own() -> None:
    store = JoinStore(BINARY, clock=Clock())
    store.record("a", np.array([[0.9, 0.1], [0.1, 0.9], [0.2, 0.8]], np.float32))
    assert store.join([Label("a", row=r, label=1) for r in (2, 0, 1)]) == ["joined"] * 3
    assert realized(store.windows()[0])["accuracy"] == pytest.approx(2 / 3)


def test_predictions_past_retention_are_dropped_and_their_labels_expired() -> None:
    clock = Clock(0.0)
    store = JoinStore(BINARY, window_s=60.0, retention_s=3600.0, clock=clock)
    store.record("old", one_row(0.9))
    clock.now = 1800.0
    store.record("young", one_row(0.9))
    clock.now = 3601.0
    assert store.join([Label("old", label=1), Label("young", label=1)]) == ["expired", "joined"]
    assert (store.predictions_held, store.dropped_for_age) == (1, 1)


def test_windows_that_ended_before_retention_are_dropped() -> None:
    clock = Clock(0.0)
    store = JoinStore(BINARY, window_s=60.0, retention_s=600.0, clock=clock)
    for t in range(0, 1200, 60):
        clock.now = float(t)
        store.record(f"r{t}", one_row(0.5))
    clock.now = 1200.0  # retention reaches back to 600: the window [540, 600) has ended before it
    assert [w.start for w in store.windows()] == [float(t) for t in range(600, 1200, 60)]


def test_an_id_recorded_twice_joins_its_later_prediction() -> None:
    clock = Clock(0.0)
    store = JoinStore(BINARY, window_s=60.0, clock=clock)
    store.record("a", one_row(0.1))
    clock.now = 120.0
    store.record("a", one_row(0.9))
    assert store.join([Label("a", label=1)]) == ["joined"]
    first, second = store.windows()
    assert (first.labelled_rows, second.labelled_rows) == (0, 1)


def test_an_id_reused_keeps_joining_after_its_earlier_prediction_is_dropped() -> None:
    store = JoinStore(BINARY, max_rows=3, clock=Clock())
    store.record("a", one_row(0.1))
    store.record("b", one_row(0.1))
    store.record("a", one_row(0.9))
    store.record("c", one_row(0.9))  # drops the first "a" for space
    assert store.join([Label("a", label=1), Label("b", label=1)]) == ["joined", "joined"]


def test_recording_past_max_rows_drops_the_oldest_requests_for_space() -> None:
    store = JoinStore(BINARY, max_rows=10, clock=Clock())
    for i in range(8):
        store.record(f"r{i}", np.tile([0.5, 0.5], (2, 1)))
    assert (store.rows_held, store.predictions_held, store.dropped_for_space) == (10, 5, 3)
    assert store.join([Label("r2", label=0), Label("r3", label=0)]) == ["expired", "joined"]


def test_a_request_larger_than_the_store_is_dropped_for_space() -> None:
    store = JoinStore(BINARY, max_rows=4, clock=Clock())
    store.record("big", np.tile([0.5, 0.5], (5, 1)))
    assert store.join([Label("big", label=0)]) == ["expired"]
    assert store.windows()[0].predicted_rows == 5 and store.rows_held == 0


def test_a_malformed_output_is_not_held_and_does_not_stop_the_others() -> None:
    store = JoinStore(BINARY, clock=Clock())
    store.record("wrong", np.zeros((1, 3), np.float32))
    store.record("right", one_row(0.7))
    assert store.join([Label("wrong", label=1), Label("right", label=1)]) == ["unknown", "joined"]


def test_pending_predictions_are_folded_in_bulk_and_before_any_read() -> None:
    store = JoinStore(BINARY, clock=Clock())
    for i in range(PENDING_REQUESTS + 10):
        store.record(f"r{i}", one_row(0.5))
    assert len(store._pending_ids) == 10
    assert store.rows_held == PENDING_REQUESTS + 10 and not store._pending_ids


def test_a_regression_store_joins_values() -> None:
    store = JoinStore(PRICE, clock=Clock())
    store.record("a", np.array([10.0, 20.0], np.float32))
    store.record("b", np.array([[5.0]], np.float32))
    outcomes = store.join([Label("a", row=1, value=18.0), Label("b", value=7.0), Label("b", value=7.0)])
    assert outcomes == ["joined", "joined", "duplicate"]
    got = realized(store.windows()[0])
    assert (got["mae"], got["bias"], got["rows"], got["label_coverage"]) == (2.0, 0.0, 2, 2 / 3)


# float32 rows of a model's output sum to 1 within float32's precision, not within the sqrt(float64 eps) that
# sklearn warns at; the values compared are the same
@pytest.mark.filterwarnings("ignore:The y_prob values do not sum to one")
def test_realized_metrics_of_two_workers_equal_sklearn_on_the_true_join() -> None:
    rng = np.random.default_rng(21)
    clock = Clock(1_000_000.0)
    workers = [JoinStore(BINARY, window_s=60.0, clock=clock), JoinStore(BINARY, window_s=60.0, clock=clock)]
    truth: dict[tuple[str, int], tuple[int, np.ndarray, float]] = {}
    for i in range(3000):
        clock.now += rng.exponential(0.1)
        rows = int(rng.integers(1, 9))
        p1 = rng.beta(2, 2, rows).astype(np.float32)
        output = np.stack([1 - p1, p1], axis=1)
        workers[i % 2].record(f"req-{i}", output)
        for r in range(rows):
            truth[(f"req-{i}", r)] = (int(rng.random() < p1[r]), output[r], clock.now)
    keys = list(truth)
    chosen = [keys[i] for i in rng.permutation(len(keys))[: int(0.6 * len(keys))]]
    labels = [Label(k[0], k[1], label=truth[k][0]) for k in chosen]
    labels += [Label(k[0], k[1], label=truth[k][0]) for k in chosen[:50]]  # duplicates
    labels += [Label(f"never-{i}", 0, label=1) for i in range(30)]  # unknown
    order = rng.permutation(len(labels))
    labels = [labels[i] for i in order]
    clock.now += 120
    counts = FeedbackCounts.of(combine([w.join(labels) for w in workers]))
    assert counts == FeedbackCounts(joined=len(chosen), unknown=30, duplicate=50)
    by_window: dict[float, list[tuple[int, np.ndarray]]] = {}
    for k in chosen:
        label, output, t = truth[k]
        by_window.setdefault(np.floor(t / 60.0) * 60.0, []).append((label, output))
    starts = sorted({w.start for store in workers for w in store.windows()})
    assert starts == sorted(by_window)
    for start in starts:
        total = merged([w for store in workers for w in store.windows() if w.start == start])
        assert total is not None
        y = np.array([label for label, _ in by_window[start]])
        p = np.array([output for _, output in by_window[start]], np.float64)
        got = realized(total)
        assert got["accuracy"] == metrics.accuracy_score(y, p.argmax(axis=1))
        assert got["f1"] == pytest.approx(metrics.f1_score(y, p.argmax(axis=1), zero_division=0), abs=1e-12)
        assert got["log_loss"] == pytest.approx(metrics.log_loss(y, p, labels=[0, 1]), rel=1e-9)
        if len(set(y)) == 2:
            assert abs(got["auc"] - metrics.roc_auc_score(y, p[:, 1])) <= got["auc_error_bound"]


def test_memory_stays_bounded_by_max_rows_and_the_dropped_come_back_expired() -> None:
    store = JoinStore(BINARY, max_rows=100_000, clock=Clock())
    output = one_row(0.7)
    tracemalloc.start()
    try:
        # Past the first wrap the id index holds its deleted entries' slots and the dropped-id record is full:
        # from then on nothing grows.
        for i in range(200_000):
            store.record(f"{i:016x}-{i:x}", output)
        assert store.rows_held == 100_000
        wrapped = tracemalloc.get_traced_memory()[0]
        for i in range(200_000, 400_000):
            store.record(f"{i:016x}-{i:x}", output)
        assert store.rows_held == 100_000
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert after < 1.1 * wrapped
    assert store.memory_bytes() / store.rows_held < 250
    assert store.memory_bytes() == pytest.approx(after, rel=0.35)
    # the record of dropped ids holds the last max_rows of them: 200,000..299,999; older ones are forgotten
    forgotten, oldest_kept, last_dropped, held = (f"{i:016x}-{i:x}" for i in (100_000, 200_000, 299_999, 300_000))
    outcomes = store.join([Label(i, label=1) for i in (forgotten, oldest_kept, last_dropped, held)])
    assert outcomes == ["unknown", "expired", "expired", "joined"]
    assert store.dropped_for_space == 300_000


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ([["unknown", "joined"], ["expired", "unknown"]], ["expired", "joined"]),
        ([["duplicate"], ["conflicting"], ["joined"]], ["joined"]),
        ([["duplicate"], ["conflicting"]], ["conflicting"]),
        ([["expired"], ["duplicate"]], ["duplicate"]),
        ([["unknown"], ["unknown"]], ["unknown"]),
    ],
)
def test_combine_takes_the_strongest_outcome_any_store_gave(
    given: list[list[Outcome]], expected: list[Outcome]
) -> None:
    assert combine(given) == expected


def test_combine_refuses_outcomes_for_different_labels() -> None:
    with pytest.raises(ValueError, match="one outcome per label"):
        combine([["joined"], ["joined", "unknown"]])


def test_feedback_counts_answer_with_exactly_the_five_keys() -> None:
    counts = FeedbackCounts.of(["joined", "joined", "unknown", "expired", "duplicate", "conflicting"])
    assert counts.to_json() == {"joined": 2, "unknown": 1, "expired": 1, "duplicate": 1, "conflicting": 1}
