"""The dynamic batcher: one per loaded model version, transport- and runtime-neutral.

A dispatch pass forms a batch whenever an instance is free and requests wait (Triton's
``GetDynamicBatch``, PROTOCOL.md section 5). A pass is scheduled on the event loop, at most one
at a time, by a new request, a finished execution, a withdrawn or expired request, a hold timer
or close(); nothing polls. It runs after the callbacks already ready, so requests that arrive
together (one read of several HTTP/2 streams, say) share a batch.

Each batch becomes one ``BatchExecution`` (execution.py), which owns it from then on. It runs right
in the pass when ``execute_now`` takes it (a model faster than a hand-off to a thread, on a free
instance): no task, no wake-up, its callers answered before the pass ends. Otherwise it runs as a
task of its own, so up to ``max_in_flight`` executions overlap.

Every caller awaits its own future and nothing else. An execution fails exactly its own callers
when anything in it goes wrong, and whatever ends it otherwise (a bug, cancellation, shutdown)
answers whoever is still waiting through its ``fail_unanswered``, so no path leaves a caller
waiting (STYLE habits 4, 5, 7 and 14).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Hashable, Mapping

import numpy as np

from serve.batching.execution import BatchExecution, Runner
from serve.batching.policy import BatchingPolicy
from serve.batching.queue import PendingRequest, RequestQueue, select_batch
from serve.batching.result import BatchResult, Execute, ExecuteNow
from serve.errors import (
    DeadlineExceeded,
    InvalidInput,
    ModelExecutionError,
    QueueFull,
    ServeError,
    ShuttingDown,
)
from serve.events import Observer, VersionKey

__all__ = ["Batcher", "BatchResult", "Execute", "ExecuteNow"]

logger = logging.getLogger(__name__)

# After the grace period, how long close() waits for cancelled executions to unwind.
_CANCEL_WAIT_S = 1.0


class Batcher:
    def __init__(
        self,
        execute: Execute,
        policy: BatchingPolicy,
        *,
        key: VersionKey,
        observer: Observer | None = None,
        clock: Callable[[], int] = time.monotonic_ns,
        execute_now: ExecuteNow | None = None,
    ) -> None:
        self._policy = policy
        self._name = f"{key.name}:{key.version}"
        self._clock = clock
        # execute_now is tried first for every batch, in the dispatch pass itself; a batch it declines goes to
        # execute, awaited in a task (execution.py).
        self._runner = Runner(key, self._name, policy.max_batch_size > 0, execute, execute_now, observer, clock)
        self._queue = RequestQueue(policy.level_count)
        self._hold_ns = policy.max_queue_delay_us * 1000 if policy.holds_requests else 0
        self._default_level = (policy.default_priority_level or policy.level_count) - 1
        self._queue_policies = [policy.queue_policy(level + 1) for level in range(policy.level_count)]
        self._executions: dict[asyncio.Task[None], BatchExecution] = {}  # running as tasks
        self._pass: asyncio.Handle | None = None  # the dispatch pass scheduled, if any
        self._hold_timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False  # no new requests; queued ones still run, without holding
        self._stopped = False  # no more dispatch passes
        self._drained: asyncio.Future[None] | None = None
        self._closer: asyncio.Task[None] | None = None

    @property
    def queue_depth(self) -> int:
        return self._queue.size

    @property
    def in_flight(self) -> int:
        return len(self._executions)

    def start(self) -> None:
        """Bind to the running loop (the first submit does it otherwise)."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()

    async def submit(
        self,
        inputs: dict[str, np.ndarray],
        *,
        priority: int = 0,
        timeout_us: int = 0,
        client_gone: Callable[[], bool] | None = None,
        trace: object | None = None,
    ) -> BatchResult:
        if self._closing:
            raise ShuttingDown(f"model {self._name!r} is shutting down")
        loop = self._loop
        if loop is None:
            self.start()
            loop = self._loop
            assert loop is not None
        # The core has checked the request (core/validation.py): when the model batches, every input
        # has the same first dimension, between 1 and max_batch_size.
        rows, key = self._rows_and_key(inputs)
        level = self._level_of(priority)
        queue_policy = self._queue_policies[level]
        if queue_policy.max_queue_size and self._queue.level_size(level) >= queue_policy.max_queue_size:
            raise QueueFull(
                f"model {self._name!r}: the queue already holds {queue_policy.max_queue_size} "
                "waiting requests (max_queue_size)"
            )
        now = self._clock()
        timeout = queue_policy.timeout_us(timeout_us)
        request = PendingRequest(
            inputs=inputs,
            rows=rows,
            cost=max(1, rows),
            key=key,
            level=level,
            enqueue_ns=now,
            deadline_ns=now + timeout * 1000 if timeout else 0,
            future=loop.create_future(),
            client_gone=client_gone,
            trace=trace,
        )
        if timeout:
            request.timer = loop.call_later(timeout / 1e6, self._on_deadline, request)
        self._queue.push(request)
        if self._pass is None:
            self._pass = loop.call_soon(self._dispatch_pass)
        try:
            return await request.future
        finally:
            # Still queued here means the caller was cancelled before its batch started: drop it.
            # The CancelledError itself propagates unchanged.
            if request.queued:
                self._withdraw(request)

    async def close(self, grace_s: float = 5.0) -> None:
        """Refuse new requests, run the queued ones within ``grace_s``, fail what remains after it."""
        self._closing = True
        if self._closer is None:
            self._closer = asyncio.get_running_loop().create_task(self._shut_down(grace_s))
        # Shielded: a cancelled close() must not leave the batcher half shut.
        await asyncio.shield(self._closer)

    # -- admission -------------------------------------------------------------------------------

    def _rows_and_key(self, inputs: Mapping[str, np.ndarray]) -> tuple[int, Hashable]:
        if self._policy.max_batch_size == 0:
            return 1, None  # the model does not batch: tensors go through as sent
        if len(inputs) == 1:  # the common case, without sorting
            ((name, array),) = inputs.items()
            return array.shape[0], ((name, array.dtype, array.shape[1:]),)
        rows = next(iter(inputs.values())).shape[0]
        return rows, tuple(sorted((n, array.dtype, array.shape[1:]) for n, array in inputs.items()))

    def _level_of(self, priority: int) -> int:
        levels = self._policy.priority_levels
        # As in Triton, a model without priority levels serves every priority alike.
        if priority == 0 or levels == 0:
            return self._default_level
        if not 0 < priority <= levels:
            allowed = f"1..{levels} or 0 for the default"
            raise InvalidInput(f"priority {priority} is not valid for model {self._name!r}: use {allowed}")
        return priority - 1

    # -- leaving the queue -----------------------------------------------------------------------

    def _withdraw(self, request: PendingRequest) -> None:
        if self._queue.discard(request):
            self._cancel_timer(request)
            self._wake()  # the oldest request, and so the hold deadline, may have changed
            self._check_drained()

    def _on_deadline(self, request: PendingRequest) -> None:
        if not request.queued:
            return
        assert self._loop is not None
        remaining_ns = request.deadline_ns - self._clock()
        if remaining_ns > 0:
            # The loop's timer and the injected clock disagree slightly; trust the clock.
            request.timer = self._loop.call_later(remaining_ns / 1e9, self._on_deadline, request)
            return
        request.timer = None
        if not request.future.done():
            waited_us = (self._clock() - request.enqueue_ns) // 1000
            request.future.set_exception(
                DeadlineExceeded(
                    f"request to model {self._name!r} waited {waited_us} us in the queue, past its timeout"
                )
            )
        self._withdraw(request)

    @staticmethod
    def _cancel_timer(request: PendingRequest) -> None:
        if request.timer is not None:
            request.timer.cancel()
            request.timer = None

    def _check_drained(self) -> None:
        if self._drained is not None and not self._drained.done() and self._queue.size == 0 and not self._executions:
            self._drained.set_result(None)

    # -- scheduling ------------------------------------------------------------------------------

    def _wake(self) -> None:
        """Schedule a dispatch pass, unless one already is."""
        if self._pass is None and not self._stopped and self._loop is not None:
            self._pass = self._loop.call_soon(self._dispatch_pass)

    def _dispatch_pass(self) -> None:
        self._pass = None
        if self._stopped:
            return
        try:
            self._dispatch()
        except Exception:
            # A bug in forming batches: fail the waiting callers instead of stranding them.
            logger.exception("batcher for model %r failed to form a batch", self._name)
            self._fail_queued(ModelExecutionError(f"model {self._name!r}: internal batching error"))

    def _dispatch(self) -> None:
        if self._hold_timer is not None:
            self._hold_timer.cancel()
            self._hold_timer = None
        hold_ns = 0 if self._closing else self._hold_ns
        while len(self._executions) < self._policy.max_in_flight and self._queue.size:
            now = self._clock()
            batch, hold_until_ns = select_batch(self._queue, self._policy, now, hold_ns)
            if not batch:
                if hold_until_ns:
                    assert self._loop is not None
                    self._hold_timer = self._loop.call_later((hold_until_ns - now) / 1e9, self._wake)
                # Otherwise only cancelled requests wait; their callers withdraw them shortly.
                return
            self._launch(batch)

    def _launch(self, batch: list[PendingRequest]) -> None:
        assert self._loop is not None
        for request in batch:
            self._queue.discard(request)
            self._cancel_timer(request)  # once started, a request is waited for normally
        execution = BatchExecution(self._runner, batch)
        if self._runner.execute_now is not None:
            try:
                finished = execution.run_now()
            except BaseException:
                # The safety net of the pass: a caller still unanswered here would otherwise wait forever.
                execution.fail_unanswered(
                    ModelExecutionError(f"model {self._name!r}: the batch ended without an answer")
                )
                self._check_drained()
                raise
            if finished:
                self._check_drained()
                return
        task = self._loop.create_task(execution.run(), name=f"batch {self._name}")
        self._executions[task] = execution
        task.add_done_callback(self._execution_done)

    def _execution_done(self, task: asyncio.Task[None]) -> None:
        execution = self._executions.pop(task, None)
        if task.cancelled():
            error: ServeError = ShuttingDown(f"model {self._name!r} shut down while the request ran")
        else:
            exc = task.exception()
            if exc is not None:
                logger.error("batch task of model %r failed", self._name, exc_info=exc)
            error = ModelExecutionError(f"model {self._name!r}: the batch ended without an answer")
        if execution is not None:
            execution.fail_unanswered(error)
        self._wake()
        self._check_drained()

    # -- shutdown --------------------------------------------------------------------------------

    def _fail_queued(self, error: ServeError) -> None:
        for request in self._queue.drain():
            self._cancel_timer(request)
            if not request.future.done():
                request.future.set_exception(error)
        self._check_drained()

    async def _shut_down(self, grace_s: float) -> None:
        loop = asyncio.get_running_loop()
        self._wake()  # queued requests go now, without holding for preferred sizes
        if self._queue.size or self._executions:
            self._drained = loop.create_future()
            self._check_drained()
            await asyncio.wait([self._drained], timeout=max(0.0, grace_s))
        self._fail_queued(ShuttingDown(f"model {self._name!r} shut down before the request ran"))
        if self._executions:
            error = ShuttingDown(f"model {self._name!r} shut down while the request ran")
            for task, execution in list(self._executions.items()):
                task.cancel()
                # Answer now rather than trust execute() to honour the cancellation.
                execution.fail_unanswered(error)
            _, stuck = await asyncio.wait(list(self._executions), timeout=_CANCEL_WAIT_S)
            if stuck:
                logger.warning("model %r: %d executions ignored cancellation", self._name, len(stuck))
        self._stopped = True
        if self._pass is not None:
            self._pass.cancel()
            self._pass = None
        if self._hold_timer is not None:
            self._hold_timer.cancel()
            self._hold_timer = None
