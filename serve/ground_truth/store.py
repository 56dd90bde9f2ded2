"""The bounded join store of one model version: the predictions labels may still join, and the performance of
every window of the prediction time still within retention.

record() is on the event loop's path for every answered request, so it only appends (id, output, time) to a
pending list; the list is folded into ring buffers in bulk (numpy, one dict insert per request) once it holds
PENDING_REQUESTS requests, or before anything reads the store. Predictions live in two rings: one slot per
request (id, first row, rows, time) and one per row (prediction, truth, labelled). Both are indexed by an ever-
growing sequence number modulo their size, grow by doubling up to max_rows, and drop their oldest entries for
age (retention_s) or for space (more than max_rows rows): held memory is bounded by max_rows, whatever the
traffic. A single-row binary classifier holds about 200 bytes per prediction (bytes_per_row, plus the id).

An id recorded twice (a client reusing ids) joins its later prediction; the earlier one stays in the ring,
unreachable, until it ages out. All calls come from one event loop thread: no locks.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence

import numpy as np

from serve.ground_truth.dropped import DroppedIds, digests
from serve.ground_truth.labels import Label, class_index
from serve.ground_truth.outcomes import Outcome
from serve.ground_truth.performance import WindowPerformance
from serve.ground_truth.targets import Target

PENDING_REQUESTS = 4096
_INITIAL_SLOTS = 1024
_AGE_SCAN = 65_536  # requests looked at per step when dropping for age
_STR_BYTES = sys.getsizeof("")  # an ASCII str's header and terminator
_INT_OBJECT_BYTES = 32  # the dict's value, a request's sequence number, is an int object of its own


def bytes_per_row(target: Target) -> int:
    """Ring bytes per held row: the prediction (float64, K of them for a classifier), truth and labelled flag."""
    return 8 * max(1, target.classes) + 9


class JoinStore:
    def __init__(
        self,
        target: Target,
        *,
        window_s: float = 60.0,
        retention_s: float = 86_400.0,
        max_rows: int = 1_000_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if window_s <= 0 or retention_s <= 0 or max_rows < 1:
            raise ValueError("window_s and retention_s must be positive, max_rows at least 1")
        self.target, self.window_s, self.retention_s, self.max_rows = target, window_s, retention_s, max_rows
        self._clock = clock
        self._width = max(1, target.classes)
        self._pending: list[tuple[str, np.ndarray, float]] = []
        self._seq_of: dict[str, int] = {}  # request id -> its latest request's sequence number
        self._id_bytes = 0
        # Request ring, sequence numbers [_req_head, _req_tail); row ring, [_row_head, _row_tail).
        self._req_head = self._req_tail = self._row_head = self._row_tail = 0
        self._ids = np.empty(0, object)
        self._first_row = np.zeros(0, np.int64)
        self._rows = np.zeros(0, np.int32)
        self._times = np.zeros(0, np.float64)
        self._predictions = np.zeros((0, self._width), np.float64)
        self._truth = np.zeros(0, np.float64)  # class index or value; valid where labelled
        self._labelled = np.zeros(0, np.bool_)
        self._resize_requests(min(max_rows, _INITIAL_SLOTS))
        self._resize_rows(min(max_rows, _INITIAL_SLOTS))
        self._dropped = DroppedIds(max_rows)
        self._windows: dict[float, WindowPerformance] = {}
        self.dropped_for_age = 0  # predictions (requests)
        self.dropped_for_space = 0

    # -- the hot path -------------------------------------------------------------------------------------------

    def record(self, request_id: str, output: np.ndarray) -> None:
        """One answered request's rows of the target output (rows x K, rows, or rows x 1). The array is kept
        until folded: the caller must not write to it afterwards."""
        self._pending.append((request_id, output, self._clock()))
        if len(self._pending) >= PENDING_REQUESTS:
            self._fold()

    # -- reading ------------------------------------------------------------------------------------------------

    @property
    def rows_held(self) -> int:
        self._fold()
        return self._row_tail - self._row_head

    @property
    def predictions_held(self) -> int:
        self._fold()
        return self._req_tail - self._req_head

    def windows(self) -> list[WindowPerformance]:
        """Every window still within retention, oldest first: the store's own objects, to read, not to change."""
        self._fold()
        self._expire(self._clock())
        return [self._windows[start] for start in sorted(self._windows)]

    def memory_bytes(self) -> int:
        arrays = (self._ids, self._first_row, self._rows, self._times, self._predictions, self._truth, self._labelled)
        pending = sum(o.nbytes + 150 for _, o, _ in self._pending)
        return (
            sum(a.nbytes for a in arrays)
            + sys.getsizeof(self._seq_of)
            + len(self._seq_of) * _INT_OBJECT_BYTES
            + self._id_bytes
            + self._dropped.memory_bytes()
            + sum(w.memory_bytes() for w in self._windows.values())
            + sys.getsizeof(self._pending)
            + pending
        )

    # -- joining ------------------------------------------------------------------------------------------------

    def join(self, labels: Sequence[Label], now: float | None = None) -> list[Outcome]:
        """One outcome per label, in order. Labels must have passed check_labels for this store's target."""
        now = self._clock() if now is None else now
        self._fold()
        self._expire(now)
        outcomes: list[Outcome] = []
        misses: list[int] = []
        joined_rows: list[int] = []
        joined_truth: list[float] = []
        joined_seen: list[float] = []
        joined_predicted: list[float] = []
        req_size, row_size = len(self._ids), len(self._labelled)
        for i, item in enumerate(labels):
            seq = self._seq_of.get(item.request_id)
            if seq is None:
                misses.append(i)
                outcomes.append("unknown")
                continue
            slot = seq % req_size
            if item.row >= self._rows[slot]:
                outcomes.append("unknown")
                continue
            row = int(self._first_row[slot] + item.row) % row_size
            truth = self._truth_of(item)
            if self._labelled[row]:
                outcomes.append("duplicate" if self._truth[row] == truth else "conflicting")
                continue
            self._labelled[row] = True
            self._truth[row] = truth
            outcomes.append("joined")
            joined_rows.append(row)
            joined_truth.append(truth)
            joined_seen.append(now if item.time is None else item.time)
            joined_predicted.append(float(self._times[slot]))
        if misses:
            expired = self._dropped.contains(digests([labels[i].request_id for i in misses]))
            for i, was_dropped in zip(misses, expired.tolist(), strict=True):
                if was_dropped:
                    outcomes[i] = "expired"
        if joined_rows:
            self._count_joined(
                np.array(joined_rows), np.array(joined_truth), np.array(joined_seen), np.array(joined_predicted)
            )
        return outcomes

    def _truth_of(self, item: Label) -> float:
        if self.target.task == "regression":
            assert item.value is not None, "check_labels first"
            return item.value
        assert item.label is not None, "check_labels first"
        return float(class_index(item.label, self.target))

    def _count_joined(self, rows: np.ndarray, truth: np.ndarray, seen: np.ndarray, predicted_at: np.ndarray) -> None:
        delays = np.maximum(seen - predicted_at, 0.0)
        starts = self._window_starts(predicted_at)
        unique, which = np.unique(starts, return_inverse=True)
        for w, start in enumerate(unique.tolist()):
            mine = which == w
            perf = self._window(start)
            predictions = self._predictions[rows[mine]]
            if self.target.task == "regression":
                perf.add_regressed(truth[mine], predictions[:, 0], delays[mine])
            else:
                perf.add_classified(truth[mine].astype(np.int64), predictions, delays[mine])

    # -- folding pending predictions in -------------------------------------------------------------------------

    def _fold(self) -> None:
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        try:
            flat, rows = _stack([p[1] for p in pending], self._width)
        except ValueError:  # a malformed output is not joined, and does not stop the others
            pending = [p for p in pending if _fits(p[1], self._width)]
            if not pending:
                return
            flat, rows = _stack([p[1] for p in pending], self._width)
        ids = [p[0] for p in pending]
        times = np.fromiter((p[2] for p in pending), np.float64, count=len(pending))
        predictions = self.target.predictions(flat)
        self._count_predicted(times, rows)
        self._expire(self._clock())
        # A batch larger than the store keeps its newest requests that fit.
        keep_from = int(np.searchsorted(-np.cumsum(rows[::-1])[::-1], -self.max_rows, side="left"))
        if keep_from:
            self._dropped.add(digests(ids[:keep_from]))
            self.dropped_for_space += keep_from
            predictions = predictions[int(rows[:keep_from].sum()) :]
            ids, times, rows = ids[keep_from:], times[keep_from:], rows[keep_from:]
        if not ids:
            return
        self._append(ids, times, rows, predictions)

    def _append(self, ids: list[str], times: np.ndarray, rows: np.ndarray, predictions: np.ndarray) -> None:
        total = len(predictions)
        held_rows = self._row_tail - self._row_head
        if held_rows + total > self.max_rows:
            self._drop_oldest_rows(held_rows + total - self.max_rows)
        self._ensure_sizes(self._req_tail - self._req_head + len(ids), self._row_tail - self._row_head + total)
        seqs = self._req_tail + np.arange(len(ids))
        slots = seqs % len(self._ids)
        first_rows = self._row_tail + np.concatenate(([0], np.cumsum(rows)[:-1]))
        self._ids[slots] = ids
        self._first_row[slots] = first_rows
        self._rows[slots] = rows
        self._times[slots] = times
        row_slots = (self._row_tail + np.arange(total)) % len(self._labelled)
        self._predictions[row_slots] = predictions.reshape(total, self._width)
        self._labelled[row_slots] = False
        seq_of = self._seq_of
        for request_id, seq in zip(ids, range(self._req_tail, self._req_tail + len(ids)), strict=True):
            seq_of[request_id] = seq
        self._id_bytes += _str_bytes(ids)
        self._req_tail += len(ids)
        self._row_tail += total

    def _count_predicted(self, times: np.ndarray, rows: np.ndarray) -> None:
        starts = self._window_starts(times)
        unique, which = np.unique(starts, return_inverse=True)
        for start, count in zip(unique.tolist(), np.bincount(which, weights=rows).tolist(), strict=True):
            self._window(start).predicted_rows += int(count)

    def _window_starts(self, times: np.ndarray) -> np.ndarray:
        out: np.ndarray = np.floor(times / self.window_s) * self.window_s
        return out

    def _window(self, start: float) -> WindowPerformance:
        perf = self._windows.get(start)
        if perf is None:
            perf = WindowPerformance(
                start, self.target.task, self.target.classes, class_labels=self.target.class_labels
            )
            self._windows[start] = perf
        return perf

    # -- dropping -----------------------------------------------------------------------------------------------

    def _expire(self, now: float) -> None:
        cutoff = now - self.retention_s
        while self._req_head < self._req_tail and self._times[self._req_head % len(self._times)] < cutoff:
            n = min(self._req_tail - self._req_head, _AGE_SCAN)
            times = self._times[(self._req_head + np.arange(n)) % len(self._times)]
            recent = np.flatnonzero(times >= cutoff)
            old = int(recent[0]) if len(recent) else n
            if old:
                self._drop_requests(self._req_head + old)
                self.dropped_for_age += old
            if old < n:
                break
        for start in [s for s in self._windows if s + self.window_s <= cutoff]:
            del self._windows[start]

    def _drop_oldest_rows(self, rows: int) -> None:
        """Drops the oldest requests until at least ``rows`` rows are freed."""
        n = min(self._req_tail - self._req_head, rows)  # every request holds a row or more
        slots = (self._req_head + np.arange(n)) % len(self._ids)
        freed = np.cumsum(self._rows[slots])
        count = int(np.searchsorted(freed, rows, side="left")) + 1
        self._drop_requests(self._req_head + min(count, n))
        self.dropped_for_space += min(count, n)

    def _drop_requests(self, new_head: int) -> None:
        slots = (self._req_head + np.arange(new_head - self._req_head)) % len(self._ids)
        ids = self._ids[slots].tolist()
        seq_of = self._seq_of
        for request_id, seq in zip(ids, range(self._req_head, new_head), strict=True):
            if seq_of.get(request_id) == seq:  # not if a later request reused the id
                del seq_of[request_id]
        self._id_bytes -= _str_bytes(ids)
        self._dropped.add(digests(ids))
        self._ids[slots] = None
        self._req_head = new_head
        if new_head == self._req_tail:
            self._row_head = self._row_tail
        else:
            self._row_head = int(self._first_row[new_head % len(self._ids)])

    # -- ring sizes ---------------------------------------------------------------------------------------------

    def _ensure_sizes(self, requests: int, rows: int) -> None:
        if requests > len(self._ids):
            self._resize_requests(min(self.max_rows, max(requests, 2 * len(self._ids))))
        if rows > len(self._labelled):
            self._resize_rows(min(self.max_rows, max(rows, 2 * len(self._labelled))))

    def _resize_requests(self, size: int) -> None:
        seqs = np.arange(self._req_head, self._req_tail)
        old, new = seqs % max(1, len(self._ids)), seqs % size
        for name, dtype in (("_ids", object), ("_first_row", np.int64), ("_rows", np.int32), ("_times", np.float64)):
            grown = np.zeros(size, dtype) if dtype is not object else np.empty(size, object)
            grown[new] = getattr(self, name)[old]
            setattr(self, name, grown)

    def _resize_rows(self, size: int) -> None:
        seqs = np.arange(self._row_head, self._row_tail)
        old, new = seqs % max(1, len(self._labelled)), seqs % size
        predictions = np.zeros((size, self._width), np.float64)
        predictions[new] = self._predictions[old]
        truth = np.zeros(size, np.float64)
        truth[new] = self._truth[old]
        labelled = np.zeros(size, np.bool_)
        labelled[new] = self._labelled[old]
        self._predictions, self._truth, self._labelled = predictions, truth, labelled


def _stack(outputs: list[np.ndarray], width: int) -> tuple[np.ndarray, np.ndarray]:
    """All requests' rows as one rows x width array, and each request's row count; ValueError if one is malformed."""
    try:
        rows = np.fromiter(map(len, outputs), np.int64, count=len(outputs))
    except TypeError:  # len() of a 0-d array
        raise ValueError("a 0-d output") from None
    try:  # the usual case, every output rows x K (or every one a vector of rows), without a reshape each
        flat = np.concatenate(outputs)
    except ValueError:
        flat = np.concatenate([o.reshape(len(o), -1) for o in outputs])
    flat = flat.reshape(len(flat), -1)
    if flat.shape[1] != width or rows.min() == 0:
        raise ValueError("an output of another width, or without rows")
    return flat, rows


def _str_bytes(ids: list[str]) -> int:
    """What the ids cost as str objects: 49 bytes and one a character for ASCII (request ids are ASCII)."""
    return _STR_BYTES * len(ids) + sum(map(len, ids))


def _fits(output: np.ndarray, width: int) -> bool:
    return output.ndim >= 1 and output.shape[0] > 0 and output.size == output.shape[0] * width
