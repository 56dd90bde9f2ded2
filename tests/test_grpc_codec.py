"""serve.codecs.grpc_codec against messages built and read by tritonclient itself."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.grpc import service_pb2 as triton_pb
from tritonclient.grpc._utils import _get_inference_request

from serve.codecs.grpc_codec import (
    decode_infer_request,
    decode_parameters,
    encode_infer_response,
    encode_parameters,
)
from serve.errors import InvalidInput
from serve.protocol import grpc_service_pb2 as pb
from serve.types import InferResponse, OutputTensor

SAMPLES: dict[str, np.ndarray] = {
    "BOOL": np.array([[True, False, True], [False, False, True]]),
    "UINT8": np.array([[0, 1, 255], [7, 8, 9]], dtype=np.uint8),
    "UINT16": np.array([[0, 1, 65535], [7, 8, 9]], dtype=np.uint16),
    "UINT32": np.array([[0, 1, 2**32 - 1], [7, 8, 9]], dtype=np.uint32),
    "UINT64": np.array([[0, 1, 2**64 - 1], [7, 8, 9]], dtype=np.uint64),
    "INT8": np.array([[-128, 0, 127], [7, -8, 9]], dtype=np.int8),
    "INT16": np.array([[-32768, 0, 32767], [7, -8, 9]], dtype=np.int16),
    "INT32": np.array([[-(2**31), 0, 2**31 - 1], [7, -8, 9]], dtype=np.int32),
    "INT64": np.array([[-(2**63), 0, 2**63 - 1], [7, -8, 9]], dtype=np.int64),
    "FP16": np.array([[0.5, -1.25, 65504.0], [np.inf, -0.0, 3.0]], dtype=np.float16),
    "FP32": np.array([[0.5, -1.25, 3.4e38], [np.inf, -0.0, 1e-30]], dtype=np.float32),
    "FP64": np.array([[0.5, -1.25, 1.7e308], [np.inf, -0.0, 1e-300]], dtype=np.float64),
    "BYTES": np.array([[b"hello", b"", b"\xff\xfe\x00bin"], [b"x", "caf\u00e9".encode(), b""]], dtype=object),
}


def _triton_request(
    inputs: list[triton.InferInput],
    outputs: list[triton.InferRequestedOutput] | None = None,
    *,
    request_id: str = "",
    priority: int = 0,
    timeout: int | None = None,
    parameters: dict[str, Any] | None = None,
) -> pb.ModelInferRequest:
    """Build the request exactly as tritonclient's InferenceServerClient.infer does, then parse it as ours."""
    theirs = _get_inference_request(
        model_name="model",
        inputs=inputs,
        model_version="",
        request_id=request_id,
        outputs=outputs,
        sequence_id=0,
        sequence_start=False,
        sequence_end=False,
        priority=priority,
        timeout=timeout,
        parameters=parameters,
    )
    return pb.ModelInferRequest.FromString(theirs.SerializeToString())


def _triton_input(name: str, datatype: str, array: np.ndarray) -> triton.InferInput:
    return triton.InferInput(name, list(array.shape), datatype).set_data_from_numpy(array)


def _typed_request(datatype: str, shape: list[int], **contents: Any) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="model")
    request.inputs.add(name="x", datatype=datatype, shape=shape, contents=pb.InferTensorContents(**contents))
    return request


def _read_with_tritonclient(message: pb.ModelInferResponse) -> triton.InferResult:
    return triton.InferResult(triton_pb.ModelInferResponse.FromString(message.SerializeToString()))


def _raw_request(*tensors: tuple[str, str, list[int]], raw: list[bytes]) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="model", raw_input_contents=raw)
    for name, datatype, shape in tensors:
        request.inputs.add(name=name, datatype=datatype, shape=shape)
    return request


# ---------------------------------------------------------------- requests from tritonclient


@pytest.mark.parametrize("datatype", list(SAMPLES))
def test_tritonclient_raw_input_decodes_to_an_equal_array(datatype: str) -> None:
    array = SAMPLES[datatype]
    request = decode_infer_request(_triton_request([_triton_input("x", datatype, array)]))
    (tensor,) = request.inputs
    assert (tensor.name, tensor.datatype, tensor.data.shape) == ("x", datatype, (2, 3))
    assert tensor.data.dtype == array.dtype
    assert tensor.data.shape == array.shape
    np.testing.assert_array_equal(tensor.data, array)


