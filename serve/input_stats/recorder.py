"""Per model version input/output statistics, updated off the request path.

``StatsRecorder.submit(inputs, outputs)`` is called once per executed batch after its
callers are answered. It never blocks: it stamps the time and appends a reference to
the arrays to a bounded queue (callers must not mutate them afterwards). If the queue
is full the batch is dropped and counted (``batches_dropped``/``rows_dropped``, also
per window), which is what keeps a slow statistics worker from ever slowing inference.
ONE background thread drains the queue: it samples rows (``sample_rate``,
``max_rows_per_batch``), coalesces queued batches of one window into one update, and
applies vectorised numpy updates to the window's groups (views.py, blocks.py). It starts
at most one update per ``min_update_interval_s`` unless the queue is half full, which
bounds the fixed per-update cost it pays while holding the GIL the event loop needs.
What that costs in memory is in options.py; the document an export writes is in schema.py.
"""

from __future__ import annotations

import itertools
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from serve.input_stats.baseline import Baseline
from serve.input_stats.batches import coalesce, rows_of, sample_rows
from serve.input_stats.blocks import Block, Group
from serve.input_stats.document import Counters, StatsDocument, TotalJson, WindowJson
from serve.input_stats.drops import DroppedBatches, Drops
from serve.input_stats.options import StatsOptions
from serve.input_stats.schema import FORMAT, FORMAT_VERSION, encode
from serve.input_stats.views import Extractor, build_extractors
from serve.input_stats.windows import ServerInstance, Window, WindowRing, window_start
from serve.types import TensorSpec

__all__ = ["COALESCE_ROWS", "StatsOptions", "StatsRecorder"]

log = logging.getLogger(__name__)

# The worker folds at most this many queued rows into one update: big enough to amortise
# numpy's per-call overhead over many small batches, small enough to keep temporaries small.
COALESCE_ROWS = 4096


@dataclass(slots=True)
class _Item:
    t: float
    rows: int
    tensors: dict[str, np.ndarray]  # inputs and outputs, keyed "input:<name>" / "output:<name>"


