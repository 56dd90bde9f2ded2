"""The HTTP codec against tritonclient's own request builder and response parser."""

from __future__ import annotations

import gzip
import zlib
from typing import Any

import numpy as np
import orjson
import pytest
import tritonclient.http as httpclient
from tritonclient.http._utils import _get_inference_request

from serve.codecs.http_codec import (
    decode_infer_request,
    decompress_body,
    encode_error,
    encode_infer_response,
)
from serve.errors import InvalidInput, PayloadTooLarge, Unsupported
from serve.types import InferRequest, InferResponse, OutputTensor, RequestedOutput, TensorSpec

SAMPLES: dict[str, np.ndarray] = {
    "BOOL": np.array([[True, False, True], [False, False, True]]),
    "UINT8": np.array([[0, 1, 255]], dtype=np.uint8),
    "UINT16": np.array([[0, 7, 65535]], dtype=np.uint16),
    "UINT32": np.array([[0, 7, 2**32 - 1]], dtype=np.uint32),
    "UINT64": np.array([[0, 7, 2**64 - 1]], dtype=np.uint64),
    "INT8": np.array([[-128, 0, 127]], dtype=np.int8),
    "INT16": np.array([[-32768, 0, 32767]], dtype=np.int16),
    "INT32": np.array([[-(2**31), 0, 2**31 - 1]], dtype=np.int32),
    "INT64": np.array([[-(2**63), 0, 2**63 - 1]], dtype=np.int64),
    "FP16": np.array([[0.5, -1.25, 65504.0]], dtype=np.float16),
    "FP32": np.array([[0.1, -2.5, 3.4e38], [1e-30, 0.0, -0.0]], dtype=np.float32),
    "FP64": np.array([[0.1, -2.5, 1.7e308]], dtype=np.float64),
    "BYTES": np.array(
        [[b"", "h\u00e9llo w\u00f6rld".encode(), b"plain"], ["\u65e5\u672c".encode(), b"", b"x"]],
        dtype=object,
    ),
}
JSON_DATATYPES = [dt for dt in SAMPLES if dt != "FP16"]


def client_request(
    inputs: list[httpclient.InferInput],
    outputs: list[httpclient.InferRequestedOutput] | None = None,
    *,
    request_id: str = "",
    priority: int = 0,
    timeout: int | None = None,
    custom_parameters: dict[str, Any] | None = None,
) -> tuple[bytes, int | None]:
    return _get_inference_request(
        inputs=inputs,
        request_id=request_id,
        outputs=outputs,
        sequence_id=0,
        sequence_start=False,
        sequence_end=False,
        priority=priority,
        timeout=timeout,
        custom_parameters=custom_parameters,
    )


def client_input(name: str, array: np.ndarray, datatype: str, *, binary: bool) -> httpclient.InferInput:
    tensor = httpclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=binary)
    return tensor


def decode(body: bytes, header_length: int | None, **kwargs: Any) -> InferRequest:
    return decode_infer_request(body, header_length=header_length, model_name="m", model_version="1", **kwargs)


def handmade(header: dict[str, Any], *blobs: bytes) -> tuple[bytes, int]:
    json_header = orjson.dumps(header)
    return json_header + b"".join(blobs), len(json_header)


def parse_response(body: bytes, header_length: int | None) -> httpclient.InferResult:
    return httpclient.InferResult.from_response_body(body, verbose=False, header_length=header_length)


def response_of(*outputs: OutputTensor, request_id: str = "") -> InferResponse:
    return InferResponse(model_name="m", model_version="1", id=request_id, outputs=list(outputs))


def assert_same(actual: np.ndarray, expected: np.ndarray) -> None:
    assert actual.shape == expected.shape
    if expected.dtype == object:
        assert actual.tolist() == expected.tolist()
    else:
        assert actual.dtype == expected.dtype
        np.testing.assert_array_equal(actual, expected)


# --- requests built by tritonclient -----------------------------------------------------------


