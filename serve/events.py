"""What the server observes: one record per inference request and one per batch execution.

The core reports every request once, as a ``RequestEvent``; the batcher reports every model
execution once, as an ``Execution``. Both go to the same list of observers (Prometheus, Triton's
statistics, input statistics), each of which keeps whatever it needs per model version. An
observer that raises is logged and skipped: observing never fails a request.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np

from serve.errors import (
    DeadlineExceeded,
    InvalidInput,
    ModelExecutionError,
    ModelNotFound,
    ModelNotReady,
    QueueFull,
    RequestCancelled,
    ShuttingDown,
)

log = logging.getLogger(__name__)

_load_ids = itertools.count(1)
_NO_TENSORS: Mapping[str, np.ndarray] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class VersionKey:
    """One loaded model version. ``load_id`` tells apart two loads of the same version number
    (a reload replaces one with the other while both may still see traffic)."""

    name: str
    version: str
    load_id: int = 0

    @classmethod
    def new(cls, name: str, version: str) -> VersionKey:
        return cls(name, version, next(_load_ids))


# Requests that named no loaded version: the name is client input, so it never becomes a label.
UNKNOWN_VERSION = VersionKey("", "")


@dataclass(frozen=True, slots=True)
class BatchTimings:
    """Where the time of one request that ran went; compute phases are its whole batch's."""

    queue_ns: int  # enqueued -> its batch started
    compute_input_ns: int  # gathering the batch's inputs
    compute_infer_ns: int  # running the model on the batch
    compute_output_ns: int  # validating and splitting the batch's outputs
    batch_size: int  # rows in the batch that ran
    batch_started_ns: int = 0  # when its batch started, on the batcher's clock (time.monotonic_ns)


@dataclass(frozen=True, slots=True)
class Execution:
    """One run of the model on a batch. ``inputs`` and ``outputs`` are the batch's tensors when it
    succeeded (empty otherwise); observers must not modify them."""

    key: VersionKey
    rows: int
    requests: int
    compute_input_ns: int
    compute_infer_ns: int
    compute_output_ns: int
    error: BaseException | None = None
    inputs: Mapping[str, np.ndarray] = field(default_factory=lambda: _NO_TENSORS)
    outputs: Mapping[str, np.ndarray] = field(default_factory=lambda: _NO_TENSORS)
    started_ns: int = 0  # when the execution began, on the batcher's clock (time.monotonic_ns)
    # The trace contexts (serve/tracing) of the traced requests it served, for the batch span's links; opaque here.
    traces: tuple[object, ...] = ()

    @property
    def compute_ns(self) -> int:
        return self.compute_input_ns + self.compute_infer_ns + self.compute_output_ns


@dataclass(frozen=True, slots=True)
class RequestEvent:
    """One inference request, however it ended."""

    key: VersionKey  # UNKNOWN_VERSION when the request named no loaded version
    protocol: str  # "http" or "grpc"
    outcome: str  # see outcome_of
    duration_ns: int  # received by the core -> answered
    timings: BatchTimings | None = None  # set when the request ran in a batch
    # The arm of the model's rollout that answered (serve/rollout/spec.py Role): "" without a rollout;
    # "shadow" for a mirrored copy, which no client sees and client-facing series leave out.
    role: str = ""
    # Rows (first dimension) of the request; 0 where not recorded. The shadow sets it, so that Triton's
    # statistics can keep a shadow's rows out of the version's client-facing inference_count.
    rows: int = 0
    # The id the response carries (serve/core/request_ids.py): the client's, or one minted for it; "" when the
    # request failed before it was decoded (an unknown model, a malformed body) and so never got one.
    request_id: str = ""
    # The request's own rows of every output (views into its batch's arrays) when it succeeded, so that
    # its prediction can be joined to a label later (serve/ground_truth); observers must not modify them.
    outputs: Mapping[str, np.ndarray] = field(default_factory=lambda: _NO_TENSORS)
    # The request's decoded inputs once it was validated (what the model was fed), for the payload log.
    inputs: Mapping[str, np.ndarray] = field(default_factory=lambda: _NO_TENSORS)
    # The W3C traceparent of the request's server span when it was traced (serve/tracing), else "".
    traceparent: str = ""
    # The request's header (HTTP) or metadata (gRPC) by lower-case name, once it was decoded; valid only during
    # on_request, which runs while the request is still live (the payload log's header allowlist reads it).
    header: Callable[[str], str | None] | None = None

    @property
    def trace_id(self) -> str:
        """The 32 hex digits of the trace, "" when the request was not traced."""
        return self.traceparent[3:35]


class Observer:
    """Told of every request and every execution; the defaults ignore both."""

    def on_request(self, event: RequestEvent) -> None:
        return None

    def on_execution(self, execution: Execution) -> None:
        return None


class Observers(Observer):
    """Fans each record out to several observers; one that fails is logged and the rest still hear."""

    __slots__ = ("_observers", "_request_observers", "_execution_observers")

    def __init__(self, observers: Iterable[Observer] = ()) -> None:
        self._observers = tuple(observers)
        # Called for every request and batch: skip the observers that keep the default no-op.
        self._request_observers = tuple(o for o in self._observers if type(o).on_request is not Observer.on_request)
        self._execution_observers = tuple(
            o for o in self._observers if type(o).on_execution is not Observer.on_execution
        )

    def on_request(self, event: RequestEvent) -> None:
        for observer in self._request_observers:
            try:
                observer.on_request(event)
            except Exception:
                log.exception("observer %s failed on a request", type(observer).__name__)

    def on_execution(self, execution: Execution) -> None:
        for observer in self._execution_observers:
            try:
                observer.on_execution(execution)
            except Exception:
                log.exception("observer %s failed on an execution", type(observer).__name__)


def outcome_of(error: BaseException | None) -> str:
    """A short, bounded label for why a request ended."""
    if error is None:
        return "success"
    if isinstance(error, asyncio.CancelledError | RequestCancelled):
        return "cancelled"
    if isinstance(error, QueueFull):
        return "rejected"
    if isinstance(error, DeadlineExceeded):
        return "timeout"
    if isinstance(error, InvalidInput):
        return "invalid_input"
    if isinstance(error, ModelNotFound | ModelNotReady | ShuttingDown):
        return "unavailable"
    if isinstance(error, ModelExecutionError):
        return "model_error"
    return "error"
