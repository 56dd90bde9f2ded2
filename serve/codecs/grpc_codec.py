"""Translation between the gRPC protobuf messages and serve's transport-neutral types.

Requests may carry tensors as ``raw_input_contents`` (what tritonclient always sends) or as
typed ``InferTensorContents``; responses always use ``raw_output_contents``, which every
client reads and which avoids building one protobuf value per element.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import numpy as np

from serve.codecs.bytes_tensor import deserialize_bytes_tensor, serialize_bytes_tensor
from serve.codecs.shapes import element_count
from serve.datatypes import OIP_TO_WIRE_DTYPE
from serve.errors import InvalidInput, ModelExecutionError
from serve.protocol import grpc_service_pb2 as pb
from serve.types import InferRequest, InferResponse, InputTensor, Parameters, RequestedOutput

# The InferTensorContents field that carries each datatype, and the numpy type protobuf
# stores it as; narrower integer types travel widened to 32 bits.
_TYPED_FIELD: Final[dict[str, tuple[str, np.dtype]]] = {
    "BOOL": ("bool_contents", np.dtype(np.bool_)),
    "UINT8": ("uint_contents", np.dtype(np.uint32)),
    "UINT16": ("uint_contents", np.dtype(np.uint32)),
    "UINT32": ("uint_contents", np.dtype(np.uint32)),
    "UINT64": ("uint64_contents", np.dtype(np.uint64)),
    "INT8": ("int_contents", np.dtype(np.int32)),
    "INT16": ("int_contents", np.dtype(np.int32)),
    "INT32": ("int_contents", np.dtype(np.int32)),
    "INT64": ("int64_contents", np.dtype(np.int64)),
    "FP32": ("fp32_contents", np.dtype(np.float32)),
    "FP64": ("fp64_contents", np.dtype(np.float64)),
    "BYTES": ("bytes_contents", np.dtype(object)),
}
# Half floats have no typed field; the protocol allows them only as raw contents.
_RAW_ONLY: Final[frozenset[str]] = frozenset({"FP16", "BF16"})
_INT64_MAX: Final[int] = 2**63 - 1


def decode_parameters(params: Mapping[str, Any]) -> Parameters:
    """InferParameter map -> plain Python values; entries with no value set are dropped."""
    out: Parameters = {}
    if not params:  # the common case, and cheaper than iterating an empty protobuf map
        return out
    for key, param in params.items():
        choice = param.WhichOneof("parameter_choice")
        if choice is not None:
            out[key] = getattr(param, choice)
    return out


def encode_parameters(params: Mapping[str, Any], target_map: Any) -> None:
    """Plain Python values -> an InferParameter map (``target_map`` is the message's map field)."""
    for key, value in params.items():
        param = target_map[key]
        # bool before int: bool is an int subclass.
        if isinstance(value, bool | np.bool_):
            param.bool_param = bool(value)
        elif isinstance(value, int | np.integer):
            value = int(value)
            if value > _INT64_MAX:
                param.uint64_param = value
            else:
                param.int64_param = value
        elif isinstance(value, str):
            param.string_param = value
        elif isinstance(value, float | np.floating):
            param.double_param = float(value)
        else:
            raise TypeError(f"parameter '{key}': {type(value).__name__} has no InferParameter form")


def decode_infer_request(msg: pb.ModelInferRequest) -> InferRequest:
    """Validate and decode a request; raw tensors become read-only views of the message bytes."""
    # Every message read here is a protobuf attribute access; the hot path reads each once.
    raw = msg.raw_input_contents
    tensors = msg.inputs
    if raw:
        _check_raw_layout(msg)
    inputs: list[InputTensor] = []
    for index, tensor in enumerate(tensors):
        name = tensor.name
        datatype = tensor.datatype
        shape = tuple(tensor.shape[:])  # slicing first: iterating the repeated field is slower
        if shape and min(shape) < 0:
            raise InvalidInput(f"input '{name}': shape {list(shape)} has a negative dimension")
        if raw:
            data = _decode_raw(name, datatype, shape, raw[index])
        elif tensor.HasField("contents"):
            data = _decode_typed(name, datatype, shape, tensor.contents)
        else:
            raise InvalidInput(_missing_data_message(tensor))
        inputs.append(InputTensor(name, datatype, data, decode_parameters(tensor.parameters)))
    outputs = [RequestedOutput(name=out.name, parameters=decode_parameters(out.parameters)) for out in msg.outputs]
    return InferRequest(
        model_name=msg.model_name,
        model_version=msg.model_version,
        id=msg.id,
        inputs=inputs,
        outputs=outputs or None,
        parameters=decode_parameters(msg.parameters),
    )


def _missing_data_message(tensor: Any) -> str:
    message = f"input '{tensor.name}' has no data: neither raw_input_contents nor contents"
    if "shared_memory_region" in tensor.parameters:
        # tritonclient's set_shared_memory() sends region parameters in place of data.
        message += "; shared memory inputs are not supported"
    return message


def _check_raw_layout(msg: pb.ModelInferRequest) -> None:
    inputs = msg.inputs
    for tensor in inputs:
        if tensor.HasField("contents"):
            raise InvalidInput(
                f"input '{tensor.name}': 'contents' must not be set when the request uses raw_input_contents"
            )
    given = len(msg.raw_input_contents)
    if given < len(inputs):
        raise InvalidInput(
            f"input '{inputs[given].name}' has no entry in raw_input_contents ({given} entries for "
            f"{len(inputs)} inputs; there must be exactly one per input, in the order of 'inputs')"
        )
    if given > len(inputs):
        names = ", ".join(f"'{t.name}'" for t in inputs)
        raise InvalidInput(
            f"raw_input_contents has {given} entries but the request has {len(inputs)} inputs ({names}); "
            "there must be exactly one per input"
        )


def _decode_raw(name: str, datatype: str, shape: tuple[int, ...], buffer: bytes) -> np.ndarray:
    count = element_count(shape, name)
    if datatype == "BYTES":
        return deserialize_bytes_tensor(buffer, count, name).reshape(shape)
    dtype = _wire_dtype(name, datatype)
    expected = count * dtype.itemsize
    if len(buffer) != expected:
        raise InvalidInput(
            f"input '{name}': raw data has {len(buffer)} bytes, but shape {list(shape)} of {datatype} needs {expected}"
        )
    array = np.frombuffer(buffer, dtype=dtype)
    if not dtype.isnative:  # only on big-endian hosts
        array = array.astype(dtype.newbyteorder("="))
    return array.reshape(shape)


def _decode_typed(name: str, datatype: str, shape: tuple[int, ...], contents: Any) -> np.ndarray:
    if datatype in _RAW_ONLY:
        raise InvalidInput(f"input '{name}': {datatype} data must be sent in raw_input_contents")
    try:
        field, stored = _TYPED_FIELD[datatype]
    except KeyError:
        raise InvalidInput(f"input '{name}': unsupported datatype '{datatype}'") from None
    for descriptor, _ in contents.ListFields():
        if descriptor.name != field:
            raise InvalidInput(
                f"input '{name}': contents carry {descriptor.name}, but datatype {datatype} uses {field}"
            )
    values = getattr(contents, field)
    count = element_count(shape, name)
    if len(values) != count:
        raise InvalidInput(
            f"input '{name}': contents hold {len(values)} elements, but shape {list(shape)} needs {count}"
        )
    if datatype == "BYTES":
        array = np.empty(count, dtype=object)
        array[:] = list(values)
        return array.reshape(shape)
    array = np.fromiter(values, dtype=stored, count=count)
    target = OIP_TO_WIRE_DTYPE[datatype].newbyteorder("=")
    if target != stored:
        info = np.iinfo(target)
        if count and (array.min() < info.min or array.max() > info.max):
            raise InvalidInput(f"input '{name}': a value in contents is out of range for {datatype}")
        array = array.astype(target)
    return array.reshape(shape)


def _wire_dtype(name: str, datatype: str) -> np.dtype:
    try:
        return OIP_TO_WIRE_DTYPE[datatype]
    except KeyError:
        raise InvalidInput(f"input '{name}': unsupported datatype '{datatype}'") from None


def encode_infer_response(resp: InferResponse) -> pb.ModelInferResponse:
    msg = pb.ModelInferResponse(model_name=resp.model_name, model_version=resp.model_version, id=resp.id)
    if resp.parameters:
        encode_parameters(resp.parameters, msg.parameters)
    raw = msg.raw_output_contents
    for out in resp.outputs:
        tensor = msg.outputs.add(name=out.name, datatype=out.datatype, shape=out.data.shape)
        if out.parameters:
            encode_parameters(out.parameters, tensor.parameters)
        raw.append(_encode_raw(out.name, out.datatype, out.data))
    return msg


def _encode_raw(name: str, datatype: str, data: np.ndarray) -> bytes:
    if datatype == "BYTES":
        return serialize_bytes_tensor(np.asarray(data))
    dtype = OIP_TO_WIRE_DTYPE.get(datatype)
    if dtype is None:
        raise ModelExecutionError(f"output '{name}': datatype '{datatype}' cannot be encoded")
    # tobytes writes row-major whatever the layout, in the one copy a protobuf bytes field needs;
    # only an array of another type or byte order is converted first.
    if data.dtype != dtype:
        data = data.astype(dtype)
    return data.tobytes()
