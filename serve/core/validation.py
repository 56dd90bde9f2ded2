"""Every rule an inference request must meet, checked once, before it is queued.

The codecs check only what only they can know (the wire format); everything about the
request's meaning — which inputs, of which datatype and shape, how many rows, which outputs,
which scheduling parameters — is judged here, with one message per rule, for both protocols.
Where Triton has a well-known wording for the same condition, the message contains it, so that
clients and scripts written against Triton keep matching.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from serve.errors import InvalidInput, UnknownOutput
from serve.types import InferRequest, RequestedOutput, TensorSpec

# Largest accepted priority / timeout: both travel as 64-bit integers in Triton's protocol.
_UINT64_MAX = 2**64 - 1


@dataclass(frozen=True, slots=True)
class ModelSignature:
    """What one model version accepts, precomputed once per loaded version."""

    name: str
    max_batch_size: int
    inputs: dict[str, tuple[str, tuple[int, ...]]]  # name -> (datatype, shape with -1 for the batch)
    outputs: dict[str, str]  # name -> datatype, in the model's order
    # Derived once, for the hot path: every output in order, and the inputs whose only variable
    # dimension is the batch (a shape matches when its rank and its dimensions after the first do).
    all_outputs: tuple[tuple[str, str], ...] = field(init=False, repr=False, compare=False)
    batch_only_variable: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "all_outputs", tuple(self.outputs.items()))
        simple = {n for n, (_, shape) in self.inputs.items() if shape[:1] == (-1,) and -1 not in shape[1:]}
        object.__setattr__(self, "batch_only_variable", frozenset(simple))

    @classmethod
    def of(cls, name: str, max_batch_size: int, inputs: list[TensorSpec], outputs: list[TensorSpec]) -> ModelSignature:
        batch = (-1,) if max_batch_size > 0 else ()
        return cls(
            name=name,
            max_batch_size=max_batch_size,
            inputs={s.name: (s.datatype, batch + s.dims) for s in inputs},
            outputs={s.name: s.datatype for s in outputs},
        )


@dataclass(frozen=True, slots=True)
class ValidRequest:
    feeds: dict[str, np.ndarray]  # every input batches the same number of rows, 1..max_batch_size
    outputs: Sequence[tuple[str, str]]  # (name, datatype) of each output to return, in order
    priority: int
    timeout_us: int


def validate(signature: ModelSignature, request: InferRequest) -> ValidRequest:
    feeds = _inputs(signature, request)
    _check_rows(signature, feeds)
    parameters = request.parameters
    if parameters:
        priority = _uint_parameter(parameters, "priority")
        timeout_us = _uint_parameter(parameters, "timeout")
    else:
        priority = timeout_us = 0
    return ValidRequest(feeds, _outputs(signature, request.outputs), priority, timeout_us)


def _inputs(signature: ModelSignature, request: InferRequest) -> dict[str, np.ndarray]:
    declared = signature.inputs
    simple = signature.batch_only_variable
    model = signature.name
    feeds: dict[str, np.ndarray] = {}
    for tensor in request.inputs:
        name = tensor.name
        expected = declared.get(name)
        if expected is None:
            raise InvalidInput(f"unexpected inference input '{name}' for model '{model}' (inputs: {sorted(declared)})")
        if name in feeds:
            raise InvalidInput(f"inference input '{name}' is given more than once")
        datatype, shape = expected
        if tensor.datatype != datatype:
            raise InvalidInput(
                f"inference input '{name}' data-type is '{tensor.datatype}', but model '{model}' expects '{datatype}'"
            )
        got = tensor.data.shape
        if name in simple:  # only the batch dimension varies: the rest compares at once
            fits = len(got) == len(shape) and got[1:] == shape[1:]
        else:
            fits = len(got) == len(shape) and all(e == -1 or g == e for g, e in zip(got, shape, strict=True))
        if not fits:
            raise InvalidInput(
                f"unexpected shape for input '{name}' for model '{model}'. Expected {list(shape)}, got {list(got)}"
                + (" (the first dimension is the batch)" if signature.max_batch_size else "")
            )
        feeds[name] = tensor.data
    if len(feeds) != len(declared):
        missing = [name for name in declared if name not in feeds]
        raise InvalidInput(
            f"expected {len(declared)} inputs but got {len(feeds)} inputs for model '{model}': missing {missing}"
        )
    return feeds


def _check_rows(signature: ModelSignature, feeds: dict[str, np.ndarray]) -> None:
    if signature.max_batch_size == 0:
        return  # the model does not batch: tensors go through as sent
    if len(feeds) == 1:
        (array,) = feeds.values()
        rows = array.shape[0]
        if 0 < rows <= signature.max_batch_size:
            return  # the common case, without the bookkeeping below
    counts = {name: array.shape[0] for name, array in feeds.items()}
    rows = next(iter(counts.values()))
    if any(count != rows for count in counts.values()):
        listed = ", ".join(f"'{name}' has {count}" for name, count in counts.items())
        raise InvalidInput(f"inputs disagree on the batch size (their first dimension): {listed}")
    if rows == 0:
        first = next(iter(counts))
        raise InvalidInput(
            f"inference input '{first}' has an empty batch dimension (0 rows) for model '{signature.name}'"
        )
    if rows > signature.max_batch_size:
        limit = signature.max_batch_size
        # Triton's words first (scripts match them), then what the client can do about it.
        raise InvalidInput(
            f"inference request batch-size must be <= {limit} for '{signature.name}': the request has {rows} rows "
            f"(its first dimension) and the model's config sets max_batch_size {limit}; split it into requests of "
            f"at most {limit} rows, or raise max_batch_size in the model's config.pbtxt (without one, it is "
            "--default-max-batch-size)"
        )


def _outputs(signature: ModelSignature, requested: list[RequestedOutput] | None) -> Sequence[tuple[str, str]]:
    declared = signature.outputs
    if requested is None:
        return signature.all_outputs
    wanted: list[tuple[str, str]] = []
    seen: set[str] = set()
    for output in requested:
        datatype = declared.get(output.name)
        if datatype is None:
            raise UnknownOutput(
                f"unexpected inference output '{output.name}' for model '{signature.name}' "
                f"(outputs: {sorted(declared)})"
            )
        if output.name in seen:
            raise InvalidInput(f"inference output '{output.name}' is requested more than once")
        seen.add(output.name)
        wanted.append((output.name, datatype))
    return wanted


def _uint_parameter(parameters: dict[str, Any], key: str) -> int:
    value = parameters.get(key)
    if value is None:
        return 0
    # bool is an int subclass, and a float (NaN, inf, 1.5) is never a count of anything.
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or not 0 <= value <= _UINT64_MAX:
        shown = value if not isinstance(value, float) or math.isfinite(value) else str(value)
        raise InvalidInput(f"parameter '{key}' must be a non-negative integer, got {shown!r}")
    return int(value)
