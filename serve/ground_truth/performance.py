"""Realized performance of one model version over one window of the prediction time, kept as counts and sums
that merge exactly (across windows, workers and replicas) in any order; realized.py computes the metrics.

Classification keeps the confusion counts, the log-loss sum and score histograms for ROC AUC; regression keeps
the sums of absolute, squared and signed errors. Both keep a histogram of the label delay. The arrays are made
when the window's first label joins: a window nobody labels costs a few hundred bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NotRequired, TypedDict

import numpy as np

from serve.ground_truth.targets import Task

# Binary: P(class 1) in 1000 equal bins on [0, 1], split by true class. K > 2: one-vs-rest, P(class c) in 100 bins.
BINARY_SCORE_BINS = 1000
OVR_SCORE_BINS = 100
# Label delay buckets, log-spaced, 10 per decade from 0.1 s to 1e7 s (116 days): bucket 0 is [0, 0.1 s), bucket
# i is [DELAY_EDGES_S[i-1], DELAY_EDGES_S[i]), and the last bucket is [1e7 s, inf). Negative delays (a label
# observed before its prediction: clocks differ) count as 0.
DELAY_EDGES_S: np.ndarray = 10.0 ** (np.arange(-10, 71) / 10.0)
DELAY_BUCKETS = len(DELAY_EDGES_S) + 1
# sklearn.metrics.log_loss clips probabilities to [eps, 1 - eps] for their dtype; ours are float64.
LOG_LOSS_EPS = float(np.finfo(np.float64).eps)


class SparseCountsJson(TypedDict):
    """The non-zero cells of a count array, by flat (C-order) index."""

    index: list[int]
    count: list[int]


class WindowPerformanceJson(TypedDict):
    start: float
    task: Task
    classes: int  # K; 0 for regression
    predicted_rows: int
    labelled_rows: int
    # Present once a label has joined. Classification:
    confusion: NotRequired[SparseCountsJson]  # K x K, [true class, predicted class]
    log_loss_sum: NotRequired[float]
    scores: NotRequired[SparseCountsJson]  # binary (2, 1000) [true class, bin]; K > 2 (K, 2, 100) [class, is it, bin]
    # Regression (errors are prediction - truth):
    sum_abs_error: NotRequired[float]
    sum_sq_error: NotRequired[float]
    sum_error: NotRequired[float]
    # Both:
    delay: NotRequired[SparseCountsJson]  # DELAY_BUCKETS buckets


def scores_shape(classes: int) -> tuple[int, ...]:
    return (2, BINARY_SCORE_BINS) if classes == 2 else (classes, 2, OVR_SCORE_BINS)


@dataclass(slots=True)
class WindowPerformance:
    start: float  # window_start = floor(prediction time / window_s) * window_s
    task: Task
    classes: int = 0
    predicted_rows: int = 0  # rows predicted in the window, labelled or not
    labelled_rows: int = 0
    confusion: np.ndarray | None = None  # int64 K x K
    log_loss_sum: float = 0.0  # sum of -log(clip(P(true class)))
    scores: np.ndarray | None = None  # int64, scores_shape(K)
    sum_abs_error: float = 0.0
    sum_sq_error: float = 0.0
    sum_error: float = 0.0
    delays: np.ndarray | None = None  # int64, DELAY_BUCKETS
    class_labels: tuple[str, ...] = ()  # names per_class metrics use; not part of the JSON (the target's)

    def add_classified(self, true: np.ndarray, probabilities: np.ndarray, delays_s: np.ndarray) -> None:
        """Labelled rows: true class indices, their predictions' rows x K probabilities, label delays."""
        k, n = self.classes, len(true)
        if n == 0:
            return
        p = np.nan_to_num(probabilities, nan=0.0, posinf=1.0, neginf=0.0)
        if self.confusion is None or self.scores is None:
            self.confusion = np.zeros((k, k), np.int64)
            self.scores = np.zeros(scores_shape(k), np.int64)
        predicted = np.argmax(p, axis=1)
        if k * k <= 65_536:
            self.confusion += np.bincount(true * k + predicted, minlength=k * k).reshape(k, k)
        else:  # a dense temporary of K x K per call would cost more than the rows
            np.add.at(self.confusion, (true, predicted), 1)
        p_true = np.clip(p[np.arange(n), true], LOG_LOSS_EPS, 1.0 - LOG_LOSS_EPS)
        self.log_loss_sum += float(-np.log(p_true).sum())
        if k == 2:
            bins = np.clip((p[:, 1] * BINARY_SCORE_BINS).astype(np.int64), 0, BINARY_SCORE_BINS - 1)
            flat = true * BINARY_SCORE_BINS + bins
        else:
            bins = np.clip((p * OVR_SCORE_BINS).astype(np.int64), 0, OVR_SCORE_BINS - 1)
            is_class = true[:, None] == np.arange(k)[None, :]
            flat = (np.arange(k)[None, :] * 2 + is_class) * OVR_SCORE_BINS + bins
        self.scores += np.bincount(flat.ravel(), minlength=self.scores.size).reshape(self.scores.shape)
        self._add_delays(delays_s)
        self.labelled_rows += n

    def add_regressed(self, truth: np.ndarray, predicted: np.ndarray, delays_s: np.ndarray) -> None:
        if len(truth) == 0:
            return
        error = predicted - truth
        self.sum_abs_error += float(np.abs(error).sum())
        self.sum_sq_error += float((error * error).sum())
        self.sum_error += float(error.sum())
        self._add_delays(delays_s)
        self.labelled_rows += len(truth)

    def _add_delays(self, delays_s: np.ndarray) -> None:
        if self.delays is None:
            self.delays = np.zeros(DELAY_BUCKETS, np.int64)
        self.delays += np.bincount(np.searchsorted(DELAY_EDGES_S, delays_s, side="right"), minlength=DELAY_BUCKETS)

    def merge(self, other: WindowPerformance) -> None:
        """Adds other's counts into this one (a window from another worker or replica, or another window when
        totalling a range; ``start`` stays this one's)."""
        if (other.task, other.classes) != (self.task, self.classes):
            raise ValueError(
                f"cannot merge {other.task} with {other.classes} classes into {self.task} with "
                f"{self.classes}: not the same target"
            )
        self.predicted_rows += other.predicted_rows
        self.labelled_rows += other.labelled_rows
        self.confusion = _sum(self.confusion, other.confusion)
        self.scores = _sum(self.scores, other.scores)
        self.delays = _sum(self.delays, other.delays)
        self.log_loss_sum += other.log_loss_sum
        self.sum_abs_error += other.sum_abs_error
        self.sum_sq_error += other.sum_sq_error
        self.sum_error += other.sum_error

    def copy(self) -> WindowPerformance:
        empty = WindowPerformance(self.start, self.task, self.classes, class_labels=self.class_labels)
        empty.merge(self)
        return empty

    def memory_bytes(self) -> int:
        arrays = (self.confusion, self.scores, self.delays)
        return 200 + sum(a.nbytes + 112 for a in arrays if a is not None)

    def to_json(self) -> WindowPerformanceJson:
        doc: WindowPerformanceJson = {
            "start": self.start,
            "task": self.task,
            "classes": self.classes,
            "predicted_rows": self.predicted_rows,
            "labelled_rows": self.labelled_rows,
        }
        if self.delays is None:
            return doc
        doc["delay"] = _sparse(self.delays)
        if self.task == "classification" and self.confusion is not None and self.scores is not None:
            doc["confusion"] = _sparse(self.confusion)
            doc["log_loss_sum"] = self.log_loss_sum
            doc["scores"] = _sparse(self.scores)
        elif self.task == "regression":
            doc["sum_abs_error"] = self.sum_abs_error
            doc["sum_sq_error"] = self.sum_sq_error
            doc["sum_error"] = self.sum_error
        return doc

    @classmethod
    def from_json(cls, doc: WindowPerformanceJson, *, class_labels: tuple[str, ...] = ()) -> WindowPerformance:
        """ValueError when the document is not one that to_json writes (a replica's document is checked)."""
        task, k = doc["task"], int(doc["classes"])
        if task == "classification" and not 2 <= k:
            raise ValueError(f"a classification window needs 2 or more classes, got {k}")
        if task not in ("classification", "regression"):
            raise ValueError(f"window task must be 'classification' or 'regression', got {task!r}")
        perf = cls(float(doc["start"]), task, k if task == "classification" else 0, class_labels=class_labels)
        perf.predicted_rows, perf.labelled_rows = int(doc["predicted_rows"]), int(doc["labelled_rows"])
        if "delay" in doc:
            perf.delays = _dense(doc["delay"], (DELAY_BUCKETS,), "delay")
        if task == "classification" and "confusion" in doc and "scores" in doc:
            perf.confusion = _dense(doc["confusion"], (k, k), "confusion")
            perf.scores = _dense(doc["scores"], scores_shape(k), "scores")
            perf.log_loss_sum = float(doc.get("log_loss_sum", 0.0))
        elif task == "regression":
            perf.sum_abs_error = float(doc.get("sum_abs_error", 0.0))
            perf.sum_sq_error = float(doc.get("sum_sq_error", 0.0))
            perf.sum_error = float(doc.get("sum_error", 0.0))
        if perf.labelled_rows < 0 or perf.predicted_rows < 0:
            raise ValueError("window row counts must be non-negative")
        return perf