def test_several_inputs_each_decode_from_their_own_raw_entry() -> None:
    inputs = [_triton_input(dt, dt, SAMPLES[dt]) for dt in ("BYTES", "FP32", "INT8")]
    request = decode_infer_request(_triton_request(inputs))
    assert [t.name for t in request.inputs] == ["BYTES", "FP32", "INT8"]
    for tensor in request.inputs:
        np.testing.assert_array_equal(tensor.data, SAMPLES[tensor.name])


@pytest.mark.parametrize(
    ("datatype", "array"),
    [("FP32", np.zeros((0, 4), np.float32)), ("BYTES", np.zeros((2, 0), dtype=object))],
    ids=["FP32", "BYTES"],
)
def test_empty_tensor_decodes_with_its_shape(datatype: str, array: np.ndarray) -> None:
    request = decode_infer_request(_triton_request([_triton_input("x", datatype, array)]))
    assert request.inputs[0].data.shape == array.shape


def test_model_name_version_and_id_are_copied() -> None:
    message = _triton_request([_triton_input("x", "FP32", SAMPLES["FP32"])], request_id="req-42")
    message.model_version = "3"
    request = decode_infer_request(message)
    assert (request.model_name, request.model_version, request.id) == ("model", "3", "req-42")


def test_priority_as_uint64_and_timeout_as_int64_decode_to_ints() -> None:
    message = _triton_request([_triton_input("x", "FP32", SAMPLES["FP32"])], priority=2, timeout=1500)
    assert message.parameters["priority"].WhichOneof("parameter_choice") == "uint64_param"
    assert message.parameters["timeout"].WhichOneof("parameter_choice") == "int64_param"
    request = decode_infer_request(message)
    assert request.parameters == {"priority": 2, "timeout": 1500}
    assert (request.parameters["priority"], request.parameters["timeout"]) == (2, 1500)


def test_custom_request_parameters_decode_to_python_values() -> None:
    params = {"flag": True, "count": -3, "label": "a b", "ratio": 0.25}
    message = _triton_request([_triton_input("x", "FP32", SAMPLES["FP32"])], parameters=params)
    assert decode_infer_request(message).parameters == params


def test_input_parameters_are_decoded() -> None:
    message = _triton_request([_triton_input("x", "FP32", SAMPLES["FP32"])])
    message.inputs[0].parameters["layout"].string_param = "NCHW"
    assert decode_infer_request(message).inputs[0].parameters == {"layout": "NCHW"}


def test_requested_outputs_decode_with_their_parameters() -> None:
    outputs = [triton.InferRequestedOutput("probs", class_count=3), triton.InferRequestedOutput("raw")]
    request = decode_infer_request(_triton_request([_triton_input("x", "FP32", SAMPLES["FP32"])], outputs))
    assert request.outputs is not None
    assert [(o.name, o.parameters, o.binary_data) for o in request.outputs] == [
        ("probs", {"classification": 3}, None),
        ("raw", {}, None),
    ]


def test_no_requested_outputs_decodes_to_none() -> None:
    request = decode_infer_request(_triton_request([_triton_input("x", "FP32", SAMPLES["FP32"])]))
    assert request.outputs is None


def test_unset_parameter_value_is_dropped() -> None:
    message = pb.ModelInferRequest()
    message.parameters["empty"].SetInParent()
    message.parameters["n"].int64_param = 1
    assert decode_parameters(message.parameters) == {"n": 1}


# ---------------------------------------------------------------- typed contents


@pytest.mark.parametrize(
    ("datatype", "field", "values"),
    [
        ("BOOL", "bool_contents", [True, False, True, True]),
        ("UINT8", "uint_contents", [0, 1, 200, 255]),
        ("UINT16", "uint_contents", [0, 1, 60000, 65535]),
        ("UINT32", "uint_contents", [0, 1, 2**32 - 1, 5]),
        ("UINT64", "uint64_contents", [0, 1, 2**64 - 1, 5]),
        ("INT8", "int_contents", [-128, 0, 127, 5]),
        ("INT16", "int_contents", [-32768, 0, 32767, 5]),
        ("INT32", "int_contents", [-(2**31), 0, 2**31 - 1, 5]),
        ("INT64", "int64_contents", [-(2**63), 0, 2**63 - 1, 5]),
        ("FP32", "fp32_contents", [0.5, -1.25, 1e30, 0.0]),
        ("FP64", "fp64_contents", [0.5, -1.25, 1e300, 0.0]),
        ("BYTES", "bytes_contents", [b"a", b"", b"\xff\x00", b"zz"]),
    ],
)
def test_typed_contents_decode_to_the_datatypes_dtype(datatype: str, field: str, values: list) -> None:
    request = decode_infer_request(_typed_request(datatype, [2, 2], **{field: values}))
    data = request.inputs[0].data
    assert data.dtype == SAMPLES[datatype].dtype
    assert data.shape == (2, 2)
    np.testing.assert_array_equal(data.reshape(-1), np.array(values, dtype=SAMPLES[datatype].dtype))


