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

Memory per model version, bounded by the configuration:

    windows  = ceil(horizon_s / window_s) + 2          (ring, current, total since start)
    memory  ≈ windows × Σ_features size(feature) + queue_size × bytes(one batch's inputs + outputs)

    size(numeric, baseline with E edges)  = 11 × 8 + (E + 1) × 16 + 16 bytes
    size(numeric, no baseline)            = 11 × 8 bytes + KLL(k)  (KLL(200) ≤ ~3 KB at any n;
                                             600 retained floats at n = 10^5, grows ~log n)
    size(categorical, V vocabulary items) = (V + 3) × 8 bytes + FI(lg)
    size(bytes)                           = 7 × 8 bytes + FI(lg)
    FI(lg) ≤ 0.75 × 2^lg × (ITEM_MAX_CHARS + ~60) bytes, allocated on the first unseen value
           (lg = 7: ≤ 96 items, ~12 KB)

For example 100 baseline-binned numeric columns with 104 edges, 1 h of 60 s windows:
62 × 100 × 1.8 KB ≈ 11 MB; without a baseline, 62 × 100 × ~3 KB ≈ 19 MB at most.
An export builds a JSON document of the same order in size; ``since`` keeps it small.
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
from typing import Any

import numpy as np

from serve.input_stats import schema
from serve.input_stats.baseline import Baseline
from serve.input_stats.blocks import Block, Group
from serve.input_stats.views import Extractor, ViewOptions, build_extractors
from serve.input_stats.windows import ServerInstance, Window, WindowRing, window_start
from serve.types import TensorSpec

log = logging.getLogger(__name__)

# The worker folds at most this many queued rows into one update: big enough to amortise
# numpy's per-call overhead over many small batches, small enough to keep temporaries small.
COALESCE_ROWS = 4096


@dataclass(frozen=True, slots=True)
class StatsOptions:
    window_s: float = 60.0
    horizon_s: float = 3600.0
    sample_rate: float = 1.0  # Bernoulli row sampling in (0, 1]
    max_rows_per_batch: int | None = None  # then a uniform sample of this many rows
    queue_size: int = 256  # batches waiting for the worker; beyond it batches are dropped and counted
    # The worker starts at most one update per interval (unless the queue is half full), so under
    # load queued batches are coalesced and the fixed cost per update, paid holding the GIL that
    # the event loop needs, is bounded: at 0.1 s, 10 updates/s at most (measured at concurrency 64 on
    # the small bench model: the worker thread's CPU fell from 6% to 2% of a core going from 0.02 s to 0.1 s).
    min_update_interval_s: float = 0.1
    kll_k: int = 200
    frequent_lg: int = 7
    max_columns: int = 256
    max_classes: int = 1000

    def __post_init__(self) -> None:
        if not 0 < self.sample_rate <= 1:
            raise ValueError("sample_rate must be in (0, 1]")
        if self.queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        if self.max_rows_per_batch is not None and self.max_rows_per_batch < 1:
            raise ValueError("max_rows_per_batch must be at least 1")
        if self.min_update_interval_s < 0:
            raise ValueError("min_update_interval_s must not be negative")

    def views(self) -> ViewOptions:
        return ViewOptions(self.max_columns, self.max_classes, self.kll_k, self.frequent_lg)


@dataclass(slots=True)
class _Item:
    t: float
    rows: int
    tensors: dict[str, np.ndarray]  # inputs and outputs, keyed "input:<name>" / "output:<name>"


def _rows(tensors: Mapping[str, np.ndarray]) -> int:
    for array in tensors.values():
        return int(array.shape[0]) if array.ndim else 1
    return 0


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
        self._drops: dict[float, list[int]] = {}  # window start → [batches, rows, seq, closed]
        self._applying_from: float | None = None  # the oldest time among the items the worker has taken
        self._max_drop_windows = math.ceil(options.horizon_s / options.window_s) + 2
        self._counters = dict.fromkeys(
            ("batches_submitted", "rows_submitted", "batches_dropped", "rows_dropped", "batches_recorded",
             "rows_recorded", "rows_sampled_out", "tensors_skipped", "errors"),
            0,
        )  # fmt: skip
        self._thread = threading.Thread(target=self._run, name=f"stats-{model_name}-{self.version}", daemon=True)
        if start:
            self._thread.start()

    # ---------------------------------------------------------------- hot path

    def submit(self, inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]) -> None:
        keys = self._tensor_keys
        tensors = {keys.get(("input", k)) or self._tensor_key("input", k): v for k, v in inputs.items()}
        for k, v in outputs.items():
            tensors[keys.get(("output", k)) or self._tensor_key("output", k)] = v
        rows = _rows(tensors)
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
                start = window_start(t, self.options.window_s)
                if start not in self._drops and len(self._drops) >= self._max_drop_windows:
                    del self._drops[next(iter(self._drops))]  # the oldest: past the horizon by now
                drop = self._drops.setdefault(start, [0, 0, 0, 0])
                drop[0] += 1
                drop[1] += rows
                drop[2] = next(self._seq)
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

    def _sample(self, item: _Item) -> tuple[dict[str, np.ndarray], int]:
        o = self.options
        n = item.rows
        if o.sample_rate >= 1 and (o.max_rows_per_batch is None or n <= o.max_rows_per_batch):
            return item.tensors, n
        keep = np.arange(n)
        if o.sample_rate < 1:
            keep = np.flatnonzero(self._rng.random(n) < o.sample_rate)
        if o.max_rows_per_batch is not None and keep.size > o.max_rows_per_batch:
            keep = np.sort(self._rng.choice(keep, o.max_rows_per_batch, replace=False))
        sampled = {k: (v[keep] if v.ndim and v.shape[0] == n else v) for k, v in item.tensors.items()}
        return sampled, int(keep.size)

    def _apply(self, items: list[_Item]) -> None:
        # Sample, then group consecutive items by window; each group becomes one update.
        groups: list[tuple[float, list[dict[str, np.ndarray]], int, int]] = []
        for item in items:
            tensors, kept = self._sample(item)
            start = window_start(item.t, self.options.window_s)
            if groups and groups[-1][0] == start:
                _, batch, rows, out = groups[-1]
                batch.append(tensors)
                groups[-1] = (start, batch, rows + kept, out + item.rows - kept)
            else:
                groups.append((start, [tensors], kept, item.rows - kept))
        for start, batches, rows, sampled_out in groups:
            updates = self._extract(_coalesce(batches))
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

    def counters(self) -> dict[str, int]:
        """Monotonic counters since start (for Prometheus: rows recorded, sampled out, dropped, …)."""
        with self._lock:
            snapshot = dict(self._counters)
            snapshot["queue_depth"] = len(self._queue)
        return snapshot

    # ---------------------------------------------------------------- export

    def _features(self, window: Window) -> dict[str, Block]:
        out: dict[str, Block] = {}
        for names, group in zip(self._names, window.groups, strict=True):
            out.update(zip(names, group.to_json(), strict=True))
        return out

    def export(self, since: int = 0) -> dict[str, Any]:
        """The statistics document (schema.py); only windows changed after sequence ``since``."""
        now = self._clock()
        o = self.options
        with self._state:
            self._ring.evict(now)
            with self._lock:
                cutoff = now - o.horizon_s
                for start in [s for s in self._drops if s + o.window_s <= cutoff]:
                    del self._drops[start]
                self._close_settled(self._settled_until(now))
                seq = next(self._seq)
                drops = {s: list(d) for s, d in self._drops.items()}
                counters = dict(self._counters)
                counters["queue_depth"] = len(self._queue)
            since_reset = since >= seq
            if since_reset:
                since = 0
            by_start = {w.start: w for w in self._ring.windows()}
            windows = []
            for start in sorted(by_start.keys() | drops.keys()):
                window = by_start.get(start)
                drop = drops.get(start, [0, 0, 0])
                if window is None:
                    window = Window(start, start + o.window_s, self._new_groups())
                w_seq = max(window.seq, drop[2])
                if w_seq <= since:
                    continue
                windows.append(
                    {
                        "start": window.start,
                        "end": window.end,
                        "closed": window.closed if start in by_start else bool(drop[3]),
                        "seq": w_seq,
                        "batches": window.batches,
                        "rows": window.rows,
                        "rows_sampled_out": window.rows_sampled_out,
                        "batches_dropped": drop[0],
                        "rows_dropped": drop[1],
                        "features": self._features(window),
                    }
                )
            total = self._ring.total(now)
            total_json = {
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
        counters["queue_size"] = o.queue_size
        return {
            "format": schema.FORMAT,
            "format_version": schema.FORMAT_VERSION,
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
            "total": total_json,
            "windows": windows,
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
        for start, drop in self._drops.items():
            if not drop[3] and start + self.options.window_s <= settled:
                drop[3] = 1
                drop[2] = next(self._seq)

    def export_json(self, since: int = 0) -> bytes:
        return schema.encode(self.export(since))


def _coalesce(batches: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    """One concatenated batch when every batch has the same tensors with the same row shapes."""
    if len(batches) == 1:
        return batches
    first = batches[0]
    for b in batches[1:]:
        if b.keys() != first.keys():
            return batches
        for k, v in b.items():
            f = first[k]
            if v.ndim == 0 or v.shape[1:] != f.shape[1:] or v.dtype != f.dtype:
                return batches
    return [{k: np.concatenate([b[k] for b in batches]) for k in first}]
