"""The bounded join store of one model version: the predictions labels may still join, and the performance of
every window of the prediction time still within retention.

record() is on the event loop's path for every answered request, so it only copies the request's rows into a
staging array and appends its id, row count and time to lists: nothing it keeps is an object the garbage
collector tracks, nor one of the caller's arrays (bench/join_store.py hot-path: ≤ 3 % of the hot path at c=64
in the quieter runs). The staged requests are folded into the rings in bulk (numpy, one dict insert per
request) once PENDING_REQUESTS of them or a staging array's worth of rows are waiting, or before anything reads
the store. Predictions live in two rings of max_rows slots:
one per request (first row, rows, time) and one per row (prediction, truth, labelled), each indexed by an
ever-growing sequence number modulo max_rows; the requests' ids sit in a queue of the folds' own lists. Both drop
their oldest entries for age (retention_s) or for space (more than max_rows rows): held memory is bounded by
max_rows, whatever the traffic. The rings are allocated whole but zeroed lazily (calloc: pages become memory as
they are first written), and never grow: growing by doubling copied a million slots at a time and held the
event loop for 80-120 ms (bench/join_store.py memory). A single-row binary classifier holds about 200 bytes per
prediction (bytes_per_row, plus the id, its index entry and its dropped-id record), ~220 past the first wrap.

An id recorded twice (a client reusing ids) joins its later prediction; the earlier one stays in the ring,
unreachable, until it ages out. All calls come from one event loop thread: no locks.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from collections.abc import Callable, Sequence

import numpy as np

from serve.ground_truth.dropped import DroppedIds, digests
from serve.ground_truth.id_index import IdIndex
from serve.ground_truth.labels import Label, class_index
from serve.ground_truth.outcomes import Outcome
from serve.ground_truth.performance import WindowPerformance
from serve.ground_truth.targets import Target

STAGING_BYTES = 1 << 20  # the staging array's size, in rows of the target's width (64 to 4096 rows)
PENDING_REQUESTS = 512  # a fold of 512 takes ~0.5 ms: the longest record() holds the event loop
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
        # Staged requests, not yet folded: their ids, row counts and times, and their rows in _staging.
        self._pending_ids: list[str] = []
        self._pending_rows: list[int] = []
        self._pending_times: list[float] = []
        self._staging = np.zeros((max(64, min(4096, STAGING_BYTES // (8 * self._width))), self._width), np.float64)
        self._staged = 0  # rows of _staging in use
        self._seq_of = IdIndex()  # request id -> its latest request's sequence number
        self._id_bytes = 0
        # Request ring, sequence numbers [_req_head, _req_tail); row ring, [_row_head, _row_tail).
        self._req_head = self._req_tail = self._row_head = self._row_tail = 0
        # Every request holds a row or more, so max_rows request slots always suffice.
        self._id_chunks: deque[tuple[int, list[str]]] = deque()  # (first sequence number, the ids of one fold)
        self._first_row = np.zeros(max_rows, np.int64)
        self._rows = np.zeros(max_rows, np.int32)
        self._times = np.zeros(max_rows, np.float64)
        self._predictions = np.zeros((max_rows, self._width), np.float64)
        self._truth = np.zeros(max_rows, np.float64)  # class index or value; valid where labelled
        self._labelled = np.zeros(max_rows, np.bool_)
        self._dropped = DroppedIds(max_rows)
        self._windows: dict[float, WindowPerformance] = {}
        self.dropped_for_age = 0  # predictions (requests)
        self.dropped_for_space = 0

    # -- the hot path -------------------------------------------------------------------------------------------

    def record(self, request_id: str, output: np.ndarray) -> None:
        """One answered request's rows of the target output (rows x K, rows, or rows x 1), copied: the caller
        keeps its array. One of another width, or without rows, is not held."""
        rows = output.shape[0] if output.ndim else 0
        if rows == 0 or output.size != rows * self._width:
            return
        if self._staged + rows > len(self._staging):
            self._fold()
            if rows > len(self._staging):  # a request larger than the staging array is folded on its own
                self._stage(request_id, np.asarray(output, np.float64).reshape(rows, self._width), rows)
                return
        self._staging[self._staged : self._staged + rows] = output.reshape(rows, self._width)
        self._staged += rows
        self._pending_ids.append(request_id)
        self._pending_rows.append(rows)
        self._pending_times.append(self._clock())
        if len(self._pending_ids) >= PENDING_REQUESTS:
            self._fold()

    def _stage(self, request_id: str, flat: np.ndarray, rows: int) -> None:
        now = self._clock()
        self._fold_rows([request_id], np.asarray([rows]), np.asarray([now]), flat)

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
        # The rings' slots in use (their untouched pages are not memory yet), the id lists' pointers.
        requests, rows = self._req_tail - self._req_head, self._row_tail - self._row_head
        request_bytes = requests * (self._first_row.itemsize + self._rows.itemsize + self._times.itemsize + 8)
        row_bytes = rows * (self._predictions.itemsize * self._width + self._truth.itemsize + self._labelled.itemsize)
        pending = self._staging.nbytes + 80 * len(self._pending_ids)
        return (
            request_bytes
            + row_bytes
            + 56 * len(self._id_chunks)
            + self._seq_of.memory_bytes()
            + len(self._seq_of) * _INT_OBJECT_BYTES
            + self._id_bytes
            + self._dropped.memory_bytes()
            + sum(w.memory_bytes() for w in self._windows.values())
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
        req_size = row_size = self.max_rows
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
        if not self._pending_ids:
            return
        ids, self._pending_ids = self._pending_ids, []
        rows = np.asarray(self._pending_rows, np.int64)
        times = np.asarray(self._pending_times, np.float64)
        self._pending_rows, self._pending_times = [], []
        flat = self._staging[: self._staged]
        self._staged = 0
        self._fold_rows(ids, rows, times, flat)

    def _fold_rows(self, ids: list[str], rows: np.ndarray, times: np.ndarray, flat: np.ndarray) -> None:
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
        seqs = self._req_tail + np.arange(len(ids))
        slots = seqs % self.max_rows
        first_rows = self._row_tail + np.concatenate(([0], np.cumsum(rows)[:-1]))
        self._id_chunks.append((self._req_tail, ids))
        self._first_row[slots] = first_rows
        self._rows[slots] = rows
        self._times[slots] = times
        row_slots = (self._row_tail + np.arange(total)) % self.max_rows
        self._predictions[row_slots] = predictions.reshape(total, self._width)
        self._labelled[row_slots] = False
        self._seq_of.set_many(zip(ids, range(self._req_tail, self._req_tail + len(ids)), strict=True))
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
        slots = (self._req_head + np.arange(n)) % self.max_rows
        freed = np.cumsum(self._rows[slots])
        count = int(np.searchsorted(freed, rows, side="left")) + 1
        self._drop_requests(self._req_head + min(count, n))
        self.dropped_for_space += min(count, n)

    def _drop_requests(self, new_head: int) -> None:
        ids = self._take_ids(new_head)
        self._seq_of.drop_many(zip(ids, range(self._req_head, new_head), strict=True))  # not ids a later request took
        self._id_bytes -= _str_bytes(ids)
        self._dropped.add(digests(ids))
        self._req_head = new_head
        if new_head == self._req_tail:
            self._row_head = self._row_tail
        else:
            self._row_head = int(self._first_row[new_head % self.max_rows])

    def _take_ids(self, new_head: int) -> list[str]:
        """The ids of requests [head, new_head), off the front of the queue."""
        taken: list[str] = []
        chunks = self._id_chunks
        while chunks and chunks[0][0] < new_head:
            first, ids = chunks.popleft()
            end = first + len(ids)
            if end > new_head:  # the rest of this fold's ids stay
                chunks.appendleft((new_head, ids[new_head - first :]))
                ids = ids[: new_head - first]
            taken += ids
        return taken


def _str_bytes(ids: list[str]) -> int:
    """What the ids cost as str objects: 49 bytes and one a character for ASCII (request ids are ASCII)."""
    return _STR_BYTES * len(ids) + sum(map(len, ids))
