"""The transport-neutral server: every operation of the protocol, once.

The HTTP and gRPC adapters decode their wire format into serve.types, call this, and
encode what comes back; all semantics (validation, batching, statistics) live here and below.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from serve import __version__
from serve.batching.result import BatchResult
from serve.classification import classify
from serve.errors import (
    DeadlineExceeded,
    InvalidInput,
    ModelExecutionError,
    ModelLoadError,
    ModelNotFound,
    ModelNotReady,
    OperationNotAllowed,
    QueueFull,
    RequestCancelled,
    ServeError,
    UnknownOutput,
)
from serve.protocol import model_config_pb2 as mc
from serve.repository.repository import ModelRepository, ModelVersion
from serve.types import InferRequest, InferResponse, OutputTensor, TensorSpec

EXTENSIONS = [
    "binary_tensor_data",
    "classification",
    "model_configuration",
    "model_repository",
    "schedule_policy",
    "statistics",
    "parameters",
]


class RequestRecorder(Protocol):
    """Told the outcome of every inference request (Prometheus metrics, input statistics)."""

    def on_request(
        self,
        model: ModelVersion | None,
        request: InferRequest,
        protocol: str,
        outcome: str,
        duration_s: float,
        response: InferResponse | None,
    ) -> None: ...


class TimingRecorder(Protocol):
    """Told, for every request that ran, its queue wait and its batch's compute phases (the
    BatchResult's timing fields); called just before ``on_request``."""

    def on_timings(self, model: ModelVersion, result: BatchResult) -> None: ...


def outcome_of(error: BaseException | None) -> str:
    """A short, bounded label for why a request ended."""
    if error is None:
        return "success"
    if isinstance(error, (asyncio.CancelledError, RequestCancelled)):
        return "cancelled"
    if isinstance(error, QueueFull):
        return "rejected"
    if isinstance(error, DeadlineExceeded):
        return "timeout"
    if isinstance(error, InvalidInput):
        return "invalid_input"
    if isinstance(error, (ModelNotFound, ModelNotReady)):
        return "unavailable"
    if isinstance(error, ModelExecutionError):
        return "model_error"
    return "error"


class InferenceService:
    def __init__(
        self,
        repository: ModelRepository,
        *,
        server_name: str = "serve",
        model_control_explicit: bool = False,
        recorders: list[RequestRecorder] | None = None,
        timing_recorders: list[TimingRecorder] | None = None,
        clock: Callable[[], int] = time.perf_counter_ns,
    ) -> None:
        self.repository = repository
        self.server_name = server_name
        self.model_control_explicit = model_control_explicit
        self.recorders: list[RequestRecorder] = recorders or []
        self.timing_recorders: list[TimingRecorder] = timing_recorders or []
        self._clock = clock
        self.shutting_down = False

    # ---- health and metadata ---------------------------------------------------------------
    def server_live(self) -> bool:
        return True

    def server_ready(self) -> bool:
        return not self.shutting_down and self.repository.all_ready()

    def model_ready(self, name: str, version: str = "") -> bool:
        try:
            self.repository.get(name, version)
        except (ModelNotFound, ModelNotReady):
            return False
        return not self.shutting_down

    def server_metadata(self) -> dict[str, Any]:
        return {"name": self.server_name, "version": __version__, "extensions": list(EXTENSIONS)}

    def model_metadata(self, name: str, version: str = "") -> dict[str, Any]:
        model = self.repository.get(name, version)
        batch = [-1] if model.max_batch_size > 0 else []

        def describe(specs: list[TensorSpec]) -> list[dict[str, Any]]:
            return [{"name": s.name, "datatype": s.datatype, "shape": batch + list(s.dims)} for s in specs]

        metadata: dict[str, Any] = {
            "name": model.name,
            "versions": [v.version_str for v in self.repository.ready_versions(name)],
            "platform": "onnxruntime_onnx",
            "inputs": describe(model.inputs),
            "outputs": describe(model.outputs),
        }
        if model.parameters:  # HTTP only: Triton's gRPC ModelMetadataResponse has no parameters field
            metadata["parameters"] = dict(model.parameters)
        return metadata

    def model_config(self, name: str, version: str = "") -> mc.ModelConfig:
        model = self.repository.get(name, version)
        assert model.config is not None
        return model.config

    def model_statistics(self, name: str = "", version: str = "") -> list[dict[str, Any]]:
        if name:
            if version:
                models = [self.repository.get(name, version)]
            else:
                self.repository.get(name)  # raises for an unknown or unready model
                models = self.repository.ready_versions(name)
        else:
            models = self.repository.loaded()
        return [m.stats.as_dict(m.name, m.version_str) for m in models]

    # ---- inference -------------------------------------------------------------------------
    async def infer(self, request: InferRequest, protocol: str = "http") -> InferResponse:
        started = self._clock()
        model: ModelVersion | None = None
        response: InferResponse | None = None
        error: BaseException | None = None
        try:
            model = self.repository.get(request.model_name, request.model_version)
            response = await self._infer(model, request, started)
            return response
        except BaseException as exc:
            error = exc
            if model is not None:
                model.stats.record_failure(self._clock() - started)
            raise
        finally:
            if self.recorders:
                duration_s = (self._clock() - started) / 1e9
                outcome = outcome_of(error)
                for recorder in self.recorders:
                    recorder.on_request(model, request, protocol, outcome, duration_s, response)

    async def _infer(self, model: ModelVersion, request: InferRequest, started: int) -> InferResponse:
        feeds = validate_inputs(model, request)
        wanted = requested_outputs(model, request)
        assert model.batcher is not None
        result = await model.batcher.submit(
            feeds, priority=request.priority, timeout_us=request.timeout_us, client_gone=request.client_gone
        )
        outputs = [OutputTensor(name, datatype, result.outputs[name]) for name, datatype in wanted]
        outputs = classify(outputs, request.outputs, model.labels, batching=model.max_batch_size > 0)
        model.stats.record_success(
            self._clock() - started,
            result.queue_ns,
            result.compute_input_ns,
            result.compute_infer_ns,
            result.compute_output_ns,
        )
        for recorder in self.timing_recorders:
            recorder.on_timings(model, result)
        return InferResponse(model_name=model.name, model_version=model.version_str, id=request.id, outputs=outputs)

    # ---- repository ------------------------------------------------------------------------
    def repository_index(self, ready_only: bool = False) -> list[dict[str, str]]:
        return self.repository.index(ready_only)

    async def load_model(
        self, name: str, config: mc.ModelConfig | None = None, files: dict[str, bytes] | None = None
    ) -> None:
        if not self.model_control_explicit:
            raise OperationNotAllowed("model load and unload need --model-control-mode explicit")
        await self.repository.load_model(name, config_override=config, files=files)
        try:
            self.repository.get(name)
        except ModelNotReady as exc:
            raise ModelLoadError(f"failed to load '{name}': {exc.message}") from None

    async def unload_model(self, name: str) -> None:
        if not self.model_control_explicit:
            raise OperationNotAllowed("model load and unload need --model-control-mode explicit")
        await self.repository.unload_model(name)