class StatsRecorder:
    def __init__(
        self,
        model_name: str,
        version: str | int,
        inputs: Sequence[TensorSpec],
        outputs: Sequence[TensorSpec],
        *,
        instance: ServerInstance,
        baseline: Baseline | None = None,
        options: StatsOptions | None = None,
        clock: Callable[[], float] = time.time,
        seed: int | None = None,
        start: bool = True,
    ) -> None:
        self.model_name = model_name
        self.version = str(version)
        self.instance = instance
        self.baseline = baseline
        self.options = options = options or StatsOptions()
        self._clock = clock
        self._rng = np.random.default_rng(seed)
        view_options = options.views()
        self._extractors: list[Extractor] = build_extractors(inputs, "input", baseline, view_options)
        self._extractors += build_extractors(outputs, "output", baseline, view_options)
        self._names = [[f.name for f in ex.features] for ex in self._extractors]
        flat = [n for names in self._names for n in names]
        if len(set(flat)) != len(flat):
            raise ValueError(f"{model_name}: two features share a name; name the columns in the baseline")
        self._keys = [f"{ex.role}:{ex.tensor}" for ex in self._extractors]
        self._features_meta = [m for ex in self._extractors for m in ex.metadata()]
        self._ring = WindowRing(options.window_s, options.horizon_s, self._new_groups, instance.start_time)
        # _lock guards the queue and the submit-side counters; it is only ever held for O(1) work,
        # so submit cannot wait behind an update. _state guards the windows (held during updates).
        self._lock = threading.Lock()
        self._has_work = threading.Condition(self._lock)
        self._drained = threading.Condition(self._lock)
        self._state = threading.Lock()
        self._queue: deque[_Item] = deque()
        self._pending = 0  # queued or being applied
        self._worker_idle = False  # waiting on _has_work: only then does submit need to notify it
        self._tensor_keys: dict[tuple[str, str], str] = {}  # (role, name) -> "role:name", made once
        self._closing = False
        self._hurry = threading.Event()  # cuts the worker's pause short: closing, or the queue half full
        self._urgent_depth = max(1, options.queue_size // 2)
        self._seq = itertools.count(1)
        self._drops = DroppedBatches(options.window_s, options.horizon_s)
        self._applying_from: float | None = None  # the oldest time among the items the worker has taken
        self._counters: Counters = {
            "batches_submitted": 0, "rows_submitted": 0, "batches_dropped": 0, "rows_dropped": 0,
            "batches_recorded": 0, "rows_recorded": 0, "rows_sampled_out": 0, "tensors_skipped": 0, "errors": 0,
        }  # fmt: skip
        self._thread = threading.Thread(target=self._run, name=f"stats-{model_name}-{self.version}", daemon=True)
        if start:
            self._thread.start()

    # ---------------------------------------------------------------- hot path

    def submit(self, inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]) -> None:
        keys = self._tensor_keys
        tensors = {keys.get(("input", k)) or self._tensor_key("input", k): v for k, v in inputs.items()}
        for k, v in outputs.items():
            tensors[keys.get(("output", k)) or self._tensor_key("output", k)] = v
        rows = rows_of(tensors)
        c = self._counters
        with self._lock:
            # Stamped under the lock, so an export that finds the queue without a row of a window knows
            # that no later submit can still bring one (see _settled_until).
            t = self._clock()
            c["batches_submitted"] += 1
            c["rows_submitted"] += rows
            if self._closing or len(self._queue) >= self.options.queue_size:
                c["batches_dropped"] += 1
                c["rows_dropped"] += rows
                self._drops.add(window_start(t, self.options.window_s), rows, next(self._seq))
                return
            self._queue.append(_Item(t, rows, tensors))
            self._pending += 1
            if self._worker_idle:
                self._has_work.notify()
            if len(self._queue) >= self._urgent_depth and not self._hurry.is_set():
                self._hurry.set()

    def _tensor_key(self, role: str, name: str) -> str:
        key = self._tensor_keys[(role, name)] = f"{role}:{name}"
        return key

    # ---------------------------------------------------------------- worker

    def _run(self) -> None:
        interval = self.options.min_update_interval_s
        last = -math.inf
        while True:
            pause = last + interval - time.monotonic()
            if pause > 0:
                # Let batches gather (outside any lock, GIL released); close() or a half-full queue wakes us.
                self._hurry.wait(pause)
            with self._lock:
                if not self._closing and len(self._queue) < self._urgent_depth:
                    self._hurry.clear()
                while not self._queue and not self._closing:
                    self._worker_idle = True
                    try:
                        self._has_work.wait()
                    finally:
                        self._worker_idle = False
                if not self._queue:
                    return
                items = [self._queue.popleft()]
                rows = items[0].rows
                while self._queue and rows + self._queue[0].rows <= COALESCE_ROWS:
                    rows += self._queue[0].rows
                    items.append(self._queue.popleft())
                self._applying_from = min(item.t for item in items)
            last = time.monotonic()
            try:
                self._apply(items)
            except Exception:
                self._counters["errors"] += 1
                if self._counters["errors"] == 1:
                    log.exception("statistics update failed for %s version %s", self.model_name, self.version)
            finally:
                with self._lock:
                    self._applying_from = None
                    self._pending -= len(items)
                    if self._pending == 0:
                        self._drained.notify_all()

    def _apply(self, items: list[_Item]) -> None:
        # Sample, then group consecutive items by window; each group becomes one update.
        groups: list[tuple[float, list[dict[str, np.ndarray]], int, int]] = []
        for item in items:
            tensors, kept = sample_rows(item.tensors, item.rows, self.options, self._rng)
            start = window_start(item.t, self.options.window_s)
            if groups and groups[-1][0] == start:
                _, batch, rows, out = groups[-1]
                batch.append(tensors)
                groups[-1] = (start, batch, rows + kept, out + item.rows - kept)
            else:
                groups.append((start, [tensors], kept, item.rows - kept))
        for start, batches, rows, sampled_out in groups:
            updates = self._extract(coalesce(batches))
            with self._state:
                window = self._ring.window_for(start)
                for i, values in updates:
                    window.groups[i].update(values)
                window.batches += len(batches)
                window.rows += rows
                window.rows_sampled_out += sampled_out
                window.seq = next(self._seq)
                c = self._counters
                c["batches_recorded"] += len(batches)
                c["rows_recorded"] += rows
                c["rows_sampled_out"] += sampled_out

    def _extract(self, batches: list[dict[str, np.ndarray]]) -> list[tuple[int, np.ndarray]]:
        """Feature values per extractor, computed outside the state lock."""
        updates = []
        for tensors in batches:
            for i, (ex, key) in enumerate(zip(self._extractors, self._keys, strict=True)):
                array = tensors.get(key)
                if array is None:
                    continue
                if not ex.accepts(array):
                    self._counters["tensors_skipped"] += 1
                    continue
                if array.shape[0]:
                    updates.append((i, ex.extract(array)))
        return updates

    def _new_groups(self) -> list[Group]:
        return [ex.spec.new_group() for ex in self._extractors]

    # ---------------------------------------------------------------- control

    def flush(self, timeout_s: float | None = None) -> bool:
        """Wait until every queued batch is applied; False on timeout. For tests and shutdown."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._lock:
            while self._pending:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._drained.wait(remaining)
        return True

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop accepting, apply what is queued (up to ``timeout_s``), stop the worker."""
        with self._lock:
            self._closing = True
            self._has_work.notify_all()
        self._hurry.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def queue_depth(self) -> int:
        return len(self._queue)

    def counters(self) -> Counters:
        """Monotonic counters since start (for Prometheus: rows recorded, sampled out, dropped, …)."""
        with self._lock:
            snapshot = self._counters.copy()
            snapshot["queue_depth"] = len(self._queue)
        return snapshot

    # ---------------------------------------------------------------- export

    def _features(self, window: Window) -> dict[str, Block]:
        out: dict[str, Block] = {}
        for names, group in zip(self._names, window.groups, strict=True):
            out.update(zip(names, group.to_json(), strict=True))
        return out

    def export(self, since: int = 0) -> StatsDocument:
        """The statistics document (schema.py); only windows changed after sequence ``since``."""
        now = self._clock()
        o = self.options
        with self._state:
            seq, drops, counters = self._settle(now)
            since_reset = since >= seq
            if since_reset:
                since = 0
            windows = self._windows_json(drops, since)
            total = self._total_json(now, seq, counters)
        counters["queue_size"] = o.queue_size
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "model": {"name": self.model_name, "version": self.version},
            "instance": self.instance.to_json(),
            "generated_at": now,
            "seq": seq,
            "since": since,
            "since_reset": since_reset,
            "window_s": o.window_s,
            "horizon_s": o.horizon_s,
            "sampling": {"sample_rate": o.sample_rate, "max_rows_per_batch": o.max_rows_per_batch},
            "baseline": self.baseline.summary() if self.baseline is not None else None,
            "features": self._features_meta,
            "counters": counters,
            "total": total,
            "windows": windows,
        }

    def _settle(self, now: float) -> tuple[int, dict[float, Drops], Counters]:
        """Evict, close what has settled, and take the sequence number and counters the export shows.
        Call holding ``_state``."""
        self._ring.evict(now)
        with self._lock:
            self._drops.evict(now - self.options.horizon_s)
            self._close_settled(self._settled_until(now))
            counters = self._counters.copy()
            counters["queue_depth"] = len(self._queue)
            return next(self._seq), self._drops.snapshot(), counters

    def _windows_json(self, drops: dict[float, Drops], since: int) -> list[WindowJson]:
        """Windows changed after ``since``, with those that hold only drops. Call holding ``_state``."""
        by_start = {w.start: w for w in self._ring.windows()}
        windows: list[WindowJson] = []
        for start in sorted(by_start.keys() | drops.keys()):
            window = by_start.get(start)
            drop = drops.get(start, Drops())
            if window is None:
                window = Window(start, start + self.options.window_s, self._new_groups())
            w_seq = max(window.seq, drop.seq)
            if w_seq <= since:
                continue
            windows.append(
                {
                    "start": window.start,
                    "end": window.end,
                    "closed": window.closed if start in by_start else drop.closed,
                    "seq": w_seq,
                    "batches": window.batches,
                    "rows": window.rows,
                    "rows_sampled_out": window.rows_sampled_out,
                    "batches_dropped": drop.batches,
                    "rows_dropped": drop.rows,
                    "features": self._features(window),
                }
            )
        return windows

    def _total_json(self, now: float, seq: int, counters: Counters) -> TotalJson:
        total = self._ring.total(now)
        return {
            "start": self.instance.start_time,
            "end": now,
            "seq": seq,
            "batches": total.batches,
            "rows": total.rows,
            "rows_sampled_out": total.rows_sampled_out,
            "batches_dropped": counters["batches_dropped"],
            "rows_dropped": counters["rows_dropped"],
            "features": self._features(total),
        }

    def _settled_until(self, now: float) -> float:
        """The time before which every row this recorder accepted is already in its window: rows still queued
        or being applied hold it back. Call holding both locks."""
        settled = now
        if self._applying_from is not None:
            settled = min(settled, self._applying_from)
        if self._queue:
            settled = min(settled, min(item.t for item in self._queue))
        return settled

    def _close_settled(self, settled: float) -> None:
        """Mark every window that ended by ``settled`` closed, once, as a change with its own sequence number:
        a reader that saw it open (``since`` past its last update) receives the closed copy exactly once more.
        Call holding both locks."""
        for window in self._ring.windows():
            if not window.closed and window.end <= settled:
                window.closed = True
                window.seq = next(self._seq)
        self._drops.close_settled(settled, lambda: next(self._seq))

    def export_json(self, since: int = 0) -> bytes:
        return encode(self.export(since))
