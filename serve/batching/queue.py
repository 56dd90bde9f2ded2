"""The waiting room: pending requests by priority level, and the choice of the next batch.

Requests leave the queue in three ways (taken into a batch, cancelled by their caller, expired);
each only flips ``queued`` and the counters, and the deque entry is dropped lazily once it reaches
the head. That keeps every exit O(1) and every deque mutation out of the scans.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass

import numpy as np

from serve.batching.policy import BatchingPolicy
from serve.batching.result import BatchResult


@dataclass(slots=True, eq=False)
class PendingRequest:
    inputs: dict[str, np.ndarray]
    rows: int  # first dimension shared by every input (1 for a model that does not batch)
    cost: int  # rows it takes from max_batch_size: at least 1, as in Triton
    key: Hashable  # (name, dtype, shape[1:]) of every input: only equal keys share a batch
    level: int  # queue index, 0 = highest priority
    enqueue_ns: int
    deadline_ns: int  # 0 = none
    # The caller awaits this future and nothing else, so one caller's cancellation touches
    # only its own request (STYLE habit 4). Resolve it only if not done.
    future: asyncio.Future[BatchResult]
    queued: bool = True
    timer: asyncio.TimerHandle | None = None
    # Asked just before the request runs: True when its caller has gone (an HTTP client that
    # disconnected), so it is dropped without running. Cheaper than a watcher task per request.
    client_gone: Callable[[], bool] | None = None
    # The request's trace context when it is traced (serve/tracing), opaque to the batcher: its batch links to it.
    trace: object | None = None

    @property
    def live(self) -> bool:
        return self.queued and not self.future.done()


class RequestQueue:
    __slots__ = ("_levels", "_sizes", "size")

    def __init__(self, levels: int) -> None:
        self._levels: list[deque[PendingRequest]] = [deque() for _ in range(levels)]
        self._sizes = [0] * levels
        self.size = 0  # requests waiting, all levels

    def level_size(self, level: int) -> int:
        return self._sizes[level]

    def push(self, request: PendingRequest) -> None:
        self._levels[request.level].append(request)
        self._sizes[request.level] += 1
        self.size += 1

    def discard(self, request: PendingRequest) -> bool:
        """Take ``request`` out of the queue; False if it had already left."""
        if not request.queued:
            return False
        request.queued = False
        self._sizes[request.level] -= 1
        self.size -= 1
        return True

    def __iter__(self) -> Iterator[PendingRequest]:
        """Live requests, highest level first, in arrival order within a level."""
        for waiting in self._levels:
            self._drop_gone_heads(waiting)
            for request in waiting:
                if request.live:
                    yield request

    def oldest_enqueue_ns(self) -> int | None:
        oldest: int | None = None
        for waiting in self._levels:
            self._drop_gone_heads(waiting)
            if waiting and (oldest is None or waiting[0].enqueue_ns < oldest):
                oldest = waiting[0].enqueue_ns
        return oldest

    def drain(self) -> list[PendingRequest]:
        """Remove and return every request still waiting."""
        remaining = [request for waiting in self._levels for request in waiting if request.queued]
        for request in remaining:
            self.discard(request)
        for waiting in self._levels:
            waiting.clear()
        return remaining

    @staticmethod
    def _drop_gone_heads(waiting: deque[PendingRequest]) -> None:
        while waiting and not waiting[0].queued:
            waiting.popleft()


def select_batch(
    queue: RequestQueue, policy: BatchingPolicy, now_ns: int, hold_ns: int
) -> tuple[list[PendingRequest], int]:
    """Choose the next batch without removing it from the queue.

    Returns ``(batch, 0)`` to run ``batch`` now, ``([], until_ns)`` to hold the queue until
    ``until_ns``, or ``([], 0)`` when nothing is waiting. ``hold_ns`` is the delay the scheduler may
    hold for (0 = never hold).

    Triton's rules (``GetDynamicBatch``, PROTOCOL.md section 5). The largest preferred size (without
    preferred sizes, max_batch_size) caps the batch until the delay has expired. The batch goes now
    when (a) its rows reach that cap, (b) a waiting request would take it past the cap, or (c) a
    waiting request's shape differs from the batch's; a batch that reached a preferred size goes
    now as that size. Otherwise it is held until the delay, counted from the oldest waiting
    request, expires, and then goes with whatever fits in max_batch_size.
    """
    if policy.max_batch_size == 0 or not policy.dynamic:
        for request in queue:
            return [request], 0
        return [], 0

    limit = policy.max_batch_size
    preferred = policy.preferred_batch_sizes  # sorted
    cap = preferred[-1] if preferred else limit
    oldest = queue.oldest_enqueue_ns()
    hold_until = (oldest if oldest is not None else now_ns) + hold_ns
    expired = hold_ns > 0 and now_ns >= hold_until
    fill_to = limit if expired else cap
    batch: list[PendingRequest] = []
    key: Hashable = None
    rows = 0
    preferred_prefix = 0  # length of the longest prefix of batch whose rows are a preferred size
    send_now = False
    # The head is the oldest request of the highest level; later compatible requests join it and
    # incompatible ones stay for a later batch, which starts from the oldest of them. A request
    # passed over is a reason not to hold: it waits behind this batch.
    for request in queue:
        if batch:
            if request.key != key or rows + request.cost > fill_to:
                send_now = True  # rules (b) and (c)
                continue
        else:
            key = request.key
        batch.append(request)
        rows += request.cost
        if rows in preferred:
            preferred_prefix = len(batch)
        if rows >= fill_to:
            break

    if not batch:
        return [], 0
    if preferred_prefix and not expired:
        return batch[:preferred_prefix], 0
    if hold_ns == 0 or expired or send_now or rows >= cap:  # rule (a): rows >= cap
        return batch, 0
    return [], hold_until