def validate_inputs(model: ModelVersion, request: InferRequest) -> dict[str, np.ndarray]:
    """Check the request's tensors against the model and return them by name."""
    declared = {s.name: s for s in model.inputs}
    feeds: dict[str, np.ndarray] = {}
    batching = model.max_batch_size > 0
    for tensor in request.inputs:
        spec = declared.get(tensor.name)
        if spec is None:
            raise InvalidInput(
                f"unexpected input '{tensor.name}' for model '{model.name}' (expects {sorted(declared)})"
            )
        if tensor.name in feeds:
            raise InvalidInput(f"input '{tensor.name}' is given more than once")
        if tensor.datatype != spec.datatype:
            raise InvalidInput(
                f"input '{tensor.name}' has datatype {tensor.datatype}; model '{model.name}' expects {spec.datatype}"
            )
        expected = ((-1,) if batching else ()) + spec.dims
        shape = tuple(tensor.data.shape)
        if len(shape) != len(expected) or any(e != -1 and s != e for s, e in zip(shape, expected, strict=True)):
            raise InvalidInput(
                f"input '{tensor.name}' has shape {list(shape)}; model '{model.name}' expects {list(expected)}"
                + (" (first dimension is the batch)" if batching else "")
            )
        if batching and shape[0] == 0:
            raise InvalidInput(f"input '{tensor.name}' has an empty batch dimension")
        feeds[tensor.name] = tensor.data
    missing = [name for name in declared if name not in feeds]
    if missing:
        raise InvalidInput(f"model '{model.name}' needs input(s) {missing} which the request does not have")
    return feeds


def requested_outputs(model: ModelVersion, request: InferRequest) -> list[tuple[str, str]]:
    declared = {s.name: s.datatype for s in model.outputs}
    if request.outputs is None:
        return list(declared.items())
    wanted: list[tuple[str, str]] = []
    seen: set[str] = set()
    for output in request.outputs:
        if output.name not in declared:
            raise UnknownOutput(
                f"unknown output '{output.name}' for model '{model.name}' (outputs: {sorted(declared)})"
            )
        if output.name in seen:
            raise InvalidInput(f"output '{output.name}' is requested more than once")
        seen.add(output.name)
        wanted.append((output.name, declared[output.name]))
    return wanted


__all__ = [
    "InferenceService",
    "RequestRecorder",
    "ServeError",
    "TimingRecorder",
    "outcome_of",
    "validate_inputs",
]