@pytest.mark.parametrize("datatype", list(SAMPLES))
def test_decodes_tritonclient_binary_input_of_every_datatype(datatype: str) -> None:
    array = SAMPLES[datatype]
    body, header_length = client_request([client_input("x", array, datatype, binary=True)])

    request = decode(body, header_length)

    (tensor,) = request.inputs
    assert (tensor.name, tensor.datatype, tensor.data.shape) == ("x", datatype, array.shape)
    assert_same(tensor.data, array)


@pytest.mark.parametrize("datatype", JSON_DATATYPES)
def test_decodes_tritonclient_json_input_of_every_datatype(datatype: str) -> None:
    array = SAMPLES[datatype]
    body, header_length = client_request([client_input("x", array, datatype, binary=False)])
    assert header_length is None  # the Python client sends no header for all-JSON requests

    request = decode(body, header_length)

    assert_same(request.inputs[0].data, array)


def test_binary_input_is_a_view_over_the_body_not_a_copy() -> None:
    body, header_length = client_request([client_input("x", SAMPLES["FP32"], "FP32", binary=True)])

    tensor = decode(body, header_length).inputs[0].data

    assert np.shares_memory(tensor, np.frombuffer(body, dtype=np.uint8))


def test_binary_blobs_are_read_in_input_order_between_json_inputs() -> None:
    inputs = [
        client_input("a", SAMPLES["INT32"], "INT32", binary=True),
        client_input("b", SAMPLES["FP64"], "FP64", binary=False),
        client_input("c", SAMPLES["BYTES"], "BYTES", binary=True),
        client_input("d", SAMPLES["BOOL"], "BOOL", binary=True),
    ]
    body, header_length = client_request(inputs)

    request = decode(body, header_length)

    for tensor, name in zip(request.inputs, "abcd", strict=True):
        assert tensor.name == name
    for tensor, datatype in zip(request.inputs, ["INT32", "FP64", "BYTES", "BOOL"], strict=True):
        assert_same(tensor.data, SAMPLES[datatype])


def test_header_length_equal_to_body_length_reads_whole_body_as_json() -> None:
    # The C++ client (perf_analyzer) always sends the header, even for all-JSON requests.
    body, _ = handmade({"inputs": [{"name": "x", "shape": [2], "datatype": "INT32", "data": [1, 2]}]})

    request = decode(body, len(body))

    assert_same(request.inputs[0].data, np.array([1, 2], dtype=np.int32))


def test_decodes_nested_json_data_row_major() -> None:
    body, _ = handmade(
        {"inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP32", "data": [[1, 2, 3], [4.5, 5, 6]]}]}
    )

    request = decode(body, None)

    assert_same(request.inputs[0].data, np.array([[1, 2, 3], [4.5, 5, 6]], dtype=np.float32))


def test_decodes_nested_json_bytes() -> None:
    body, _ = handmade({"inputs": [{"name": "s", "shape": [2, 1], "datatype": "BYTES", "data": [["a"], ["\u00e9"]]}]})

    request = decode(body, None)

    assert request.inputs[0].data.tolist() == [[b"a"], ["\u00e9".encode()]]


def test_decodes_empty_tensor_in_json_and_binary() -> None:
    empty = np.zeros((0, 3), dtype=np.float32)
    body, header_length = client_request(
        [client_input("a", empty, "FP32", binary=True), client_input("b", empty, "FP32", binary=False)]
    )

    request = decode(body, header_length)

    assert [t.data.shape for t in request.inputs] == [(0, 3), (0, 3)]


def test_requested_outputs_carry_their_binary_flag() -> None:
    outputs = [
        httpclient.InferRequestedOutput("y", binary_data=True),
        httpclient.InferRequestedOutput("z", False),
    ]
    body, header_length = client_request([client_input("x", SAMPLES["FP32"], "FP32", binary=True)], outputs)

    request = decode(body, header_length)

    assert request.outputs == [
        RequestedOutput("y", binary_data=True, parameters={"binary_data": True}),
        RequestedOutput("z", binary_data=False, parameters={"binary_data": False}),
    ]


def test_no_requested_outputs_means_all_outputs_with_client_binary_default() -> None:
    body, header_length = client_request([client_input("x", SAMPLES["FP32"], "FP32", binary=True)])

    request = decode(body, header_length)

    assert request.outputs is None
    assert request.parameters["binary_data_output"] is True


