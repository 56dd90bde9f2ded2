"""The dynamic batcher: one per loaded model version, transport- and runtime-neutral.

A dispatch pass forms a batch whenever an instance is free and requests wait (Triton's
``GetDynamicBatch``, PROTOCOL.md section 5). A pass is scheduled on the event loop, at most one
at a time, by a new request, a finished execution, a withdrawn or expired request, a hold timer
or close(); nothing polls. It runs after the callbacks already ready, so requests that arrive
together (one read of several HTTP/2 streams, say) share a batch.

A batch runs right in the pass when ``execute_now`` takes it (a model faster than a hand-off to
a thread, on a free instance): no task, no wake-up, its callers answered before the pass ends.
Otherwise it runs as a task of its own, so up to ``max_in_flight`` executions overlap.

Every caller awaits its own future and nothing else. Each execution fails exactly its own
callers when anything in it goes wrong, and a task's done-callback fails whoever is still
unanswered, so no path leaves a caller waiting (STYLE habits 4, 5 and 7).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass

import numpy as np

from serve.batching.policy import BatchingPolicy
from serve.batching.queue import PendingRequest, RequestQueue, select_batch
from serve.batching.result import BatchResult, Execute, ExecuteNow
from serve.errors import (
    DeadlineExceeded,
    InvalidInput,
    ModelExecutionError,
    QueueFull,
    RequestCancelled,
    ServeError,
    ShuttingDown,
)
from serve.events import BatchTimings, Execution, Observer, VersionKey

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
        self._execute = execute
        # Tried first for every batch, in the dispatch pass itself; a batch it declines goes to execute.
        self._execute_now = execute_now
        self._policy = policy
        self._key = key
        self._name = f"{key.name}:{key.version}"
        # Told of every execution, with the batch's tensors when it succeeded, after its callers
        # are answered (metrics, input statistics); it must not block or modify the arrays.
        self._observer = observer
        self._clock = clock
        self._queue = RequestQueue(policy.level_count)
        self._hold_ns = policy.max_queue_delay_us * 1000 if policy.holds_requests else 0
        self._default_level = (policy.default_priority_level or policy.level_count) - 1
        self._queue_policies = [policy.queue_policy(level + 1) for level in range(policy.level_count)]
        self._in_flight = 0  # executions running as tasks
        self._executions: dict[asyncio.Task[None], list[PendingRequest]] = {}
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
        return self._in_flight

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
        if self._drained is not None and not self._drained.done() and self._queue.size == 0 and self._in_flight == 0:
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
        while self._in_flight < self._policy.max_in_flight and self._queue.size:
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
        gathered = None
        if self._execute_now is not None:
            start = self._clock()
            live = self._live(batch)
            if not live:
                self._check_drained()
                return
            try:
                gathered = self._run_now(live, start)
            except BaseException:
                # The safety net of the pass: a caller still unanswered here would otherwise wait forever.
                error = ModelExecutionError(f"model {self._name!r}: the batch ended without an answer")
                for request in live:
                    if not request.future.done():
                        request.future.set_exception(error)
                self._check_drained()
                raise
            if gathered is None:
                self._check_drained()
                return
        self._in_flight += 1
        task = self._loop.create_task(self._run_batch(batch, gathered), name=f"batch {self._name}")
        self._executions[task] = batch
        task.add_done_callback(self._execution_done)

    def _execution_done(self, task: asyncio.Task[None]) -> None:
        batch = self._executions.pop(task, [])
        self._in_flight -= 1
        if task.cancelled():
            error: ServeError = ShuttingDown(f"model {self._name!r} shut down while the request ran")
        else:
            exc = task.exception()
            if exc is not None:
                logger.error("batch task of model %r failed", self._name, exc_info=exc)
            error = ModelExecutionError(f"model {self._name!r}: the batch ended without an answer")
        # The safety net: a caller still unanswered here would otherwise wait forever.
        for request in batch:
            if not request.future.done():
                request.future.set_exception(error)
        self._wake()
        self._check_drained()

    # -- execution -------------------------------------------------------------------------------

    def _live(self, batch: list[PendingRequest]) -> list[PendingRequest]:
        """The callers still waiting; one whose client went away is answered so and dropped."""
        live = []
        for request in batch:
            if request.future.done():
                continue
            if request.client_gone is not None and request.client_gone():
                request.future.set_exception(RequestCancelled("the client went away before the request ran"))
                continue
            live.append(request)
        return live

    def _run_now(self, live: list[PendingRequest], start: int) -> _Gathered | None:
        """Run the batch in this pass if ``execute_now`` takes it; else return what the task needs.

        Returns None when the batch is done (answered, failed, or handed to a task of its own
        that runs each caller alone after the model failed on them together)."""
        assert self._execute_now is not None
        batching = self._policy.max_batch_size > 0
        rows = sum(request.rows for request in live) if batching else 1
        input_ns = infer_ns = 0
        executing = False
        try:
            inputs = self._concatenate(live)
            mark = self._clock()
            input_ns = mark - start
            executing = True
            outputs = self._execute_now(inputs)
            executing = False
            if outputs is None:  # not here and now: the batch goes to a task, already gathered
                return _Gathered(len(live), inputs, start, input_ns)
            now = self._clock()
            infer_ns = now - mark
            parts = self._split(outputs, live, rows) if batching else [outputs]
            output_ns = self._clock() - now
        except Exception as exc:
            self._observe(Execution(self._key, rows, len(live), input_ns, infer_ns, 0, exc))
            if executing and batching and len(live) > 1:
                self._in_flight += 1
                task = self._loop_or_fail().create_task(self._run_each_alone(live, start), name=f"batch {self._name}")
                self._executions[task] = live
                task.add_done_callback(self._execution_done)
                return None
            self._fail(live, exc, rows)
            return None
        self._answer(live, parts, start, input_ns, infer_ns, output_ns, rows)
        self._observe(Execution(self._key, rows, len(live), input_ns, infer_ns, output_ns, None, inputs, outputs))
        return None

    async def _run_batch(self, batch: list[PendingRequest], gathered: _Gathered | None = None) -> None:
        if gathered is None:
            start = self._clock()
            # Callers that left between forming the batch and this task starting are dropped too.
            live = self._live(batch)
        else:
            start = gathered.start
            live = self._live(batch)
            if len(live) != gathered.requests:
                gathered = None  # a caller left since: gather the batch again without it
        if not live:
            return
        batching = self._policy.max_batch_size > 0
        rows = sum(request.rows for request in live) if batching else 1
        input_ns = infer_ns = output_ns = 0
        mark = start
        executing = False
        try:
            if gathered is None:
                inputs = self._concatenate(live)
                now = self._clock()
                input_ns, mark = now - mark, now
            else:
                inputs, input_ns = gathered.inputs, gathered.input_ns
                mark = self._clock()
            executing = True
            outputs = await self._execute(inputs)
            executing = False
            now = self._clock()
            infer_ns, mark = now - mark, now
            parts = self._split(outputs, live, rows) if batching else [outputs]
            output_ns = self._clock() - mark
        except Exception as exc:
            self._observe(Execution(self._key, rows, len(live), input_ns, infer_ns, output_ns, exc))
            if executing and batching and len(live) > 1:
                await self._run_each_alone(live, start)
                return
            self._fail(live, exc, rows)
            return
        self._answer(live, parts, start, input_ns, infer_ns, output_ns, rows)
        self._observe(Execution(self._key, rows, len(live), input_ns, infer_ns, output_ns, None, inputs, outputs))

    def _answer(
        self,
        live: list[PendingRequest],
        parts: list[dict[str, np.ndarray]],
        start: int,
        input_ns: int,
        infer_ns: int,
        output_ns: int,
        rows: int,
    ) -> None:
        for request, part in zip(live, parts, strict=True):
            if not request.future.done():
                timings = BatchTimings(start - request.enqueue_ns, input_ns, infer_ns, output_ns, rows)
                request.future.set_result(BatchResult(part, timings))

    def _fail(self, live: list[PendingRequest], exc: Exception, rows: int) -> None:
        for request in live:
            if not request.future.done():
                request.future.set_exception(self._as_serve_error(exc, rows))

    async def _run_each_alone(self, live: list[PendingRequest], start: int) -> None:
        # The model itself failed on a batch of several callers: run each alone, so that one
        # caller's bad values (an index out of range, say) fail only that caller.
        for request in live:
            await self._run_alone(request, start)

    async def _run_alone(self, request: PendingRequest, start: int) -> None:
        if request.future.done():
            return
        mark = self._clock()
        try:
            outputs = await self._execute(request.inputs)
            infer_ns = self._clock() - mark
            (part,) = self._split(outputs, [request], request.rows)
        except Exception as exc:
            self._observe(Execution(self._key, request.rows, 1, 0, self._clock() - mark, 0, exc))
            if not request.future.done():
                request.future.set_exception(self._as_serve_error(exc, request.rows))
            return
        if not request.future.done():
            timings = BatchTimings(start - request.enqueue_ns, 0, infer_ns, 0, request.rows)
            request.future.set_result(BatchResult(part, timings))
        self._observe(Execution(self._key, request.rows, 1, 0, infer_ns, 0, None, request.inputs, outputs))

    @staticmethod
    def _concatenate(live: list[PendingRequest]) -> dict[str, np.ndarray]:
        if len(live) == 1:
            return live[0].inputs  # as sent, no copy
        return {name: np.concatenate([request.inputs[name] for request in live]) for name in live[0].inputs}

    def _split(
        self, outputs: Mapping[str, np.ndarray], live: list[PendingRequest], rows: int
    ) -> list[dict[str, np.ndarray]]:
        if not isinstance(outputs, dict | Mapping):  # dict first: an ABC check costs on every batch
            raise ModelExecutionError(
                f"model {self._name!r} returned {type(outputs).__name__}, not a mapping of outputs"
            )
        for output_name, array in outputs.items():
            if not isinstance(array, np.ndarray) or array.ndim == 0 or array.shape[0] != rows:
                shape = getattr(array, "shape", type(array).__name__)
                raise ModelExecutionError(
                    f"model {self._name!r} returned output {output_name!r} with shape {shape} for a batch "
                    f"of {rows} rows; its first dimension must be the batch"
                )
        if len(live) == 1:
            return [dict(outputs)]
        parts: list[dict[str, np.ndarray]] = []
        offset = 0
        for request in live:
            end = offset + request.rows
            # Basic slices are views: no caller's rows are copied.
            parts.append({output_name: array[offset:end] for output_name, array in outputs.items()})
            offset = end
        return parts

    def _loop_or_fail(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None
        return self._loop

    def _as_serve_error(self, exc: Exception, rows: int) -> ServeError:
        if isinstance(exc, ServeError):
            return exc
        error = ModelExecutionError(
            f"model {self._name!r} failed on a batch of {rows} rows: {type(exc).__name__}: {exc}"
        )
        error.__cause__ = exc
        return error

    def _observe(self, execution: Execution) -> None:
        if self._observer is None:
            return
        try:
            self._observer.on_execution(execution)
        except Exception:  # observing must never fail inference
            logger.exception("observer of model %r failed", self._name)

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
        if self._queue.size or self._in_flight:
            self._drained = loop.create_future()
            self._check_drained()
            await asyncio.wait([self._drained], timeout=max(0.0, grace_s))
        self._fail_queued(ShuttingDown(f"model {self._name!r} shut down before the request ran"))
        if self._executions:
            error = ShuttingDown(f"model {self._name!r} shut down while the request ran")
            for task, batch in list(self._executions.items()):
                task.cancel()
                # Answer now rather than trust execute() to honour the cancellation.
                for request in batch:
                    if not request.future.done():
                        request.future.set_exception(error)
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


@dataclass(frozen=True, slots=True)
class _Gathered:
    """A batch gathered in a dispatch pass that ``execute_now`` declined: its task reuses it."""

    requests: int  # live callers it was gathered for
    inputs: dict[str, np.ndarray]
    start: int
    input_ns: int
