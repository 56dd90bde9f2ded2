"""HTTP inference bodies: Open Inference Protocol JSON plus Triton's binary tensor data extension.

Request layout (PROTOCOL.md §4): a JSON header of ``Inference-Header-Content-Length`` bytes, then
one blob per input that declares ``binary_data_size``, in input order, unpadded. Binary inputs
become numpy views over the request body (no copy). Responses mirror that layout.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NotRequired, TypedDict

import numpy as np
import orjson

from serve.codecs.bytes_tensor import deserialize_bytes_tensor, serialize_bytes_tensor
from serve.codecs.http_compression import decompress_body
from serve.codecs.json_tensors import array_to_json, json_to_array
from serve.codecs.shapes import element_count
from serve.datatypes import OIP_TO_NUMPY, OIP_TO_WIRE_DTYPE
from serve.errors import InvalidInput, Unsupported
from serve.types import (
    InferRequest,
    InferResponse,
    InputTensor,
    OutputTensor,
    Parameters,
    RequestedOutput,
    TensorSpec,
)

__all__ = ["decode_infer_request", "decompress_body", "encode_error", "encode_infer_response"]

_BINARY_SIZE = "binary_data_size"
_BINARY_OUTPUT = "binary_data_output"


class _OutputEntry(TypedDict):
    """One output in a response's JSON header: its data inline, or its blob's size in parameters."""

    name: str
    datatype: str
    shape: list[int]
    parameters: NotRequired[dict[str, int]]
    data: NotRequired[Any]  # array_to_json's value: a list, or a numpy array orjson writes


class _ResponseHeader(TypedDict):
    model_name: str
    model_version: str
    id: NotRequired[str]
    parameters: NotRequired[Parameters]
    outputs: NotRequired[list[_OutputEntry]]  # set last: the keys go on the wire in insertion order


def decode_infer_request(
    body: bytes,
    *,
    header_length: int | None,
    model_name: str,
    model_version: str,
    model_inputs: Sequence[TensorSpec] | None = None,
) -> InferRequest:
    view = memoryview(body)
    if header_length == 0:
        return _decode_raw_request(view, model_name, model_version, model_inputs)
    total = len(view)
    if header_length is None:
        header_length = total
    elif header_length < 0 or header_length > total:
        raise InvalidInput(f"Inference-Header-Content-Length {header_length} is outside the body's [0, {total}] bytes")
    header = load_json_object(view[:header_length])

    request_id = header.get("id")
    if request_id is None:
        request_id = ""
    elif not isinstance(request_id, str):
        raise InvalidInput(f"'id' must be a string, got {type(request_id).__name__}")
    parameters = _request_parameters(header.get("parameters"))

    raw_inputs = header.get("inputs")
    if not isinstance(raw_inputs, list):
        raise InvalidInput("'inputs' must be an array")
    inputs: list[InputTensor] = []
    offset = header_length
    for index, raw in enumerate(raw_inputs):
        tensor, offset = _decode_input(raw, index, view, offset)
        inputs.append(tensor)
    if offset != total:
        raise InvalidInput(
            f"request body has {total - offset} bytes after the JSON header and the inputs' binary_data_size blobs"
        )

    return InferRequest(
        model_name=model_name,
        model_version=model_version,
        id=request_id,
        inputs=inputs,
        outputs=_requested_outputs(header.get("outputs")),
        parameters=parameters,
    )


def load_json_object(raw: bytes | memoryview) -> dict[str, object]:
    """A request's JSON, which must be an object."""
    try:
        header = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"request JSON is malformed: {exc}") from None
    if not isinstance(header, dict):
        raise InvalidInput(f"request JSON must be an object, got {type(header).__name__}")
    return header


