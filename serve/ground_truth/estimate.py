"""A window's accuracy estimated from the server's binned confidence, before its labels arrive (CBPE's idea).

``serve baseline --labels`` stores, per bin of the output feature ``<tensor>::confidence`` (the bins the
server counts that feature in), how many held-out rows fell there and how many of them the model got right;
``p_correct`` is that share made monotone (isotonic: more confident is never less often right). A window's
expected accuracy is then the bins' ``p_correct`` weighted by the window's own counts in the same bins. Those
counts are what the server already publishes per window, merged across workers and replicas, so the estimate
needs no row-level data. It holds while ``P(correct | confidence)`` holds (covariate shift); concept drift is
invisible to it, which is what realized accuracy, once labels come, is compared with it for.

The held-out metrics ``serve baseline`` reports next to the calibration are here too, in numpy, defined as
scikit-learn defines them (the tests check that they agree).

Pure numpy: no server imports, so the monitor and the baseline command share it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypedDict

import numpy as np


class CalibrationJson(TypedDict):
    """baseline.json's ``performance.calibration`` (serve/input_stats/baseline_file.py declares the same shape).

    ``edges`` are the baseline's edges of ``feature``: ``len(edges) + 1`` bins, the two tails open
    (serve/input_stats/binning.py). ``count``/``correct``: held-out rows per bin, and those predicted right;
    ``p_correct``: P(correct | bin), isotonic in the bin, weighted by ``count``."""

    feature: str
    edges: list[float]
    count: list[int]
    correct: list[int]
    p_correct: list[float]


class EstimateJson(TypedDict):
    accuracy: float
    accuracy_se: float
    rows: int  # the window's rows with a confidence (finite, so binned)


def isotonic(values: Sequence[float] | np.ndarray, weights: Sequence[float] | np.ndarray) -> np.ndarray:
    """The non-decreasing sequence closest to ``values`` in weighted least squares (pool adjacent violators).

    Entries of weight 0 carry no information: they take the value of the nearest weighted entry before
    them (after them at the start), so that they join that entry's pooled block. All weights 0: NaN."""
    v = np.asarray(values, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    keep = np.flatnonzero(w > 0)
    out = np.full(v.shape, np.nan)
    if keep.size == 0:
        return out
    means: list[float] = []
    totals: list[float] = []
    sizes: list[int] = []
    for i in keep.tolist():
        mean, total, size = float(v[i]), float(w[i]), 1
        while means and means[-1] > mean:  # pool with the block before while it is higher
            prev_mean, prev_total = means.pop(), totals.pop()
            mean = (prev_mean * prev_total + mean * total) / (prev_total + total)
            total += prev_total
            size += sizes.pop()
        means.append(mean)
        totals.append(total)
        sizes.append(size)
    out[keep] = np.repeat(means, sizes)
    # Empty entries: the value of the last weighted entry before them, or of the first one after them.
    filled_from = np.maximum.accumulate(np.where(w > 0, np.arange(w.size), -1))
    filled_from[filled_from < 0] = keep[0]
    result: np.ndarray = out[filled_from]
    return result


def estimate_accuracy(calibration: CalibrationJson, bin_counts: Sequence[float]) -> EstimateJson | None:
    """Expected accuracy of a window whose ``<tensor>::confidence`` bin counts are ``bin_counts``.

    ``accuracy = Σ_b c_b p_b / n`` with ``c_b`` the window's count in bin ``b``, ``p_b`` its ``p_correct`` and
    ``n = Σ_b c_b``. Its standard error adds two independent parts:

    * the calibration's sampling error: bins pooled by the isotonic fit share one estimate (a run of equal
      ``p_correct``), made from ``M_B`` held-out rows, binomial: ``Σ_B (C_B / n)² p_B (1 - p_B) / M_B``, with
      ``C_B`` the window's rows in run ``B``;
    * the window's own: its rows are right or wrong independently given their bins, so its realized accuracy
      scatters around the expectation by ``Σ_b c_b p_b (1 - p_b) / n²``.

    ``accuracy_se = sqrt`` of their sum: the error of the estimate as a prediction of the realized accuracy.
    None when the window has no binned rows or the calibration no held-out rows."""
    p = np.asarray(calibration["p_correct"], dtype=np.float64)
    held = np.asarray(calibration["count"], dtype=np.float64)
    c = np.asarray(bin_counts, dtype=np.float64)
    if c.shape != p.shape or held.shape != p.shape:
        raise ValueError(
            f"{len(bin_counts)} bin counts for a calibration of {p.size} bins ({calibration['feature']}): "
            "the window was binned against other edges than the baseline's"
        )
    n = float(c.sum())
    if n <= 0 or held.sum() <= 0:
        return None
    accuracy = float(c @ p) / n
    runs = np.concatenate([[0], np.cumsum(np.diff(p) != 0)])  # bins pooled together share a run number
    run_p = np.bincount(runs, weights=p) / np.bincount(runs)
    run_held = np.bincount(runs, weights=held)
    run_window = np.bincount(runs, weights=c)
    # A run no held-out row fell in (only a hand-made calibration has one) adds no held-out error it could know.
    per_run = np.divide((run_window / n) ** 2 * run_p * (1 - run_p), run_held, out=np.zeros_like(run_p),
                        where=run_held > 0)  # fmt: skip
    calibration_var = float(np.sum(per_run))
    window_var = float(c @ (p * (1 - p))) / n**2
    se = float(np.sqrt(calibration_var + window_var))
    return {"accuracy": accuracy, "accuracy_se": se, "rows": int(round(n))}


# ---------------------------------------------------------------- held-out metrics, as scikit-learn defines them


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(np.mean(np.asarray(y_true) == np.asarray(y_pred)))


def f1(y_true: np.ndarray, y_pred: np.ndarray, classes: int) -> float:
    """Two classes: F1 of class 1 (scikit-learn's ``pos_label=1``). More: the unweighted mean over the classes
    that occur in ``y_true`` or ``y_pred`` (``average="macro"``). 0 where precision and recall are both 0."""
    t, q = np.asarray(y_true), np.asarray(y_pred)
    present = [1] if classes == 2 else np.union1d(t, q).tolist()
    scores = []
    for k in present:
        tp = float(np.sum((t == k) & (q == k)))
        denominator = float(np.sum(t == k) + np.sum(q == k))
        scores.append(2 * tp / denominator if denominator else 0.0)
    return float(np.mean(scores))


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1 … n, ties sharing their mean rank."""
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    ranks: np.ndarray = (ends - (counts - 1) / 2.0)[inverse]
    return ranks


def _binary_auc(positive: np.ndarray, score: np.ndarray) -> float | None:
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = _average_ranks(score)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def roc_auc(y_true: np.ndarray, proba: np.ndarray) -> float | None:
    """Area under the ROC curve by ranks (Mann-Whitney, ties counted half). Two classes: of class 1's score;
    more: the mean over classes of each against the rest (``multi_class="ovr"``, macro). None unless every
    class occurs in ``y_true`` (scikit-learn refuses those)."""
    t = np.asarray(y_true)
    k = proba.shape[1]
    if k == 2:
        return _binary_auc(t == 1, proba[:, 1])
    per_class = [_binary_auc(t == j, proba[:, j]) for j in range(k)]
    if any(a is None for a in per_class):
        return None
    return float(np.mean([a for a in per_class if a is not None]))


def log_loss(y_true: np.ndarray, proba: np.ndarray) -> float:
    """Mean negative log-probability of the true class, clipped to ``[eps, 1 - eps]`` (float64's eps)."""
    eps = np.finfo(np.float64).eps
    p = np.clip(proba[np.arange(proba.shape[0]), np.asarray(y_true)], eps, 1 - eps)
    return float(-np.mean(np.log(p)))


def mean_absolute_error(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[float, float]:
    """MAE and its standard error (the sample standard deviation of the absolute errors over ``sqrt(n)``)."""
    errors = np.abs(np.asarray(y_pred, dtype=np.float64) - np.asarray(y_true, dtype=np.float64))
    se = float(errors.std(ddof=1) / np.sqrt(errors.size)) if errors.size > 1 else float("nan")
    return float(errors.mean()), se


def root_mean_squared_error(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    errors = np.asarray(y_pred, dtype=np.float64) - np.asarray(y_true, dtype=np.float64)
    return float(np.sqrt(np.mean(errors**2)))


def bias(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean of prediction minus label: positive when the model predicts too high."""
    return float(np.mean(np.asarray(y_pred, dtype=np.float64) - np.asarray(y_true, dtype=np.float64)))