def test_request_id_and_parameters_are_kept() -> None:
    body, header_length = client_request(
        [client_input("x", SAMPLES["FP32"], "FP32", binary=False)],
        [httpclient.InferRequestedOutput("y")],
        request_id="req-7",
        priority=2,
        timeout=1500,
        custom_parameters={"tenant": "blue"},
    )

    request = decode(body, header_length)

    assert request.id == "req-7"
    assert request.parameters == {"priority": 2, "timeout": 1500, "tenant": "blue"}


def test_gzip_request_from_tritonclient_decodes() -> None:
    body, header_length = client_request([client_input("x", SAMPLES["INT64"], "INT64", binary=True)])

    plain = decompress_body(gzip.compress(body), "gzip", max_size=1 << 20)

    assert_same(decode(plain, header_length).inputs[0].data, SAMPLES["INT64"])


def test_deflate_request_from_tritonclient_decodes() -> None:
    # tritonclient's "deflate" is a zlib stream (zlib.compress).
    body, header_length = client_request([client_input("x", SAMPLES["BYTES"], "BYTES", binary=True)])

    plain = decompress_body(zlib.compress(body), "deflate", max_size=1 << 20)

    assert_same(decode(plain, header_length).inputs[0].data, SAMPLES["BYTES"])


# --- decompression ----------------------------------------------------------------------------


def raw_deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


@pytest.mark.parametrize("encoding", [None, "", "identity", "Identity"])
def test_identity_body_is_returned_unchanged(encoding: str | None) -> None:
    assert decompress_body(b"abc", encoding, max_size=3) == b"abc"


def test_raw_deflate_body_is_accepted() -> None:
    assert decompress_body(raw_deflate(b"hello " * 100), "deflate", max_size=1000) == b"hello " * 100


def test_concatenated_gzip_members_are_all_inflated() -> None:
    assert decompress_body(gzip.compress(b"ab") + gzip.compress(b"cd"), "gzip", max_size=10) == b"abcd"


def test_body_of_exactly_max_size_is_accepted() -> None:
    data = b"z" * 4096
    assert decompress_body(gzip.compress(data), "gzip", max_size=4096) == data


@pytest.mark.parametrize(
    "encoding, compress",
    [("gzip", gzip.compress), ("deflate", zlib.compress), ("deflate", raw_deflate)],
    ids=["gzip", "zlib", "raw-deflate"],
)
def test_decompression_bomb_is_payload_too_large(encoding: str, compress: Any) -> None:
    bomb = compress(b"\0" * (16 << 20))  # 16 MiB of zeros in about 16 KiB
    assert len(bomb) < 1 << 20

    with pytest.raises(PayloadTooLarge):
        decompress_body(bomb, encoding, max_size=1 << 20)


def test_identity_body_over_max_size_is_payload_too_large() -> None:
    with pytest.raises(PayloadTooLarge):
        decompress_body(b"abcd", None, max_size=3)


def test_unknown_content_encoding_is_invalid_input() -> None:
    with pytest.raises(InvalidInput, match="unsupported Content-Encoding 'br'"):
        decompress_body(b"abc", "br", max_size=100)


@pytest.mark.parametrize(
    "encoding, body",
    [
        ("gzip", b"definitely not gzip"),
        ("gzip", gzip.compress(b"x" * 1000)[:-12]),
        ("deflate", zlib.compress(b"x" * 1000)[:5]),
        ("deflate", zlib.compress(b"abc") + b"trailing"),
    ],
    ids=["gzip-garbage", "gzip-truncated", "deflate-truncated", "deflate-trailing-bytes"],
)
def test_corrupt_compressed_body_is_invalid_input(encoding: str, body: bytes) -> None:
    with pytest.raises(InvalidInput):
        decompress_body(body, encoding, max_size=1 << 20)


# --- responses parsed by tritonclient ---------------------------------------------------------


def binary_request(binary: bool, *names: str) -> InferRequest:
    return InferRequest(model_name="m", outputs=[RequestedOutput(n, binary_data=binary) for n in names])


