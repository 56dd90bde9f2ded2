"""serve.ground_truth.estimate: the isotonic calibration, a window's accuracy estimated from binned confidence, and
the held-out metrics, which are defined as scikit-learn defines them."""

from __future__ import annotations

from typing import get_type_hints

import numpy as np
import pytest
from sklearn.isotonic import IsotonicRegression
from sklearn.metrics import accuracy_score, f1_score, log_loss, mean_absolute_error, roc_auc_score

from serve.ground_truth import estimate
from serve.ground_truth.estimate import CalibrationJson, estimate_accuracy, isotonic
from serve.input_stats import baseline_file
from serve.input_stats.binning import assign_bins, compute_edges

# ---------------------------------------------------------------- isotonic (pool adjacent violators)


def test_isotonic_equals_scikit_learns_weighted_isotonic_regression() -> None:
    rng = np.random.default_rng(1)
    values = np.sort(rng.random(60)) + rng.normal(0, 0.2, 60)
    weights = rng.integers(1, 50, 60).astype(float)

    expected = IsotonicRegression().fit(np.arange(60), values, sample_weight=weights).predict(np.arange(60))

    np.testing.assert_allclose(isotonic(values, weights), expected, rtol=1e-12)


def test_isotonic_pools_a_violating_pair_to_its_weighted_mean() -> None:
    assert isotonic([0.2, 0.9, 0.5, 1.0], [1, 1, 3, 1]).tolist() == pytest.approx([0.2, 0.6, 0.6, 1.0])


def test_isotonic_leaves_a_non_decreasing_sequence_as_it_is() -> None:
    assert isotonic([0.5, 0.5, 0.7, 0.99], [3, 1, 2, 5]).tolist() == [0.5, 0.5, 0.7, 0.99]


def test_isotonic_gives_empty_bins_their_neighbours_value() -> None:
    # The open tails of a baseline's bins are empty on the held-out rows by construction.
    out = isotonic([0.0, 0.6, 0.0, 0.8, 0.0], [0, 10, 0, 10, 0])

    assert out.tolist() == [0.6, 0.6, 0.6, 0.8, 0.8]


# ---------------------------------------------------------------- the estimate


def _calibration(confidence: np.ndarray, correct: np.ndarray) -> CalibrationJson:
    edges = compute_edges(confidence)
    bins = assign_bins(edges, confidence)
    count = np.bincount(bins, minlength=edges.size + 1)
    right = np.bincount(bins, weights=correct, minlength=edges.size + 1)
    share = np.divide(right, count, out=np.zeros(count.size), where=count > 0)
    return {
        "feature": "p::confidence",
        "edges": edges.tolist(),
        "count": count.tolist(),
        "correct": right.astype(int).tolist(),
        "p_correct": isotonic(share, count).tolist(),
    }


def _window_counts(calibration: CalibrationJson, confidence: np.ndarray) -> list[int]:
    edges = np.asarray(calibration["edges"])
    counts: list[int] = np.bincount(assign_bins(edges, confidence), minlength=edges.size + 1).tolist()
    return counts


@pytest.fixture(scope="module")
def calibrated() -> CalibrationJson:
    """A calibrated binary classifier's confidence: right with probability equal to it."""
    rng = np.random.default_rng(0)
    confidence = rng.uniform(0.5, 1.0, 20_000)
    return _calibration(confidence, rng.random(confidence.size) < confidence)


def test_estimate_of_a_shifted_window_is_its_realized_accuracy_within_three_standard_errors(
    calibrated: CalibrationJson,
) -> None:
    rng = np.random.default_rng(1)
    confidence = 0.5 + 0.5 * rng.beta(5, 1.5, 3000)  # more confident rows than the held-out ones
    realized = float(np.mean(rng.random(confidence.size) < confidence))

    result = estimate_accuracy(calibrated, _window_counts(calibrated, confidence))

    assert result is not None
    assert result["rows"] == 3000
    assert abs(result["accuracy"] - realized) <= 3 * result["accuracy_se"]


