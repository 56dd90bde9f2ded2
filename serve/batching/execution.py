"""One batch's life after it leaves the queue: gather its callers' rows, run the model, split and answer, or
fail its callers (Triton's ``Payload``).

A ``BatchExecution`` is tried first in the dispatch pass (``run_now``: ``execute_now`` runs it on the loop, a
model faster than a hand-off to a thread); if that declines, or the model failed on several callers together,
it goes on as a task (``run``: ``execute`` awaited, or each caller alone). The two paths share every step and
differ only in how they call the runtime. ``fail_unanswered`` is the one place a caller still waiting is
answered when anything else went wrong, so no path leaves a caller waiting (STYLE habits 4, 5 and 14).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

from serve.batching.queue import PendingRequest
from serve.batching.result import BatchResult, Execute, ExecuteNow
from serve.errors import ModelExecutionError, RequestCancelled, ServeError
from serve.events import BatchTimings, Execution, Observer, VersionKey

logger = logging.getLogger(__name__)

Outputs = dict[str, np.ndarray]
_NO_TENSORS: Mapping[str, np.ndarray] = MappingProxyType({})  # what an execution that failed passes on


@dataclass(frozen=True, slots=True)
class Runner:
    """What every execution of one batcher shares: the model version, how to run it and who to tell."""

    key: VersionKey
    name: str  # "model:version", for messages
    batching: bool  # max_batch_size > 0: rows are stacked and split along dimension 0
    execute: Execute
    execute_now: ExecuteNow | None
    # Told of every execution, with the batch's tensors when it succeeded, after its callers are answered
    # (metrics, input statistics); it must not block or modify the arrays.
    observer: Observer | None
    clock: Callable[[], int]

    def observe(self, execution: Execution) -> None:
        if self.observer is None:
            return
        try:
            self.observer.on_execution(execution)
        except Exception:  # observing must never fail inference
            logger.exception("observer of model %r failed", self.name)

    def as_serve_error(self, exc: Exception, rows: int) -> ServeError:
        if isinstance(exc, ServeError):
            return exc
        error = ModelExecutionError(
            f"model {self.name!r} failed on a batch of {rows} rows: {type(exc).__name__}: {exc}"
        )
        error.__cause__ = exc
        return error

    def split(self, outputs: Mapping[str, np.ndarray], live: list[PendingRequest], rows: int) -> list[Outputs]:
        if not isinstance(outputs, dict | Mapping):  # dict first: an ABC check costs on every batch
            raise ModelExecutionError(
                f"model {self.name!r} returned {type(outputs).__name__}, not a mapping of outputs"
            )
        if not self.batching:
            return [dict(outputs)]
        for output_name, array in outputs.items():
            if not isinstance(array, np.ndarray) or array.ndim == 0 or array.shape[0] != rows:
                shape = getattr(array, "shape", type(array).__name__)
                raise ModelExecutionError(
                    f"model {self.name!r} returned output {output_name!r} with shape {shape} for a batch "
                    f"of {rows} rows; its first dimension must be the batch"
                )
        if len(live) == 1:
            return [dict(outputs)]
        parts: list[Outputs] = []
        offset = 0
        for request in live:
            end = offset + request.rows
            # Basic slices are views: no caller's rows are copied.
            parts.append({output_name: array[offset:end] for output_name, array in outputs.items()})
            offset = end
        return parts


class BatchExecution:
    __slots__ = ("_alone", "_begun", "_gathered", "_input_ns", "_live", "_runner", "_start", "requests")

    def __init__(self, runner: Runner, requests: list[PendingRequest]) -> None:
        self._runner = runner
        self.requests = requests  # as formed; some may have left since
        self._begun = False
        self._start = 0  # when the execution began: the end of each caller's queue time
        self._live: list[PendingRequest] = []
        self._gathered: Outputs | None = None  # inputs gathered for exactly ``_live``
        self._input_ns = 0
        self._alone = False  # the model failed on the callers together: run each alone

    # -- the two ways to run -----------------------------------------------------------------------

    def run_now(self) -> bool:
        """Run in the dispatch pass if ``execute_now`` takes the batch. True when the execution is over
        (answered, failed, or nobody left); False when it must go on as a task (``run``)."""
        execute_now = self._runner.execute_now
        assert execute_now is not None
        if not self._begin():
            return True
        try:
            inputs = self._gather()
        except Exception as exc:
            self._fail_all(exc)
            return True
        mark = self._runner.clock()
        try:
            outputs = execute_now(inputs)
        except Exception as exc:
            return not self._model_failed(exc, mark)
        if outputs is None:  # not here and now: the task awaits execute with the inputs already gathered
            return False
        self._finish(inputs, outputs, mark)
        return True

    async def run(self) -> None:
        """The task: await ``execute`` on the batch (gathered again if a caller left since the pass), or run each
        caller alone after the model failed on them together."""
        if self._alone:
            await self._run_each_alone()
            return
        if not self._begun:
            if not self._begin():
                return
        elif not self._still_live():
            return
        try:
            inputs = self._gather()
        except Exception as exc:
            self._fail_all(exc)
            return
        mark = self._runner.clock()
        try:
            outputs = await self._runner.execute(inputs)
        except Exception as exc:
            if self._model_failed(exc, mark):
                await self._run_each_alone()
            return
        self._finish(inputs, outputs, mark)

    def fail_unanswered(self, error: ServeError) -> None:
        """Answer with ``error`` every caller of this batch that is still waiting: the safety net of every path
        (a bug, a cancelled task, shutdown)."""
        for request in self.requests:
            if not request.future.done():
                request.future.set_exception(error)

    # -- steps -------------------------------------------------------------------------------------

    def _begin(self) -> bool:
        self._begun = True
        self._start = self._runner.clock()
        self._live = _live(self.requests)
        return bool(self._live)

    def _still_live(self) -> bool:
        """Drop callers that left since the pass gathered the batch; the gathered inputs no longer fit then."""
        live = _live(self._live)
        if len(live) != len(self._live):
            self._live, self._gathered = live, None
        return bool(live)

    @property
    def _rows(self) -> int:
        return sum(request.rows for request in self._live) if self._runner.batching else 1

    def _gather(self) -> Outputs:
        if self._gathered is None:
            live = self._live
            # One caller: its tensors as sent, no copy.
            self._gathered = (
                live[0].inputs
                if len(live) == 1
                else {name: np.concatenate([request.inputs[name] for request in live]) for name in live[0].inputs}
            )
            self._input_ns = self._runner.clock() - self._start
        return self._gathered

    def _finish(self, inputs: Outputs, outputs: Outputs, mark: int) -> None:
        runner, live, rows = self._runner, self._live, self._rows
        now = runner.clock()
        infer_ns = now - mark
        try:
            parts = runner.split(outputs, live, rows)
        except Exception as exc:
            self._observe(infer_ns, error=exc)
            self._fail(live, exc, rows)
            return
        output_ns = runner.clock() - now
        start = self._start
        for request, part in zip(live, parts, strict=True):
            if not request.future.done():
                timings = BatchTimings(start - request.enqueue_ns, self._input_ns, infer_ns, output_ns, rows, start)
                request.future.set_result(BatchResult(part, timings))
        self._observe(infer_ns, output_ns, inputs=inputs, outputs=outputs)

    def _model_failed(self, exc: Exception, mark: int) -> bool:
        """The runtime raised. True when each caller should now run alone: the model failed on several callers
        together, so that one caller's bad values (an index out of range, say) fail only that caller."""
        runner, live, rows = self._runner, self._live, self._rows
        self._observe(runner.clock() - mark, error=exc)
        if runner.batching and len(live) > 1:
            self._alone = True
            return True
        self._fail(live, exc, rows)
        return False

    def _fail_all(self, exc: Exception) -> None:
        self._observe(0, error=exc)
        self._fail(self._live, exc, self._rows)

    def _observe(
        self,
        infer_ns: int,
        output_ns: int = 0,
        *,
        error: Exception | None = None,
        inputs: Mapping[str, np.ndarray] = _NO_TENSORS,
        outputs: Mapping[str, np.ndarray] = _NO_TENSORS,
    ) -> None:
        """Tell the observers of this execution of the batch, with its traced callers for the batch span."""
        runner, live = self._runner, self._live
        runner.observe(
            Execution(
                runner.key,
                self._rows,
                len(live),
                self._input_ns,
                infer_ns,
                output_ns,
                error,
                inputs,
                outputs,
                self._start,
                _traces(live),
            )
        )

    def _fail(self, live: list[PendingRequest], exc: Exception, rows: int) -> None:
        error = self._runner.as_serve_error(exc, rows)
        for request in live:
            if not request.future.done():
                request.future.set_exception(error)

    async def _run_each_alone(self) -> None:
        runner = self._runner
        for request in self._live:
            if request.future.done():
                continue
            mark = runner.clock()
            traces = _traces([request])
            try:
                outputs = await runner.execute(request.inputs)
                infer_ns = runner.clock() - mark
                (part,) = runner.split(outputs, [request], request.rows)
            except Exception as exc:
                runner.observe(
                    Execution(
                        runner.key, request.rows, 1, 0, runner.clock() - mark, 0, exc, started_ns=mark, traces=traces
                    )
                )
                if not request.future.done():
                    request.future.set_exception(runner.as_serve_error(exc, request.rows))
                continue
            if not request.future.done():
                timings = BatchTimings(self._start - request.enqueue_ns, 0, infer_ns, 0, request.rows, self._start)
                request.future.set_result(BatchResult(part, timings))
            runner.observe(
                Execution(runner.key, request.rows, 1, 0, infer_ns, 0, None, request.inputs, outputs, mark, traces)
            )


def _traces(requests: list[PendingRequest]) -> tuple[object, ...]:
    """The trace contexts of the traced requests among ``requests`` (usually none: one pass, no allocation)."""
    return tuple(request.trace for request in requests if request.trace is not None)


def _live(requests: list[PendingRequest]) -> list[PendingRequest]:
    """The callers still waiting; one whose client went away is answered so and dropped."""
    live = []
    for request in requests:
        if request.future.done():
            continue
        if request.client_gone is not None and request.client_gone():
            request.future.set_exception(RequestCancelled("the client went away before the request ran"))
            continue
        live.append(request)
    return live