@pytest.mark.parametrize("datatype", list(SAMPLES))
def test_binary_output_of_every_datatype_parses_in_tritonclient(datatype: str) -> None:
    array = SAMPLES[datatype]
    response = response_of(OutputTensor("y", datatype, array))

    body, header_length = encode_infer_response(response, binary_request(True, "y"))

    assert header_length is not None
    assert_same(parse_response(body, header_length).as_numpy("y"), array)


@pytest.mark.parametrize("datatype", list(SAMPLES))
def test_json_output_of_every_datatype_parses_in_tritonclient(datatype: str) -> None:
    array = SAMPLES[datatype]
    response = response_of(OutputTensor("y", datatype, array))

    body, header_length = encode_infer_response(response, binary_request(False, "y"))

    result = parse_response(body, header_length).as_numpy("y")
    if datatype == "BYTES":  # JSON carries strings; the client gives them back as str
        assert result.tolist() == np.vectorize(bytes.decode, otypes=[object])(array).tolist()
    else:
        assert_same(result, array)


def test_all_json_response_has_no_header_length_and_flat_data() -> None:
    response = response_of(OutputTensor("y", "INT32", np.arange(6, dtype=np.int32).reshape(2, 3)))

    body, header_length = encode_infer_response(response, binary_request(False, "y"))

    assert header_length is None
    assert orjson.loads(body)["outputs"] == [
        {"name": "y", "datatype": "INT32", "shape": [2, 3], "data": [0, 1, 2, 3, 4, 5]}
    ]


def test_binary_output_has_only_binary_data_size_parameter_and_no_data() -> None:
    response = response_of(OutputTensor("y", "FP32", np.ones((2, 2), dtype=np.float32)))

    body, header_length = encode_infer_response(response, binary_request(True, "y"))
    assert header_length is not None

    (output,) = orjson.loads(body[:header_length])["outputs"]
    assert output == {
        "name": "y",
        "datatype": "FP32",
        "shape": [2, 2],
        "parameters": {"binary_data_size": 16},
    }
    assert len(body) == header_length + 16


def test_request_binary_data_output_applies_unless_an_output_overrides_it() -> None:
    request = InferRequest(
        model_name="m",
        outputs=[RequestedOutput("a"), RequestedOutput("b", binary_data=False), RequestedOutput("c")],
        parameters={"binary_data_output": True},
    )
    arrays = {"a": SAMPLES["FP64"], "b": SAMPLES["UINT16"], "c": SAMPLES["BYTES"]}
    datatypes = {"a": "FP64", "b": "UINT16", "c": "BYTES"}
    response = response_of(*(OutputTensor(n, datatypes[n], arrays[n]) for n in "abc"))

    body, header_length = encode_infer_response(response, request)

    result = parse_response(body, header_length)
    kinds = {o["name"]: "data" in o for o in result.get_response()["outputs"]}
    assert kinds == {"a": False, "b": True, "c": False}
    for name in "abc":
        assert_same(result.as_numpy(name), arrays[name])


def test_mixed_per_output_binary_flags_parse_in_tritonclient() -> None:
    request = InferRequest(
        model_name="m",
        outputs=[RequestedOutput("a", True), RequestedOutput("b", False), RequestedOutput("c", True)],
    )
    response = response_of(
        OutputTensor("a", "INT8", SAMPLES["INT8"]),
        OutputTensor("b", "FP32", SAMPLES["FP32"]),
        OutputTensor("c", "UINT64", SAMPLES["UINT64"]),
    )

    body, header_length = encode_infer_response(response, request)

    result = parse_response(body, header_length)
    assert_same(result.as_numpy("a"), SAMPLES["INT8"])
    assert_same(result.as_numpy("b"), SAMPLES["FP32"])
    assert_same(result.as_numpy("c"), SAMPLES["UINT64"])


def test_outputs_default_to_json_without_any_binary_request() -> None:
    response = response_of(OutputTensor("y", "FP32", SAMPLES["FP32"]))

    body, header_length = encode_infer_response(response, InferRequest(model_name="m"))

    assert header_length is None
    assert_same(parse_response(body, None).as_numpy("y"), SAMPLES["FP32"])