# ---------------------------------------------------------------- malformed requests


def _assert_invalid(message: pb.ModelInferRequest, *needles: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        decode_infer_request(message)
    for needle in needles:
        assert needle in str(caught.value)


def test_unknown_datatype_is_rejected_naming_the_input() -> None:
    _assert_invalid(_raw_request(("pixels", "FLOAT", [1]), raw=[b"\x00" * 4]), "'pixels'", "FLOAT")


def test_bf16_is_rejected_as_unsupported() -> None:
    _assert_invalid(_raw_request(("pixels", "BF16", [2]), raw=[b"\x00" * 4]), "'pixels'", "BF16")


def test_negative_dimension_is_rejected_naming_the_input() -> None:
    _assert_invalid(_raw_request(("pixels", "FP32", [-1, 2]), raw=[b""]), "'pixels'", "negative")


def test_fewer_raw_entries_than_inputs_is_rejected_naming_the_input_without_data() -> None:
    message = _raw_request(("a", "INT8", [1]), ("b", "INT8", [1]), raw=[b"\x01"])
    _assert_invalid(message, "'b'", "raw_input_contents")


def test_more_raw_entries_than_inputs_is_rejected_naming_the_inputs() -> None:
    message = _raw_request(("a", "INT8", [1]), raw=[b"\x01", b"\x02"])
    _assert_invalid(message, "'a'", "raw_input_contents")


def test_raw_and_typed_contents_mixed_is_rejected_naming_the_typed_input() -> None:
    message = _raw_request(("a", "INT8", [1]), raw=[b"\x01"])
    message.inputs.add(name="b", datatype="INT32", shape=[1]).contents.int_contents.append(4)
    _assert_invalid(message, "'b'", "contents")


def test_raw_byte_size_not_matching_the_shape_is_rejected_naming_the_input() -> None:
    message = _raw_request(("pixels", "FP32", [2, 2]), raw=[b"\x00" * 12])
    _assert_invalid(message, "'pixels'", "12 bytes", "16")


def test_malformed_raw_bytes_tensor_is_rejected_naming_the_input() -> None:
    message = _raw_request(("text", "BYTES", [2]), raw=[b"\x01\x00\x00\x00a"])
    _assert_invalid(message, "'text'")


def test_typed_element_count_not_matching_the_shape_is_rejected_naming_the_input() -> None:
    _assert_invalid(_typed_request("FP32", [2, 2], fp32_contents=[1.0, 2.0, 3.0]), "'x'", "3 elements", "4")


def test_typed_contents_in_the_wrong_field_are_rejected_naming_the_input() -> None:
    _assert_invalid(_typed_request("FP32", [2], int_contents=[1, 2]), "'x'", "int_contents", "fp32_contents")


def test_typed_value_out_of_range_for_a_narrow_integer_is_rejected() -> None:
    _assert_invalid(_typed_request("INT8", [2], int_contents=[1, 300]), "'x'", "INT8")


@pytest.mark.parametrize("datatype", ["FP16", "BF16"])
def test_half_floats_as_typed_contents_are_rejected_naming_the_input(datatype: str) -> None:
    _assert_invalid(_typed_request(datatype, [1], fp32_contents=[1.0]), "'x'", "raw_input_contents")


def test_input_with_neither_raw_nor_typed_data_is_rejected_naming_the_input() -> None:
    message = pb.ModelInferRequest(model_name="model")
    message.inputs.add(name="pixels", datatype="FP32", shape=[1])
    _assert_invalid(message, "'pixels'", "no data")


def test_shared_memory_input_is_rejected_as_unsupported() -> None:
    shm_input = triton.InferInput("pixels", [1], "FP32")
    shm_input.set_shared_memory("region0", 4)
    _assert_invalid(_triton_request([shm_input]), "'pixels'", "shared memory")


# ---------------------------------------------------------------- responses read by tritonclient


def _response(*outputs: OutputTensor, **kwargs: Any) -> InferResponse:
    return InferResponse(model_name="model", model_version="1", id="req-7", outputs=list(outputs), **kwargs)


@pytest.mark.parametrize("datatype", list(SAMPLES))
def test_encoded_response_reads_back_through_tritonclient_as_an_equal_array(datatype: str) -> None:
    array = SAMPLES[datatype]
    result = _read_with_tritonclient(encode_infer_response(_response(OutputTensor("y", datatype, array))))
    got = result.as_numpy("y")
    assert got.shape == array.shape
    assert got.dtype == array.dtype
    np.testing.assert_array_equal(got, array)


def test_response_echoes_model_version_and_id() -> None:
    message = encode_infer_response(_response(OutputTensor("y", "FP32", SAMPLES["FP32"])))
    response = _read_with_tritonclient(message).get_response()
    assert (response.model_name, response.model_version, response.id) == ("model", "1", "req-7")


def test_request_id_round_trips_from_request_to_response() -> None:
    request = decode_infer_request(_triton_request([_triton_input("x", "FP32", SAMPLES["FP32"])], request_id="abc-1"))
    message = encode_infer_response(InferResponse(request.model_name, "1", request.id, outputs=[]))
    assert _read_with_tritonclient(message).get_response().id == "abc-1"


def test_response_has_one_raw_entry_per_output_in_output_order() -> None:
    outputs = [OutputTensor(dt, dt, SAMPLES[dt]) for dt in ("INT64", "BYTES", "FP16")]
    message = encode_infer_response(_response(*outputs))
    assert [o.name for o in message.outputs] == ["INT64", "BYTES", "FP16"]
    assert len(message.raw_output_contents) == 3
    assert not any(o.HasField("contents") for o in message.outputs)
    result = _read_with_tritonclient(message)
    for out in outputs:
        np.testing.assert_array_equal(result.as_numpy(out.name), out.data)


def test_non_contiguous_and_big_endian_outputs_encode_as_little_endian_row_major() -> None:
    transposed = np.arange(6, dtype=np.float32).reshape(2, 3).T
    big_endian = np.arange(4, dtype=">i4").reshape(2, 2)
    message = encode_infer_response(
        _response(OutputTensor("t", "FP32", transposed), OutputTensor("b", "INT32", big_endian))
    )
    assert message.raw_output_contents[0] == np.ascontiguousarray(transposed).astype("<f4").tobytes()
    result = _read_with_tritonclient(message)
    np.testing.assert_array_equal(result.as_numpy("t"), transposed)
    np.testing.assert_array_equal(result.as_numpy("b"), big_endian)


def test_response_and_output_parameters_are_encoded() -> None:
    output = OutputTensor("y", "FP32", SAMPLES["FP32"], parameters={"note": "ok"})
    params = {"flag": True, "count": 3, "label": "s", "ratio": 0.5, "big": 2**64 - 1}
    message = encode_infer_response(_response(output, parameters=params))
    response = _read_with_tritonclient(message).get_response()
    assert decode_parameters(response.parameters) == params
    assert decode_parameters(response.outputs[0].parameters) == {"note": "ok"}


def test_encode_parameters_picks_the_oneof_member_by_python_type() -> None:
    message = pb.ModelInferResponse()
    encode_parameters({"b": np.bool_(True), "i": np.int32(4), "s": "x", "f": np.float32(0.5)}, message.parameters)
    kinds = {key: value.WhichOneof("parameter_choice") for key, value in message.parameters.items()}
    assert kinds == {"b": "bool_param", "i": "int64_param", "s": "string_param", "f": "double_param"}


def test_encode_parameters_rejects_a_value_with_no_protobuf_form() -> None:
    with pytest.raises(TypeError, match="'nested'"):
        encode_parameters({"nested": {"a": 1}}, pb.ModelInferResponse().parameters)


def test_string_array_output_encodes_as_bytes() -> None:
    array = np.array(["a", "\u00e9"])
    result = _read_with_tritonclient(encode_infer_response(_response(OutputTensor("s", "BYTES", array))))
    np.testing.assert_array_equal(result.as_numpy("s"), np.array([b"a", "\u00e9".encode()], dtype=object))
