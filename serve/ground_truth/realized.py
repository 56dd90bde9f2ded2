"""The metrics the monitor shows, computed from a window's counts (one window, or several merged).

They follow scikit-learn: precision, recall and F1 with zero_division=0, binary with pos_label=1, otherwise
macro-averaged over the classes that occur in the truth or the predictions (sklearn's default ``labels``);
log loss with sklearn's clipping for float64; ROC AUC (binary, or one-vs-rest macro) from binned scores, with
a pair in one bin counted half, which makes ``auc_error_bound`` = 0.5 * sum_b pos_b * neg_b / (P * N) a bound
on the distance to the exact AUC: only pairs within a bin can be misordered. A metric that is undefined
(no labels, no positives) is left out, never NaN.
"""

from __future__ import annotations

import math
from typing import TypedDict

import numpy as np

from serve.ground_truth.performance import DELAY_EDGES_S, WindowPerformance


class ClassMetricsJson(TypedDict):
    label: str  # the class label, or its index as a string
    precision: float
    recall: float
    f1: float
    support: int  # labelled rows whose truth is this class


class RealizedJson(TypedDict, total=False):
    rows: int  # labelled rows, the rows the metrics are computed from
    predicted_rows: int
    label_coverage: float  # labelled rows / predicted rows
    accuracy: float
    f1: float  # binary: of class 1; K > 2: macro
    precision: float
    recall: float
    per_class: list[ClassMetricsJson]
    log_loss: float
    auc: float
    auc_error_bound: float
    mae: float
    rmse: float
    bias: float  # mean of prediction - truth
    delay_p50_s: float  # upper edge of the delay bucket holding the quantile
    delay_p90_s: float
    delay_p99_s: float


def realized(perf: WindowPerformance) -> RealizedJson:
    out: RealizedJson = {"rows": perf.labelled_rows, "predicted_rows": perf.predicted_rows}
    if perf.predicted_rows > 0:
        out["label_coverage"] = perf.labelled_rows / perf.predicted_rows
    n = perf.labelled_rows
    if n == 0:
        return out
    if perf.task == "classification" and perf.confusion is not None and perf.scores is not None:
        _classification(out, perf, perf.confusion, perf.scores)
    elif perf.task == "regression":
        out["mae"] = perf.sum_abs_error / n
        out["rmse"] = math.sqrt(perf.sum_sq_error / n)
        out["bias"] = perf.sum_error / n
    if perf.delays is not None:
        for key, q in (("delay_p50_s", 0.5), ("delay_p90_s", 0.9), ("delay_p99_s", 0.99)):
            value = delay_quantile(perf.delays, q)
            if value is not None:
                out[key] = value  # type: ignore[literal-required]
    return out


def _classification(out: RealizedJson, perf: WindowPerformance, confusion: np.ndarray, scores: np.ndarray) -> None:
    n = int(confusion.sum())
    out["accuracy"] = float(np.trace(confusion)) / n
    out["log_loss"] = perf.log_loss_sum / n
    tp = np.diag(confusion).astype(np.float64)
    support = confusion.sum(axis=1)
    predicted = confusion.sum(axis=0)
    precision = _divide(tp, predicted)
    recall = _divide(tp, support)
    f1 = _divide(2 * tp, support + predicted)
    present = np.flatnonzero((support > 0) | (predicted > 0))
    if perf.classes == 2:
        out["precision"], out["recall"], out["f1"] = float(precision[1]), float(recall[1]), float(f1[1])
    else:
        out["precision"] = float(precision[present].mean())
        out["recall"] = float(recall[present].mean())
        out["f1"] = float(f1[present].mean())
    names = perf.class_labels if len(perf.class_labels) == perf.classes else tuple(map(str, range(perf.classes)))
    out["per_class"] = [
        {
            "label": names[c],
            "precision": float(precision[c]),
            "recall": float(recall[c]),
            "f1": float(f1[c]),
            "support": int(support[c]),
        }
        for c in present
    ]
    auc = _auc(perf.classes, scores)
    if auc is not None:
        out["auc"], out["auc_error_bound"] = auc


def _divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out: np.ndarray = np.divide(num, den, out=np.zeros(len(num)), where=den > 0)
    return out


def _auc(classes: int, scores: np.ndarray) -> tuple[float, float] | None:
    """(AUC, error bound): binary from P(class 1); K > 2 the macro mean over classes with positives and negatives."""
    if classes == 2:
        return binned_auc(scores[1], scores[0])
    each = [binned_auc(scores[c, 1], scores[c, 0]) for c in range(classes)]
    defined = [a for a in each if a is not None]
    if not defined:
        return None
    return float(np.mean([a for a, _ in defined])), float(np.mean([b for _, b in defined]))


def binned_auc(pos: np.ndarray, neg: np.ndarray) -> tuple[float, float] | None:
    """AUC and its bound from positives' and negatives' counts per score bin, bins in ascending score order."""
    p, n = int(pos.sum()), int(neg.sum())
    if p == 0 or n == 0:
        return None
    neg_below = np.cumsum(neg) - neg
    below = float((pos * neg_below).sum())
    tied = float((pos * neg).sum())
    pairs = float(p) * float(n)
    return (below + 0.5 * tied) / pairs, 0.5 * tied / pairs


def delay_quantile(delays: np.ndarray, q: float) -> float | None:
    """The upper edge of the bucket holding the q-quantile (the overflow bucket [1e7 s, inf) reports 1e7 s):
    an upper bound on the quantile, at most one bucket (26 %) above it."""
    total = int(delays.sum())
    if total == 0:
        return None
    rank = max(1, math.ceil(q * total))
    bucket = int(np.searchsorted(np.cumsum(delays), rank))
    return float(DELAY_EDGES_S[min(bucket, len(DELAY_EDGES_S) - 1)])