def test_response_echoes_request_id_and_model_version() -> None:
    response = response_of(OutputTensor("y", "FP32", SAMPLES["FP32"]))

    body, _ = encode_infer_response(response, InferRequest(model_name="m", id="abc"))

    header = orjson.loads(body)
    assert (header["id"], header["model_name"], header["model_version"]) == ("abc", "m", "1")
    assert "parameters" not in header


def test_response_without_request_id_has_no_id_key() -> None:
    body, _ = encode_infer_response(response_of(), InferRequest(model_name="m"))

    assert "id" not in orjson.loads(body)


def test_response_parameters_are_written_when_present() -> None:
    response = response_of()
    response.parameters = {"sequence_id": 3}

    body, _ = encode_infer_response(response, InferRequest(model_name="m"))

    assert orjson.loads(body)["parameters"] == {"sequence_id": 3}


def test_str_elements_of_bytes_output_encode_in_json_and_binary() -> None:
    # onnxruntime returns string tensors as object arrays of str.
    array = np.array(["h\u00e9", ""], dtype=object)
    for binary, expected in ((True, [b"h\xc3\xa9", b""]), (False, ["h\u00e9", ""])):
        body, header_length = encode_infer_response(
            response_of(OutputTensor("s", "BYTES", array)), binary_request(binary, "s")
        )
        assert parse_response(body, header_length).as_numpy("s").tolist() == expected


def test_non_contiguous_output_encodes_row_major() -> None:
    array = np.arange(6, dtype=np.float32).reshape(2, 3).T
    for binary in (True, False):
        body, header_length = encode_infer_response(
            response_of(OutputTensor("y", "FP32", array)), binary_request(binary, "y")
        )
        assert_same(parse_response(body, header_length).as_numpy("y"), array)


def test_nan_in_json_output_reads_back_as_nan() -> None:
    # JSON has no NaN: orjson writes null, which numpy reads back as NaN for float dtypes.
    array = np.array([np.nan, 1.0], dtype=np.float32)

    body, header_length = encode_infer_response(
        response_of(OutputTensor("y", "FP32", array)), binary_request(False, "y")
    )

    assert_same(parse_response(body, header_length).as_numpy("y"), array)


def test_non_utf8_bytes_in_json_output_is_invalid_input() -> None:
    response = response_of(OutputTensor("s", "BYTES", np.array([b"\xff\xfe"], dtype=object)))

    with pytest.raises(InvalidInput, match="output 's'.*binary_data"):
        encode_infer_response(response, binary_request(False, "s"))


def test_encode_error_is_json_with_error_key() -> None:
    assert orjson.loads(encode_error("model 'x' is not ready")) == {"error": "model 'x' is not ready"}


# --- raw binary requests (Inference-Header-Content-Length: 0) ---------------------------------


def test_raw_binary_request_deduces_the_variable_dimension() -> None:
    array = np.arange(12, dtype=np.float32)
    spec = TensorSpec("x", "FP32", (1, -1, 4))

    request = decode(array.tobytes(), 0, model_inputs=[spec])

    (tensor,) = request.inputs
    assert (tensor.name, tensor.data.shape) == ("x", (1, 3, 4))
    assert_same(tensor.data, array.reshape(1, 3, 4))


def test_raw_binary_request_answers_every_output_binary() -> None:
    request = decode(np.arange(4, dtype=np.int32).tobytes(), 0, model_inputs=[TensorSpec("x", "INT32", (1, 4))])
    response = response_of(OutputTensor("y", "FP32", SAMPLES["FP32"]), OutputTensor("z", "BOOL", SAMPLES["BOOL"]))

    body, header_length = encode_infer_response(response, request)

    result = parse_response(body, header_length)
    assert all("data" not in o for o in result.get_response()["outputs"])
    assert_same(result.as_numpy("z"), SAMPLES["BOOL"])


def test_raw_binary_bytes_request_is_one_element() -> None:
    request = decode("\u00e9t\u00e9".encode(), 0, model_inputs=[TensorSpec("s", "BYTES", (1, 1))])

    assert request.inputs[0].data.tolist() == [["\u00e9t\u00e9".encode()]]


