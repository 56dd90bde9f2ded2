"""Realized performance per window, merged in any order, against scikit-learn (serve/ground_truth/performance.py,
realized.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn import metrics
from sklearn.datasets import load_breast_cancer, load_diabetes, load_digits
from sklearn.linear_model import LinearRegression, LogisticRegression

from serve.ground_truth.performance import DELAY_EDGES_S, WindowPerformance, merged
from serve.ground_truth.realized import realized


def classified(true: np.ndarray, p: np.ndarray, delays: np.ndarray | None = None) -> WindowPerformance:
    perf = WindowPerformance(0.0, "classification", p.shape[1], predicted_rows=len(true))
    perf.add_classified(true, p, np.zeros(len(true)) if delays is None else delays)
    return perf


def regressed(truth: np.ndarray, predicted: np.ndarray) -> WindowPerformance:
    perf = WindowPerformance(0.0, "regression", predicted_rows=len(truth))
    perf.add_regressed(truth, predicted, np.zeros(len(truth)))
    return perf


def random_classification(rng: np.random.Generator, n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    true = rng.integers(0, k, n)
    # scores that carry some signal, some peaked, some tied (rounded) so bins hold both classes
    logits = rng.normal(size=(n, k)) * rng.uniform(0.1, 4) + np.eye(k)[true] * rng.uniform(0, 2)
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    if rng.random() < 0.3:
        p = np.round(p, 2)
        p /= p.sum(axis=1, keepdims=True)
    return true, p


def assert_classification_matches_sklearn(perf: WindowPerformance, true: np.ndarray, p: np.ndarray) -> None:
    got = realized(perf)
    k = p.shape[1]
    predicted = p.argmax(axis=1)
    average = "binary" if k == 2 else "macro"
    assert got["accuracy"] == metrics.accuracy_score(true, predicted)
    for name, score in (
        ("precision", metrics.precision_score),
        ("recall", metrics.recall_score),
        ("f1", metrics.f1_score),
    ):
        assert got[name] == pytest.approx(score(true, predicted, average=average, zero_division=0), abs=1e-12)  # type: ignore[literal-required]
    assert got["log_loss"] == pytest.approx(metrics.log_loss(true, p, labels=list(range(k))), rel=1e-9, abs=1e-12)
    if len(np.unique(true)) == k:
        exact = metrics.roc_auc_score(true, p[:, 1]) if k == 2 else metrics.roc_auc_score(true, p, multi_class="ovr")
        assert abs(got["auc"] - exact) <= got["auc_error_bound"] + 1e-12


@pytest.mark.parametrize("seed", range(40))
def test_binary_metrics_equal_sklearn_and_auc_is_within_its_bound(seed: int) -> None:
    rng = np.random.default_rng(seed)
    true, p = random_classification(rng, int(rng.integers(20, 3000)), 2)
    assert_classification_matches_sklearn(classified(true, p), true, p)


@pytest.mark.parametrize("seed", range(30))
def test_multiclass_metrics_equal_sklearn_macro_and_auc_is_within_its_bound(seed: int) -> None:
    rng = np.random.default_rng(1000 + seed)
    true, p = random_classification(rng, int(rng.integers(50, 3000)), int(rng.integers(3, 12)))
    assert_classification_matches_sklearn(classified(true, p), true, p)


def test_per_class_metrics_equal_sklearn_for_the_classes_that_occur() -> None:
    rng = np.random.default_rng(7)
    true, p = random_classification(rng, 500, 6)
    p[:, 5] = 0.0  # class 5 is never predicted, and never true below
    true[true == 5] = 0
    perf = classified(true, p)
    perf.class_labels = ("a", "b", "c", "d", "e", "f")
    precision, recall, f1, support = metrics.precision_recall_fscore_support(
        true, p.argmax(axis=1), labels=[0, 1, 2, 3, 4], zero_division=0
    )
    got = realized(perf)["per_class"]
    assert [c["label"] for c in got] == ["a", "b", "c", "d", "e"]
    assert [c["support"] for c in got] == support.tolist()
    np.testing.assert_allclose([c["precision"] for c in got], precision, atol=1e-12)
    np.testing.assert_allclose([c["recall"] for c in got], recall, atol=1e-12)
    np.testing.assert_allclose([c["f1"] for c in got], f1, atol=1e-12)


def test_macro_averages_over_classes_in_truth_or_predictions_as_sklearn_does() -> None:
    true = np.array([0, 0, 1, 2, 2])
    p = np.eye(10)[[0, 1, 1, 2, 0]]  # classes 3..9 occur nowhere
    got = realized(classified(true, p))
    assert got["f1"] == pytest.approx(metrics.f1_score(true, p.argmax(axis=1), average="macro"), abs=1e-12)


def test_binary_precision_is_zero_when_nothing_is_predicted_positive() -> None:
    got = realized(classified(np.array([0, 1, 1]), np.array([[0.9, 0.1]] * 3)))
    assert (got["precision"], got["recall"], got["f1"]) == (0.0, 0.0, 0.0)


def test_log_loss_clips_a_certain_wrong_prediction_as_sklearn_does() -> None:
    true, p = np.array([0, 1]), np.array([[0.0, 1.0], [0.0, 1.0]])
    got = realized(classified(true, p))
    assert got["log_loss"] == pytest.approx(metrics.log_loss(true, p), rel=1e-12)


@pytest.mark.parametrize("seed", range(10))
def test_windows_split_across_workers_and_merged_in_any_order_equal_one_window(seed: int) -> None:
    rng = np.random.default_rng(seed)
    k = int(rng.integers(2, 6))
    true, p = random_classification(rng, 2000, k)
    cuts = np.sort(rng.choice(np.arange(1, 2000), size=int(rng.integers(1, 12)), replace=False))
    parts = [classified(t, q) for t, q in zip(np.split(true, cuts), np.split(p, cuts), strict=True)]
    order = rng.permutation(len(parts))
    total = merged([parts[i] for i in order])
    assert total is not None
    whole = classified(true, p)
    np.testing.assert_array_equal(total.confusion, whole.confusion)
    np.testing.assert_array_equal(total.scores, whole.scores)
    assert (total.labelled_rows, total.predicted_rows) == (2000, 2000)
    assert_classification_matches_sklearn(total, true, p)


def test_merging_into_a_copy_leaves_the_windows_merged_unchanged() -> None:
    a = classified(np.array([0, 1]), np.array([[0.7, 0.3], [0.2, 0.8]]))
    before = a.to_json()
    total = merged([a, a])
    assert total is not None and total.labelled_rows == 4 and a.to_json() == before


def test_windows_of_different_targets_do_not_merge() -> None:
    with pytest.raises(ValueError, match="not the same target"):
        classified(np.array([0]), np.array([[1.0, 0.0]])).merge(regressed(np.array([1.0]), np.array([2.0])))


def test_a_real_binary_classifier_on_breast_cancer_matches_sklearn() -> None:
    x, y = load_breast_cancer(return_X_y=True)
    model = LogisticRegression(max_iter=5000).fit(x[::2], y[::2])
    p = model.predict_proba(x[1::2])
    assert_classification_matches_sklearn(classified(y[1::2], p), y[1::2], p)


def test_a_real_ten_class_classifier_on_digits_matches_sklearn() -> None:
    x, y = load_digits(return_X_y=True)
    model = LogisticRegression(max_iter=5000).fit(x[::2], y[::2])
    p = model.predict_proba(x[1::2])
    parts = [classified(t, q) for t, q in zip(np.array_split(y[1::2], 5), np.array_split(p, 5), strict=True)]
    total = merged(parts[::-1])
    assert total is not None
    assert_classification_matches_sklearn(total, y[1::2], p)


@pytest.mark.parametrize("seed", range(5))
def test_regression_metrics_equal_sklearn_on_random_data(seed: int) -> None:
    rng = np.random.default_rng(seed)
    truth = rng.normal(100, 30, 1000)
    predicted = truth + rng.normal(rng.normal(), rng.uniform(0.1, 20), 1000)
    assert_regression_matches_sklearn(regressed(truth, predicted), truth, predicted)


def test_a_real_regression_on_diabetes_split_across_workers_matches_sklearn() -> None:
    x, y = load_diabetes(return_X_y=True)
    predicted = LinearRegression().fit(x[::2], y[::2]).predict(x[1::2])
    parts = [regressed(t, q) for t, q in zip(np.array_split(y[1::2], 3), np.array_split(predicted, 3), strict=True)]
    total = merged([parts[2], parts[0], parts[1]])
    assert total is not None
    assert_regression_matches_sklearn(total, y[1::2], predicted)


def assert_regression_matches_sklearn(perf: WindowPerformance, truth: np.ndarray, predicted: np.ndarray) -> None:
    got = realized(perf)
    assert got["mae"] == pytest.approx(metrics.mean_absolute_error(truth, predicted), rel=1e-9)
    assert got["rmse"] == pytest.approx(metrics.root_mean_squared_error(truth, predicted), rel=1e-9)
    assert got["bias"] == pytest.approx(float(np.mean(predicted - truth)), rel=1e-9)


def test_a_window_without_labels_shows_only_its_rows_and_coverage() -> None:
    assert realized(WindowPerformance(0.0, "classification", 2, predicted_rows=5)) == {
        "rows": 0,
        "predicted_rows": 5,
        "label_coverage": 0.0,
    }


def test_auc_is_left_out_when_the_labels_hold_one_class() -> None:
    got = realized(classified(np.array([1, 1]), np.array([[0.2, 0.8], [0.6, 0.4]])))
    assert "auc" not in got and "auc_error_bound" not in got and got["accuracy"] == 0.5


def test_label_coverage_is_labelled_over_predicted_rows() -> None:
    perf = classified(np.array([0, 1]), np.array([[0.7, 0.3], [0.2, 0.8]]))
    perf.predicted_rows = 8
    assert realized(perf)["label_coverage"] == 0.25


def test_delay_quantiles_are_upper_edges_of_log_spaced_buckets() -> None:
    delays = np.array([0.05] * 50 + [9.0] * 40 + [5000.0] * 9 + [1e9])
    got = realized(classified(np.zeros(100, np.int64), np.tile([0.9, 0.1], (100, 1)), delays))
    assert got["delay_p50_s"] == pytest.approx(0.1)
    assert got["delay_p90_s"] == pytest.approx(10.0)
    assert got["delay_p99_s"] == pytest.approx(10**3.7)
    edges = DELAY_EDGES_S.tolist()
    assert edges[0] == pytest.approx(0.1) and edges[-1] == pytest.approx(1e7) and len(edges) == 81


def test_a_window_survives_its_sparse_json() -> None:
    rng = np.random.default_rng(3)
    true, p = random_classification(rng, 300, 4)
    perf = classified(true, p, rng.exponential(60, 300))
    doc = perf.to_json()
    assert len(doc["scores"]["index"]) < perf.scores.size
    again = WindowPerformance.from_json(doc)
    assert again.to_json() == doc and realized(again) == realized(perf)


def test_a_regression_window_survives_its_json() -> None:
    perf = regressed(np.array([1.0, 2.0]), np.array([1.5, 1.0]))
    assert WindowPerformance.from_json(perf.to_json()).to_json() == perf.to_json()


def test_a_window_json_with_a_count_outside_its_array_is_refused() -> None:
    doc = classified(np.array([0]), np.array([[1.0, 0.0]])).to_json()
    doc["confusion"] = {"index": [4], "count": [1]}
    with pytest.raises(ValueError, match="window confusion: an index outside 0..3"):
        WindowPerformance.from_json(doc)


def test_bound_formula_is_half_the_tied_pairs_over_all_pairs() -> None:
    # two positives and two negatives, one of each in the same bin
    true = np.array([1, 0, 1, 0])
    p1 = np.array([0.9005, 0.9001, 0.2, 0.1])
    got = realized(classified(true, np.stack([1 - p1, p1], axis=1)))
    assert got["auc_error_bound"] == 0.5 * 1 / 4
    assert math.isclose(got["auc"], (1 + 0.5 + 1 + 0) / 4)
