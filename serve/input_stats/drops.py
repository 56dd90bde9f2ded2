"""Batches the statistics queue had no room for, counted per window.

A dropped batch is never recorded, but a reader must learn that its window is incomplete, so
drops are counted per window start, with their own sequence number and closing, exactly like
recorded rows; a window may hold only drops. Bounded like the window ring: the oldest window
goes when a new one would exceed the horizon's count.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(slots=True)
class Drops:
    batches: int = 0
    rows: int = 0
    seq: int = 0  # the recorder's sequence number at the last change
    closed: bool = False


class DroppedBatches:
    """Not thread-safe: the recorder holds its queue lock around every call."""

    def __init__(self, window_s: float, horizon_s: float) -> None:
        self.window_s = window_s
        self._max_windows = math.ceil(horizon_s / window_s) + 2
        self._by_start: dict[float, Drops] = {}

    def __len__(self) -> int:
        return len(self._by_start)

    def add(self, start: float, rows: int, seq: int) -> None:
        if start not in self._by_start and len(self._by_start) >= self._max_windows:
            del self._by_start[next(iter(self._by_start))]  # the oldest: past the horizon by now
        drops = self._by_start.setdefault(start, Drops())
        drops.batches += 1
        drops.rows += rows
        drops.seq = seq

    def evict(self, cutoff: float) -> None:
        """Forget windows that ended by ``cutoff``."""
        for start in [s for s in self._by_start if s + self.window_s <= cutoff]:
            del self._by_start[start]

    def close_settled(self, settled: float, next_seq: Callable[[], int]) -> None:
        """Close every window that ended by ``settled``, once, as a change with its own sequence number."""
        for start, drops in self._by_start.items():
            if not drops.closed and start + self.window_s <= settled:
                drops.closed = True
                drops.seq = next_seq()

    def snapshot(self) -> dict[float, Drops]:
        return {start: Drops(d.batches, d.rows, d.seq, d.closed) for start, d in self._by_start.items()}
