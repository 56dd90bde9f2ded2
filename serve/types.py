"""The transport-neutral request and response model that both protocol adapters speak.

Tensors are numpy arrays from the moment a codec has decoded them; BYTES tensors are
``object`` arrays of ``bytes``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeAlias

import numpy as np

# Parameters as the client sent them (JSON values over HTTP, InferParameter values over gRPC): whoever
# reads one checks its type.
Parameters = dict[str, object]

# A JSON document as ``json.loads`` returns it, for documents whose shape is a schema of its own
# (an OpenAPI document) rather than one type.
JsonValue: TypeAlias = "str | int | float | bool | None | list[JsonValue] | dict[str, JsonValue]"
JsonObject: TypeAlias = "dict[str, JsonValue]"


@dataclass(slots=True)
class InputTensor:
    name: str
    datatype: str
    data: np.ndarray  # already in the shape the request declared
    parameters: Parameters = field(default_factory=dict)


@dataclass(slots=True)
class RequestedOutput:
    name: str
    # HTTP only: whether this output travels in the binary extension (None = request default).
    binary_data: bool | None = None
    parameters: Parameters = field(default_factory=dict)


@dataclass(slots=True)
class InferRequest:
    model_name: str
    model_version: str = ""  # "" = the policy's default (highest ready) version
    id: str = ""
    inputs: list[InputTensor] = field(default_factory=list)
    # None = every output of the model.
    outputs: list[RequestedOutput] | None = None
    parameters: Parameters = field(default_factory=dict)
    # Transport probe: True once the caller has gone away; the batcher then drops the request
    # before it runs. None where the transport cancels the caller's task instead (gRPC).
    client_gone: Callable[[], bool] | None = None
    # Transport probe: a request header (HTTP) or metadata value (gRPC) by lower-case name, None when
    # absent. A rollout's routing key is read here when no request parameter carries it.
    header: Callable[[str], str | None] | None = None


@dataclass(slots=True)
class OutputTensor:
    name: str
    datatype: str
    data: np.ndarray
    parameters: Parameters = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)


@dataclass(slots=True)
class InferResponse:
    model_name: str
    model_version: str
    id: str
    outputs: list[OutputTensor]
    parameters: Parameters = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One input or output as the model declares it (batch dimension excluded when batching)."""

    name: str
    datatype: str
    dims: tuple[int, ...]  # -1 = variable


@dataclass(frozen=True, slots=True)
class GraphTensor:
    """An input or output as the ONNX graph declares it; -1 marks a symbolic or unknown dimension."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    # False where the graph gives no shape at all: then ``shape`` is () but the rank is unknown, not 0.
    rank_known: bool = True
