"""The bounded queue between the event loop and a payload log sink.

``EventQueue.offer(line)`` runs on the event loop for every encoded event: O(1) under a lock that is
only ever held for O(1) or O(batch) list work, never across I/O. When the queue is full, by events or
by bytes, the *new* event is dropped and counted: a slow or dead sink costs memory up to the ceiling
and then only counted drops, never a slower request (KServe's logger grows without bound instead,
kserve#6167). One daemon thread hands batches to ``sink.write_batch``. The queue does not retry: a
sink retries in its own way (the HTTP sink with back-off; a file has nothing to wait for), and what
it finally gives up on is counted as dropped with reason "sink".

Accounting: an event is ``queued`` from the moment it is accepted until the sink has written it or
given up on it, so the batch in the sink's hands is still queued (and still held in memory), and
``offered == written + dropped + queued`` holds in every ``counters()`` snapshot.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

__all__ = ["DROP_REASONS", "DropReason", "EventQueue", "QueueCounters", "Sink", "SinkWriteError"]

log = logging.getLogger(__name__)

# "full": no room (events or bytes) when offered; "sink": the sink gave up on it; "closed": offered
# after close() began, or still queued when close() ran out of time.
DropReason = Literal["full", "sink", "closed"]
DROP_REASONS: tuple[DropReason, ...] = ("full", "sink", "closed")

MiB = 1024 * 1024
# Distinct failure messages remembered so that each is logged once; past this, failures are only counted.
_MAX_LOGGED_MESSAGES = 64


class Sink(Protocol):
    def write_batch(self, lines: list[bytes]) -> None:
        """Write every line (each one encoded event ending in "\\n"), retrying as the sink sees fit.

        Raise when giving up: ``SinkWriteError`` says how many of the lines were lost (the rest were
        written); any other exception means all of them were.
        """

    def close(self) -> None:
        """Release the sink. Called once, from the thread that closes the queue, possibly while
        ``write_batch`` still runs in the queue's thread (its flush ran out of time): then it must make
        that call give up soon, and must not block on it."""


class SinkWriteError(Exception):
    """A sink gave up on ``failed`` of the lines of one batch (the others were written)."""

    def __init__(self, message: str, failed: int) -> None:
        super().__init__(message)
        self.failed = failed


@dataclass(frozen=True, slots=True)
class QueueCounters:
    offered: int
    written: int
    dropped: int  # all reasons
    dropped_bytes: int
    dropped_full: int
    dropped_sink: int
    dropped_closed: int
    queued: int  # accepted, not yet written or given up on (includes the batch the sink holds)
    queued_bytes: int


class EventQueue:
    def __init__(
        self,
        sink: Sink,
        *,
        max_events: int = 10_000,
        max_bytes: int = 64 * MiB,
        batch: int = 256,
        clock: Callable[[], float] = time.monotonic,
        on_drop: Callable[[str, int], None] | None = None,
    ) -> None:
        if max_events < 1 or max_bytes < 1 or batch < 1:
            raise ValueError("max_events, max_bytes and batch must be at least 1")
        self.sink = sink
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.batch = batch
        self._clock = clock
        self._on_drop = on_drop
        self._lock = threading.Lock()
        self._has_work = threading.Condition(self._lock)
        self._lines: deque[bytes] = deque()
        self._worker_idle = False  # waiting on _has_work: only then does offer need to notify it
        self._closing = False
        self._offered = 0
        self._written = 0
        self._dropped = dict.fromkeys(DROP_REASONS, 0)
        self._dropped_bytes = 0
        self._queued = 0
        self._queued_bytes = 0
        self._logged: set[str] = set()
        self._failing_since: float | None = None  # set while the sink keeps giving up
        self._closed: bool | None = None  # close()'s answer, once it has run
        self._thread = threading.Thread(target=self._run, name="serve-payload-log", daemon=True)
        self._thread.start()

    # ---------------------------------------------------------------- event loop

    def offer(self, line: bytes) -> bool:
        """Queue one encoded event; False when it was dropped (full, or closing). Never blocks on I/O."""
        size = len(line)
        with self._lock:
            self._offered += 1
            reason: DropReason | None = None
            if self._closing:
                reason = "closed"
            elif self._queued >= self.max_events or self._queued_bytes + size > self.max_bytes:
                reason = "full"
            if reason is not None:
                self._dropped[reason] += 1
                self._dropped_bytes += size
            else:
                self._lines.append(line)
                self._queued += 1
                self._queued_bytes += size
                if self._worker_idle:
                    self._has_work.notify()
                return True
        self._report_drop(reason, 1)
        return False

    def refuse_if_full(self, events: int) -> bool:
        """True, with ``events`` counted as offered and dropped ("full"), when the queue has no room left: the caller
        then skips encoding events that could only be dropped (a sink that hangs costs no encoding)."""
        with self._lock:
            if self._closing or (self._queued < self.max_events and self._queued_bytes < self.max_bytes):
                return False
            self._offered += events
            self._dropped["full"] += events
        self._report_drop("full", events)
        return True

    # ---------------------------------------------------------------- counters

    def counters(self) -> QueueCounters:
        with self._lock:
            d = self._dropped
            return QueueCounters(
                offered=self._offered,
                written=self._written,
                dropped=sum(d.values()),
                dropped_bytes=self._dropped_bytes,
                dropped_full=d["full"],
                dropped_sink=d["sink"],
                dropped_closed=d["closed"],
                queued=self._queued,
                queued_bytes=self._queued_bytes,
            )

    @property
    def offered(self) -> int:
        return self._offered

    @property
    def written(self) -> int:
        return self._written

    @property
    def dropped(self) -> int:
        return sum(self._dropped.values())

    @property
    def dropped_bytes(self) -> int:
        return self._dropped_bytes

    @property
    def queued(self) -> int:
        return self._queued

    @property
    def queued_bytes(self) -> int:
        return self._queued_bytes

    def dropped_by_reason(self) -> dict[DropReason, int]:
        with self._lock:
            return dict(self._dropped)

    # ---------------------------------------------------------------- shutdown

    def close(self, timeout_s: float) -> bool:
        """Write what is queued within ``timeout_s`` (the SIGTERM path), stop the thread, close the sink.

        True when everything queued was handed to the sink in time (some may still have been dropped by
        it). Otherwise what was still waiting is dropped as "closed", and the batch the sink holds stays
        ``queued`` until the sink, told to close, gives up on it. Later offers are dropped as "closed".
        """
        if self._closed is not None:
            return self._closed
        deadline = self._clock() + max(0.0, timeout_s)
        with self._lock:
            self._closing = True
            self._has_work.notify()
        self._thread.join(max(0.0, deadline - self._clock()))
        flushed = not self._thread.is_alive()
        if not flushed:
            with self._lock:
                left, left_bytes = len(self._lines), sum(map(len, self._lines))
                self._lines.clear()
                self._queued -= left
                self._queued_bytes -= left_bytes
                self._dropped["closed"] += left
                self._dropped_bytes += left_bytes
            if left:
                log.warning("payload log: %d events not written before the shutdown deadline", left)
                self._report_drop("closed", left)
        try:
            self.sink.close()
        except Exception:
            log.exception("payload log: closing the sink failed")
        self._closed = flushed
        return flushed

    # ---------------------------------------------------------------- drain thread

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._lines and not self._closing:
                    self._worker_idle = True
                    try:
                        self._has_work.wait()
                    finally:
                        self._worker_idle = False
                if not self._lines:
                    return
                n = min(self.batch, len(self._lines))
                lines = [self._lines.popleft() for _ in range(n)]
            self._write(lines)

    def _write(self, lines: list[bytes]) -> None:
        failed = 0
        error: Exception | None = None
        try:
            self.sink.write_batch(lines)
        except SinkWriteError as exc:
            failed, error = max(0, min(exc.failed, len(lines))), exc
        except Exception as exc:
            failed, error = len(lines), exc
        # The lines lost in a partial failure are not known by position; bytes are counted pro rata.
        size = sum(map(len, lines))
        lost_bytes = size if failed == len(lines) else size * failed // len(lines)
        with self._lock:
            self._written += len(lines) - failed
            self._queued -= len(lines)
            self._queued_bytes -= size
            self._dropped["sink"] += failed
            self._dropped_bytes += lost_bytes
        if error is not None:
            self._note_failure(error, failed)
        elif self._failing_since is not None:
            log.warning("payload log: the sink writes again after %.1f s", self._clock() - self._failing_since)
            self._failing_since = None

    def _note_failure(self, error: Exception, failed: int) -> None:
        if self._failing_since is None:
            self._failing_since = self._clock()
        message = f"{type(error).__name__}: {error}"
        if message not in self._logged and len(self._logged) < _MAX_LOGGED_MESSAGES:
            self._logged.add(message)
            log.error("payload log: the sink gave up (%s); its events are dropped and counted, logged once", message)
        if failed:
            self._report_drop("sink", failed)

    def _report_drop(self, reason: DropReason, count: int) -> None:
        if self._on_drop is None:
            return
        try:
            self._on_drop(reason, count)
        except Exception:
            # offer() must never raise: a broken hook costs its own counts, not the request.
            if "on_drop" not in self._logged:
                self._logged.add("on_drop")
                log.exception("payload log: the on_drop hook failed")
