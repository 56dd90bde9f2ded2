"""Tumbling windows over wall-clock time, kept for a horizon, plus the running total since start.

Window boundaries are multiples of ``window_s`` since the Unix epoch, so the windows of
every replica line up and merge by their start time. A batch belongs to the window of
the time it was submitted; one that arrives after a newer window has opened (clock
stepping back, several submitting threads) is counted in the newest window instead,
so a window that was folded into the total never changes again.

Readers tell processes apart by ``ServerInstance``: a random id per process start, the
replica's name (hostname unless configured) and the start time. A reader that sees a
new id for a replica it knows has seen a restart; ids never repeat, so windows from
before and after the restart are distinct and are both counted, once each.
"""

from __future__ import annotations

import math
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from serve.input_stats.blocks import Group
from serve.input_stats.document import InstanceJson


@dataclass(frozen=True, slots=True)
class ServerInstance:
    instance_id: str
    replica: str
    start_time: float

    @classmethod
    def create(cls, replica: str | None = None, clock: Callable[[], float] = time.time) -> ServerInstance:
        return cls(uuid.uuid4().hex, replica or socket.gethostname(), clock())

    def to_json(self) -> InstanceJson:
        return {"id": self.instance_id, "replica": self.replica, "start_time": self.start_time}


def window_start(t: float, window_s: float) -> float:
    return float(math.floor(t / window_s) * window_s)


@dataclass(slots=True)
class Window:
    start: float
    end: float
    groups: list[Group]
    seq: int = 0  # the recorder's sequence number at this window's last change (closing is a change)
    closed: bool = False  # set once by the recorder when no row it has accepted can still fall in this window
    batches: int = 0
    rows: int = 0  # rows recorded (after sampling)
    rows_sampled_out: int = 0

    def absorb(self, other: Window) -> None:
        for mine, theirs in zip(self.groups, other.groups, strict=True):
            mine.merge(theirs)
        self.batches += other.batches
        self.rows += other.rows
        self.rows_sampled_out += other.rows_sampled_out
        self.seq = max(self.seq, other.seq)


@dataclass(slots=True)
class WindowRing:
    """The windows of one recorder. Not thread-safe: the recorder serialises access."""

    window_s: float
    horizon_s: float
    new_groups: Callable[[], list[Group]]
    start_time: float
    _windows: dict[float, Window] = field(default_factory=dict)
    _current: Window | None = None
    _closed: Window | None = None  # every window before the current one, folded

    def __post_init__(self) -> None:
        if self.window_s <= 0 or self.horizon_s < self.window_s:
            raise ValueError("need window_s > 0 and horizon_s >= window_s")
        self._closed = Window(self.start_time, self.start_time, self.new_groups())

    def window_for(self, t: float) -> Window:
        start = window_start(t, self.window_s)
        current = self._current
        if current is not None and start <= current.start:
            return current
        if current is not None:
            self._fold(current)
        window = Window(start, start + self.window_s, self.new_groups())
        self._windows[start] = window
        self._current = window
        self.evict(t)
        return window

    def _fold(self, window: Window) -> None:
        assert self._closed is not None
        self._closed.absorb(window)
        self._current = None

    def evict(self, now: float) -> None:
        """Forget windows that ended more than ``horizon_s`` ago (the total keeps their counts)."""
        cutoff = now - self.horizon_s
        for start in [s for s, w in self._windows.items() if w.end <= cutoff]:
            window = self._windows.pop(start)
            if window is self._current:
                self._fold(window)

    def windows(self) -> list[Window]:
        return sorted(self._windows.values(), key=lambda w: w.start)

    def total(self, now: float) -> Window:
        """Everything since start: a fresh copy, safe to serialise after the lock is released."""
        assert self._closed is not None
        total = Window(self.start_time, now, [g.copy() for g in self._closed.groups])
        total.batches, total.rows = self._closed.batches, self._closed.rows
        total.rows_sampled_out, total.seq = self._closed.rows_sampled_out, self._closed.seq
        if self._current is not None:
            total.absorb(self._current)
        return total