def test_estimate_standard_error_matches_the_scatter_of_realized_accuracy_over_windows() -> None:
    rng = np.random.default_rng(2)
    errors, ses = [], []
    for _ in range(300):
        held = rng.uniform(0.5, 1.0, 2000)  # each window against a fresh held-out sample: both parts of the se
        calibration = _calibration(held, rng.random(held.size) < held)
        window = rng.uniform(0.6, 1.0, 500)
        result = estimate_accuracy(calibration, _window_counts(calibration, window))
        assert result is not None
        errors.append(result["accuracy"] - float(np.mean(rng.random(window.size) < window)))
        ses.append(result["accuracy_se"])

    assert np.std(errors) == pytest.approx(np.mean(ses), rel=0.2)


def test_estimate_is_none_for_a_window_without_binned_rows(calibrated: CalibrationJson) -> None:
    assert estimate_accuracy(calibrated, [0] * len(calibrated["p_correct"])) is None


def test_estimate_refuses_counts_of_other_bins(calibrated: CalibrationJson) -> None:
    with pytest.raises(ValueError, match="other edges"):
        estimate_accuracy(calibrated, [1, 2, 3])


def test_calibration_json_has_the_shape_baseline_json_declares() -> None:
    assert get_type_hints(CalibrationJson) == get_type_hints(baseline_file.CalibrationJson)


# ---------------------------------------------------------------- held-out metrics == scikit-learn


@pytest.fixture(scope="module")
def three_classes() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, 500)
    logits = rng.normal(size=(500, 3)) + 1.5 * np.eye(3)[y]
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y, proba


def test_accuracy_and_macro_f1_equal_scikit_learns(three_classes: tuple[np.ndarray, np.ndarray]) -> None:
    y, proba = three_classes
    predicted = proba.argmax(axis=1)

    assert estimate.accuracy(y, predicted) == pytest.approx(accuracy_score(y, predicted), abs=1e-15)
    assert estimate.f1(y, predicted, 3) == pytest.approx(f1_score(y, predicted, average="macro"), abs=1e-15)


def test_binary_f1_is_of_class_one_as_scikit_learns() -> None:
    y = np.array([0, 1, 1, 0, 1, 1, 0, 0])
    predicted = np.array([0, 1, 0, 1, 1, 1, 0, 0])

    assert estimate.f1(y, predicted, 2) == pytest.approx(f1_score(y, predicted))


def test_binary_auc_counts_ties_half_as_scikit_learns() -> None:
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 400)
    score = np.round(rng.random(400) * 0.5 + 0.3 * y, 1)  # one decimal: many ties
    proba = np.stack([1 - score, score], axis=1)

    assert estimate.roc_auc(y, proba) == pytest.approx(roc_auc_score(y, score), abs=1e-12)


def test_multiclass_auc_is_the_one_vs_rest_macro_mean_as_scikit_learns(
    three_classes: tuple[np.ndarray, np.ndarray],
) -> None:
    y, proba = three_classes

    assert estimate.roc_auc(y, proba) == pytest.approx(roc_auc_score(y, proba, multi_class="ovr"), abs=1e-12)


def test_auc_is_none_when_a_class_is_absent() -> None:
    assert estimate.roc_auc(np.ones(5, dtype=int), np.full((5, 2), 0.5)) is None


def test_log_loss_clips_as_scikit_learns(three_classes: tuple[np.ndarray, np.ndarray]) -> None:
    y, proba = three_classes
    certain = proba.copy()
    certain[0] = [0.0, 0.0, 1.0] if y[0] != 2 else [1.0, 0.0, 0.0]  # a confident mistake: log(0) without the clip

    assert estimate.log_loss(y, certain) == pytest.approx(log_loss(y, certain), rel=1e-12)


def test_regression_metrics_equal_scikit_learns() -> None:
    rng = np.random.default_rng(5)
    y = rng.normal(size=300)
    predicted = y + rng.normal(0.2, 0.5, 300)

    mae, mae_se = estimate.mean_absolute_error(y, predicted)

    assert mae == pytest.approx(mean_absolute_error(y, predicted), abs=1e-15)
    assert mae_se == pytest.approx(np.std(np.abs(predicted - y), ddof=1) / np.sqrt(300))
    assert estimate.root_mean_squared_error(y, predicted) == pytest.approx(np.sqrt(np.mean((predicted - y) ** 2)))
    assert estimate.bias(y, predicted) == pytest.approx(np.mean(predicted - y))