def _object(value: object, what: str) -> dict[str, object]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInput(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _request_parameters(value: object) -> Parameters:
    parameters = _object(value, "'parameters'")
    binary_output = parameters.get(_BINARY_OUTPUT)
    if binary_output is not None and not isinstance(binary_output, bool):
        raise InvalidInput(f"parameter '{_BINARY_OUTPUT}' must be a boolean")
    return parameters


def _decode_input(raw: Any, index: int, view: memoryview, offset: int) -> tuple[InputTensor, int]:
    if not isinstance(raw, dict):
        raise InvalidInput(f"inputs[{index}] must be a JSON object")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidInput(f"inputs[{index}]: 'name' must be a non-empty string")
    datatype = raw.get("datatype")
    if not isinstance(datatype, str):
        raise InvalidInput(f"input '{name}': 'datatype' must be a string")
    if datatype not in OIP_TO_NUMPY:
        raise InvalidInput(f"input '{name}': unsupported datatype '{datatype}'")
    shape = _shape(raw.get("shape"), name)
    parameters = _object(raw.get("parameters"), f"input '{name}': 'parameters'")
    if "shared_memory_region" in parameters:
        raise Unsupported(f"input '{name}': the shared memory extension is not supported")

    size = parameters.get(_BINARY_SIZE)
    has_data = "data" in raw
    if size is not None:
        if has_data:
            raise InvalidInput(f"input '{name}': has both 'data' and parameter '{_BINARY_SIZE}'")
        data, offset = _binary_input(view, offset, size, name, datatype, shape)
    elif has_data:
        data = json_to_array(raw["data"], datatype, shape, name)
    else:
        raise InvalidInput(f"input '{name}': has neither 'data' nor parameter '{_BINARY_SIZE}'")
    return InputTensor(name=name, datatype=datatype, data=data, parameters=parameters), offset


def _shape(value: Any, name: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(_is_int(d) and d >= 0 for d in value):
        shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
        raise InvalidInput(f"input '{name}': 'shape' must be an array of non-negative integers, got {shown}")
    return tuple(value)


def _binary_input(
    view: memoryview, offset: int, size: Any, name: str, datatype: str, shape: tuple[int, ...]
) -> tuple[np.ndarray, int]:
    if not _is_int(size) or size < 0:
        raise InvalidInput(f"input '{name}': '{_BINARY_SIZE}' must be a non-negative integer, got {size!r}")
    end = offset + size
    if end > len(view):
        raise InvalidInput(
            f"input '{name}': {_BINARY_SIZE} is {size} bytes but only {len(view) - offset} bytes "
            "of binary data are left in the body"
        )
    count = element_count(shape, name)
    if datatype == "BYTES":
        return deserialize_bytes_tensor(view[offset:end], count, name).reshape(shape), end
    dtype = OIP_TO_WIRE_DTYPE[datatype]
    needed = count * dtype.itemsize
    if size != needed:
        raise InvalidInput(
            f"input '{name}': {_BINARY_SIZE} is {size} bytes but shape {list(shape)} of {datatype} needs {needed}"
        )
    # A read-only view into the request body: the tensor bytes are never copied here.
    return np.frombuffer(view, dtype=dtype, count=count, offset=offset).reshape(shape), end


def _requested_outputs(value: Any) -> list[RequestedOutput] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise InvalidInput("'outputs' must be an array")
    if not value:
        return None  # an empty list asks for nothing in particular: every output, as Triton does
    outputs: list[RequestedOutput] = []
    for index, raw in enumerate(value):
        if not isinstance(raw, dict):
            raise InvalidInput(f"outputs[{index}] must be a JSON object")
        name = raw.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidInput(f"outputs[{index}]: 'name' must be a non-empty string")
        parameters = _object(raw.get("parameters"), f"output '{name}': 'parameters'")
        if "shared_memory_region" in parameters:
            raise Unsupported(f"output '{name}': the shared memory extension is not supported")
        binary = parameters.get("binary_data")
        if binary is not None and not isinstance(binary, bool):
            raise InvalidInput(f"output '{name}': parameter 'binary_data' must be a boolean")
        outputs.append(RequestedOutput(name=name, binary_data=binary, parameters=parameters))
    return outputs


def _decode_raw_request(
    view: memoryview, model_name: str, model_version: str, model_inputs: Sequence[TensorSpec] | None
) -> InferRequest:
    # Triton's "raw binary request": the body is the bytes of the only input, batch 1 when the
    # model batches (the caller's dims already carry that leading 1), and every output is binary.
    count = 0 if model_inputs is None else len(model_inputs)
    if model_inputs is None or count != 1:
        raise InvalidInput(
            "a raw binary request (Inference-Header-Content-Length: 0) needs a model with exactly "
            f"1 input; '{model_name}' has {count}"
        )
    spec = model_inputs[0]
    if spec.datatype not in OIP_TO_NUMPY:
        raise InvalidInput(f"input '{spec.name}': unsupported datatype '{spec.datatype}'")
    dims = list(spec.dims)
    if spec.datatype == "BYTES":
        if any(d < 0 for d in dims) or math.prod(dims) != 1:
            raise InvalidInput(
                f"input '{spec.name}': a raw binary BYTES input needs a model input of shape [1], not {dims}"
            )
        # The whole body is the single element (Triton adds the length prefix itself).
        data = np.empty(1, dtype=object)
        data[0] = bytes(view)
    else:
        dtype = OIP_TO_WIRE_DTYPE[spec.datatype]
        dims = _deduce_raw_dims(dims, len(view), dtype.itemsize, spec)
        data = np.frombuffer(view, dtype=dtype, count=math.prod(dims))
    shape = tuple(dims)
    return InferRequest(
        model_name=model_name,
        model_version=model_version,
        inputs=[InputTensor(name=spec.name, datatype=spec.datatype, data=data.reshape(shape))],
        outputs=None,
        parameters={_BINARY_OUTPUT: True},
    )


def _deduce_raw_dims(dims: list[int], nbytes: int, itemsize: int, spec: TensorSpec) -> list[int]:
    variable = [i for i, d in enumerate(dims) if d < 0]
    if len(variable) > 1:
        raise InvalidInput(
            f"input '{spec.name}': the shape of a raw binary input cannot be deduced because {dims} "
            "has more than one variable dimension"
        )
    row_bytes = math.prod(d for d in dims if d >= 0) * itemsize
    if variable:
        if row_bytes == 0 or nbytes % row_bytes:
            raise InvalidInput(
                f"input '{spec.name}': a raw binary body of {nbytes} bytes is not a whole number of "
                f"{spec.datatype} tensors of shape {dims}"
            )
        dims[variable[0]] = nbytes // row_bytes
    elif nbytes != row_bytes:
        raise InvalidInput(
            f"input '{spec.name}': a raw binary body of {nbytes} bytes does not match shape {dims} of "
            f"{spec.datatype} ({row_bytes} bytes)"
        )
    return dims


def encode_infer_response(resp: InferResponse, request: InferRequest) -> tuple[bytes, int | None]:
    default_binary = request.parameters.get(_BINARY_OUTPUT) is True
    per_output = {o.name: o.binary_data for o in request.outputs} if request.outputs else {}
    outputs: list[_OutputEntry] = []
    blobs: list[Any] = []
    for output in resp.outputs:
        binary = per_output.get(output.name)
        if binary is None:
            binary = default_binary
        entry: _OutputEntry = {
            "name": output.name,
            "datatype": output.datatype,
            "shape": list(output.data.shape),
        }
        if binary:
            blob = _binary_blob(output)
            entry["parameters"] = {_BINARY_SIZE: len(blob)}
            blobs.append(blob)
        else:
            # No "parameters" key here: tritonclient's C++ parser then insists on binary_data_size.
            entry["data"] = array_to_json(output.data, output.datatype, output.name)
        outputs.append(entry)

    header: _ResponseHeader = {"model_name": resp.model_name, "model_version": resp.model_version}
    response_id = resp.id or request.id
    if response_id:
        header["id"] = response_id  # perf_analyzer --async matches responses by id
    if resp.parameters:
        header["parameters"] = resp.parameters
    header["outputs"] = outputs
    json_header = orjson.dumps(header, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return json_header, None
    return b"".join([json_header, *blobs]), len(json_header)


def _binary_blob(output: OutputTensor) -> bytes | np.ndarray:
    """The output's wire bytes: bytes for BYTES, else a flat uint8 view (b"".join takes buffers)."""
    if output.datatype == "BYTES":
        return serialize_bytes_tensor(output.data)
    wire = OIP_TO_WIRE_DTYPE.get(output.datatype)  # None for types numpy lacks (BF16): send as is
    array = np.ascontiguousarray(output.data, dtype=wire)
    return array.reshape(-1).view(np.uint8)


def encode_error(message: str) -> bytes:
    return orjson.dumps({"error": message})
