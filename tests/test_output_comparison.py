"""OutputComparison and compare(): what a shadow's answers are measured against (serve/rollout/comparison.py)."""

from __future__ import annotations

import numpy as np
import orjson

from serve.rollout.comparison import (
    ABS_DELTA_BINS,
    MAX_CLASSES,
    OTHER_CLASS,
    OutputComparison,
    ShadowDocument,
    compare,
    merge_shadow_documents,
)


def _scores(rows: int, classes: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((rows, classes), dtype=np.float32)


def _merged(*parts: OutputComparison) -> OutputComparison:
    total = OutputComparison()
    for part in parts:
        total.merge(part)
    return total


def test_merging_two_batches_equals_comparing_their_concatenation_for_classes() -> None:
    p, s = _scores(50, 4, seed=1), _scores(50, 4, seed=2)
    whole = compare({"probabilities": p}, {"probabilities": s})
    halves = _merged(
        compare({"probabilities": p[:20]}, {"probabilities": s[:20]}),
        compare({"probabilities": p[20:]}, {"probabilities": s[20:]}),
    )
    assert halves == whole


def test_merging_two_batches_equals_comparing_their_concatenation_for_values() -> None:
    p, s = _scores(50, 1, seed=1), _scores(50, 1, seed=2)
    whole = compare({"y": p}, {"y": s})
    halves = _merged(compare({"y": p[:7]}, {"y": s[:7]}), compare({"y": p[7:]}, {"y": s[7:]}))
    assert halves.abs_delta_counts == whole.abs_delta_counts
    assert halves.rows == whole.rows and halves.abs_delta_max == whole.abs_delta_max
    assert np.isclose(halves.abs_delta_sum, whole.abs_delta_sum)


def test_disagreements_count_the_rows_whose_argmax_differs() -> None:
    p, s = _scores(200, 3, seed=3), _scores(200, 3, seed=4)
    comparison = compare({"probabilities": p}, {"probabilities": s})
    expected = int(np.count_nonzero(p.argmax(axis=1) != s.argmax(axis=1)))
    assert (comparison.kind, comparison.rows, comparison.disagreements) == ("classification", 200, expected)
    assert comparison.disagreement() == expected / 200


def test_the_flip_matrix_counts_each_pair_of_classes() -> None:
    comparison = compare({"label": np.array([0, 0, 1, 2, 2])}, {"label": np.array([0, 1, 1, 2, 0])})
    assert comparison.flips == {("0", "0"): 1, ("0", "1"): 1, ("1", "1"): 1, ("2", "2"): 1, ("2", "0"): 1}
    assert sum(comparison.flips.values()) == comparison.rows


def test_a_label_output_is_preferred_to_the_probabilities() -> None:
    primary = {"probabilities": np.array([[0.9, 0.1], [0.2, 0.8]], np.float32), "label": np.array([[0], [1]])}
    # The shadow's probabilities agree with the primary's; its labels do not: the labels are compared.
    shadow = {"probabilities": primary["probabilities"], "label": np.array([[1], [1]])}
    comparison = compare(primary, shadow)
    assert (comparison.output, comparison.disagreements) == ("label", 1)


def test_probabilities_are_compared_by_argmax_when_there_is_no_label() -> None:
    primary = {"probabilities": np.array([[0.9, 0.1], [0.2, 0.8]], np.float32)}
    shadow = {"probabilities": np.array([[0.6, 0.4], [0.7, 0.3]], np.float32)}
    comparison = compare(primary, shadow)
    assert (comparison.output, comparison.disagreements, comparison.flips) == (
        "probabilities",
        1,
        {("0", "0"): 1, ("1", "0"): 1},
    )


def test_bytes_labels_are_compared_as_text() -> None:
    primary = {"output_label": np.array(["setosa", "virginica", "setosa"], dtype=object)}
    shadow = {"output_label": np.array([b"setosa", b"setosa", b"setosa"], dtype=object)}
    comparison = compare(primary, shadow)
    assert comparison.disagreements == 1
    assert comparison.flips == {("setosa", "setosa"): 2, ("virginica", "setosa"): 1}


def test_regression_deltas_fall_in_log_spaced_bins_with_zero_and_overflow_apart() -> None:
    primary = np.zeros(7)
    shadow = np.array([0.0, 5e-10, 1e-9, 0.5, -3.0, 2e6, np.nan])
    comparison = compare({"y": primary}, {"y": shadow})
    counts = comparison.abs_delta_counts
    assert len(counts) == ABS_DELTA_BINS
    # bin 0: exactly 0; bin 1: below 1e-9; bin 2: [1e-9, 1e-8); bin 10: [0.1, 1); bin 11: [1, 10); last: overflow
    expected = [0] * ABS_DELTA_BINS
    for index in (0, 1, 2, 10, 11):
        expected[index] = 1
    expected[-1] = 2
    assert counts == expected
    assert comparison.abs_delta_max == 2e6
    assert comparison.abs_delta_sum == 5e-10 + 1e-9 + 0.5 + 3.0 + 2e6
    assert (comparison.kind, comparison.disagreements) == ("regression", 0)


def test_outputs_that_cannot_be_paired_count_as_incomparable() -> None:
    assert compare({"a": np.zeros((2, 1))}, {"b": np.zeros((2, 1))}) == OutputComparison(incomparable=1)
    assert compare({"a": np.zeros((2, 3))}, {"a": np.zeros((3, 3))}).incomparable == 1


def test_the_flip_matrix_names_at_most_max_classes_and_keeps_rows_exact() -> None:
    rows = 3 * MAX_CLASSES
    primary = np.arange(rows) % (2 * MAX_CLASSES)
    shadow = np.roll(primary, 1)
    comparison = compare({"label": primary}, {"label": shadow})
    named = {c for pair in comparison.flips for c in pair} - {OTHER_CLASS}
    assert len(named) <= MAX_CLASSES
    assert sum(comparison.flips.values()) == comparison.rows == rows
    assert comparison.disagreements == int(np.count_nonzero(primary != shadow))


def test_the_latency_ratio_is_the_shadow_time_over_the_primary_time() -> None:
    comparison = OutputComparison()
    assert comparison.latency_ratio() is None
    comparison.add_latency(primary_ns=1000, shadow_ns=1500)
    comparison.add_latency(primary_ns=3000, shadow_ns=2500)
    assert comparison.latency_ratio() == 1.0


def test_json_round_trip_keeps_every_count() -> None:
    comparison = _merged(
        compare({"label": np.array([1, 2, 3])}, {"label": np.array([1, 3, 3])}),
        compare({"label": np.array([4])}, {"label": np.array([4])}),
    )
    comparison.add_latency(10, 20)
    document = orjson.loads(orjson.dumps(comparison.to_json()))
    assert OutputComparison.from_json(document) == comparison


def test_json_round_trip_of_a_regression() -> None:
    comparison = compare({"y": np.array([[1.0], [2.0]])}, {"y": np.array([[1.5], [2.0]])})
    document = orjson.loads(orjson.dumps(comparison.to_json()))
    assert OutputComparison.from_json(document) == comparison


def test_since_a_snapshot_is_the_comparison_of_what_came_after() -> None:
    first = compare({"label": np.array([1, 2, 3])}, {"label": np.array([1, 3, 3])})
    later = compare({"label": np.array([2, 2])}, {"label": np.array([2, 1])})
    later.add_latency(10, 30)
    snapshot = first.copy()
    first.merge(later)
    assert first.since(snapshot) == later


def test_shadow_documents_of_several_workers_merge_by_summing() -> None:
    one = compare({"label": np.array([1, 2])}, {"label": np.array([1, 1])})
    two = compare({"label": np.array([2, 2, 3])}, {"label": np.array([2, 2, 2])})
    documents: list[ShadowDocument] = [
        {"model": "m", "comparisons": {"1->2": one.to_json()}, "dropped": {"2": 3}},
        {"model": "m", "comparisons": {"1->2": two.to_json()}, "dropped": {"2": 1}},
    ]
    merged = merge_shadow_documents("m", documents)
    assert OutputComparison.from_json(merged["comparisons"]["1->2"]) == _merged(one, two)
    assert merged["dropped"] == {"2": 4}