@pytest.mark.parametrize(
    "specs, body, message",
    [
        (None, b"\0" * 4, "exactly 1 input"),
        ([TensorSpec("a", "FP32", (1,)), TensorSpec("b", "FP32", (1,))], b"\0" * 4, "exactly 1 input"),
        ([TensorSpec("x", "FP32", (-1, -1))], b"\0" * 16, "input 'x'.*more than one variable"),
        ([TensorSpec("x", "FP32", (1, -1, 3))], b"\0" * 16, "input 'x'.*not a whole number"),
        ([TensorSpec("x", "FP32", (1, 2))], b"\0" * 12, "input 'x'.*does not match"),
        ([TensorSpec("s", "BYTES", (1, -1))], b"abc", "input 's'.*shape \\[1\\]"),
    ],
    ids=["no-model-inputs", "two-inputs", "two-variable-dims", "partial-row", "wrong-size", "bytes-not-[1]"],
)
def test_raw_binary_request_errors(specs: list[TensorSpec] | None, body: bytes, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        decode(body, 0, model_inputs=specs)


# --- request errors ---------------------------------------------------------------------------


def one_input(**fields: Any) -> dict[str, Any]:
    return {"inputs": [{"name": "x", "shape": [2], "datatype": "INT32", **fields}]}


I32x2 = np.array([1, 2], dtype=np.int32).tobytes()


def case(case_id: str, header: dict[str, Any], blob: bytes, message: str) -> Any:
    return pytest.param(header, blob, message, id=case_id)


WITH_DATA = one_input(data=[1, 2])
INVALID_REQUESTS = [
    case(
        "count-mismatch",
        one_input(data=[1, 2, 3]),
        b"",
        r"input 'x': data has 3 elements but shape \[2\] needs 2",
    ),
    case("uint8-out-of-range", one_input(datatype="UINT8", data=[1, 300]), b"", "input 'x'.*300.*out of range"),
    case("int8-out-of-range", one_input(datatype="INT8", data=[-129, 0]), b"", "input 'x'.*-129.*out of range"),
    case("uint64-negative", one_input(datatype="UINT64", data=[-1, 0]), b"", "input 'x'.*-1.*out of range"),
    case("int64-too-big", one_input(datatype="INT64", data=[2**63, 0]), b"", "input 'x'.*out of range"),
    case("float-in-int", one_input(data=[1.5, 2]), b"", "input 'x'.*integers"),
    case("string-in-int", one_input(data=["1", "2"]), b"", "input 'x'.*integers"),
    case("bool-from-ints", one_input(datatype="BOOL", data=[0, 1]), b"", "input 'x'.*true/false"),
    case("string-in-float", one_input(datatype="FP32", data=["a", "b"]), b"", "input 'x'.*numbers"),
    case("null-in-float", one_input(datatype="FP32", data=[None, 1.0]), b"", "input 'x'.*numbers"),
    case("ragged", one_input(shape=[3], data=[[1], [2, 3]]), b"", "input 'x'.*rectangular"),
    case(
        "fp16-json",
        one_input(datatype="FP16", data=[1.0, 2.0]),
        b"",
        "input 'x': FP16 cannot be sent as JSON",
    ),
    case("bytes-non-string", one_input(datatype="BYTES", data=["a", 1]), b"", "input 'x'.*strings"),
    case("data-not-list", one_input(data=5), b"", "input 'x'.*array"),
    case(
        "unknown-datatype",
        one_input(datatype="C64", data=[1, 2]),
        b"",
        "input 'x': unsupported datatype 'C64'",
    ),
    case("bf16-datatype", one_input(datatype="BF16", parameters={"binary_data_size": 4}), b"\0" * 4, "'BF16'"),
    case("negative-dim", one_input(shape=[-1], data=[1]), b"", "input 'x'.*shape"),
    case("shape-not-list", one_input(shape="2", data=[1, 2]), b"", "input 'x'.*shape"),
    case(
        "data-and-binary",
        one_input(data=[1, 2], parameters={"binary_data_size": 8}),
        I32x2,
        "input 'x'.*both",
    ),
    case("neither-data-nor-binary", one_input(), b"", "input 'x'.*neither"),
    case(
        "binary-size-vs-shape",
        one_input(parameters={"binary_data_size": 4}),
        I32x2[:4],
        r"input 'x': binary_data_size is 4 bytes but shape \[2\] of INT32 needs 8",
    ),
    case("too-few-bytes", one_input(parameters={"binary_data_size": 8}), I32x2[:6], "input 'x'.*only 6 bytes"),
    case(
        "bad-binary-size",
        one_input(parameters={"binary_data_size": "8"}),
        I32x2,
        "input 'x'.*binary_data_size",
    ),
    case("leftover-bytes", one_input(parameters={"binary_data_size": 8}), I32x2 + b"\0", "1 bytes after"),
    case(
        "bytes-length-prefix-past-end",
        one_input(datatype="BYTES", shape=[1], parameters={"binary_data_size": 6}),
        b"\x09\0\0\0ab",
        "input 'x'",
    ),
    case("no-inputs", {"id": "a"}, b"", "'inputs'"),
    case("input-not-object", {"inputs": [3]}, b"", r"inputs\[0\]"),
    case(
        "input-without-name",
        {"inputs": [{"shape": [1], "datatype": "FP32", "data": [1]}]},
        b"",
        r"inputs\[0\]",
    ),
    case("id-not-string", {"id": 5, **WITH_DATA}, b"", "'id'"),
    case("parameters-not-object", {"parameters": [1], **WITH_DATA}, b"", "'parameters'"),
    case(
        "binary-output-not-bool",
        {"parameters": {"binary_data_output": 1}, **WITH_DATA},
        b"",
        "binary_data_output",
    ),
    case(
        "output-binary-not-bool",
        {"outputs": [{"name": "y", "parameters": {"binary_data": 1}}], **WITH_DATA},
        b"",
        "output 'y'.*binary_data",
    ),
    case("outputs-not-list", {"outputs": {"name": "y"}, **WITH_DATA}, b"", "'outputs'"),
]


@pytest.mark.parametrize("header, blob, message", INVALID_REQUESTS)
def test_invalid_request_is_invalid_input_naming_the_problem(header: dict[str, Any], blob: bytes, message: str) -> None:
    body, header_length = handmade(header, blob)

    with pytest.raises(InvalidInput, match=message):
        decode(body, header_length)


@pytest.mark.parametrize("body", [b"{not json", b"", b'{"inputs": [}'], ids=["garbage", "empty", "truncated"])
def test_malformed_json_is_invalid_input(body: bytes) -> None:
    with pytest.raises(InvalidInput, match="malformed"):
        decode(body, None)


def test_top_level_json_array_is_invalid_input() -> None:
    with pytest.raises(InvalidInput, match="must be an object"):
        decode(b"[1, 2]", None)


@pytest.mark.parametrize("header_length", [-1, 10_000])
def test_header_length_outside_body_is_invalid_input(header_length: int) -> None:
    body, _ = handmade(one_input(data=[1, 2]))

    with pytest.raises(InvalidInput, match="Inference-Header-Content-Length"):
        decode(body, header_length)


def test_binary_input_in_an_all_json_body_is_invalid_input() -> None:
    # Without Inference-Header-Content-Length the whole body is JSON, so no blob can follow it.
    body, _ = handmade(one_input(parameters={"binary_data_size": 8}))

    with pytest.raises(InvalidInput, match="input 'x'.*only 0 bytes"):
        decode(body, None)


def test_classification_count_is_carried_on_the_requested_output() -> None:
    outputs = [httpclient.InferRequestedOutput("y", class_count=3)]
    body, header_length = client_request([client_input("x", SAMPLES["FP32"], "FP32", binary=True)], outputs)

    request = decode(body, header_length)

    assert request.outputs is not None
    assert request.outputs[0].parameters["classification"] == 3


def test_shared_memory_input_is_unsupported() -> None:
    tensor = httpclient.InferInput("x", [2], "FP32")
    tensor.set_shared_memory("region", 8)
    body, header_length = client_request([tensor])

    with pytest.raises(Unsupported, match="input 'x'.*shared memory"):
        decode(body, header_length)