def merged(windows: list[WindowPerformance]) -> WindowPerformance | None:
    """A new window holding the sum of several (one range of windows, or one window from several workers)."""
    if not windows:
        return None
    total = windows[0].copy()
    for w in windows[1:]:
        total.merge(w)
    return total


def _sum(a: np.ndarray | None, b: np.ndarray | None) -> np.ndarray | None:
    if b is None:
        return a
    return b.copy() if a is None else a + b


def _sparse(counts: np.ndarray) -> SparseCountsJson:
    flat = counts.ravel()
    index = np.flatnonzero(flat)
    return {"index": index.tolist(), "count": flat[index].tolist()}


def _dense(doc: SparseCountsJson, shape: tuple[int, ...], what: str) -> np.ndarray:
    index = np.asarray(doc["index"], dtype=np.int64)
    count = np.asarray(doc["count"], dtype=np.int64)
    size = int(np.prod(shape))
    if index.shape != count.shape or index.ndim != 1:
        raise ValueError(f"window {what}: 'index' and 'count' must be lists of the same length")
    if index.size and (index.min() < 0 or index.max() >= size or count.min() < 0):
        raise ValueError(f"window {what}: an index outside 0..{size - 1} or a negative count")
    dense = np.zeros(size, np.int64)
    np.add.at(dense, index, count)
    return dense.reshape(shape)
