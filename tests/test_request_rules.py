"""Every rule an inference request must meet, checked in-process over both protocols.

Each case is one rule: the same meaning sent as HTTP JSON, HTTP binary (where the codec has a
binary form) and gRPC, answered with the documented status and a message naming what was wrong;
afterwards the server still answers a valid request. The service, its ASGI app and an in-process
grpc.aio server run in this test's event loop (tests/fixtures/inprocess.py).
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
import orjson
import pytest
import pytest_asyncio

from serve.codecs.bytes_tensor import serialize_bytes_tensor
from serve.codecs.grpc_codec import encode_parameters
from serve.demo import write_demo_repository
from serve.protocol import grpc_service_pb2 as pb
from tests.fixtures.inprocess import InProcess, in_process

pytestmark = pytest.mark.asyncio(loop_scope="module")

ROW = [0.5, -1.0, 2.0, 0.0, 1.5, -0.5, 3.0, 1.0]


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[InProcess]:
    root = tmp_path_factory.mktemp("rules")
    write_demo_repository(root)
    async with in_process(root) as running:
        yield running


# ---- building one request three ways ------------------------------------------------------------


@dataclass
class Tensor:
    name: str
    datatype: str
    shape: list[int]
    values: list[Any]  # flat, row-major; bytes for BYTES


@dataclass
class Case:
    """One rule: ``inputs`` (and the rest) describe the request; every protocol must refuse it."""

    inputs: list[Tensor]
    fragment: str  # what the message must name
    model: str = "tabular"
    version: str = ""
    outputs: list[str] | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    http_status: int = 400
    grpc_code: grpc.StatusCode = grpc.StatusCode.INVALID_ARGUMENT
    protocols: tuple[str, ...] = ("json", "binary", "grpc")


def features(rows: int = 1, width: int = 8) -> Tensor:
    return Tensor("features", "FP32", [rows, width], (ROW * rows)[: rows * width] + [0.0] * max(0, rows * (width - 8)))


def _path(case: Case) -> str:
    version = f"/versions/{case.version}" if case.version else ""
    return f"/v2/models/{case.model}{version}/infer"


def _json_body(case: Case) -> bytes:
    inputs = [
        {
            "name": t.name,
            "datatype": t.datatype,
            "shape": t.shape,
            "data": [v.decode() if isinstance(v, bytes) else v for v in t.values],
        }
        for t in case.inputs
    ]
    body: dict[str, Any] = {"inputs": inputs}
    if case.outputs is not None:
        body["outputs"] = [{"name": name} for name in case.outputs]
    if case.parameters:
        body["parameters"] = case.parameters
    return orjson.dumps(body)


def _raw(t: Tensor) -> bytes:
    if t.datatype == "BYTES":
        array = np.empty(len(t.values), dtype=object)
        array[:] = t.values
        return serialize_bytes_tensor(array)
    dtype = {"FP32": "<f4", "FP64": "<f8", "INT32": "<i4", "INT64": "<i8", "BOOL": "?"}[t.datatype]
    return np.asarray(t.values, dtype=dtype).tobytes()


def _binary_body(case: Case) -> tuple[bytes, int]:
    blobs = [_raw(t) for t in case.inputs]
    header: dict[str, Any] = {
        "inputs": [
            {"name": t.name, "datatype": t.datatype, "shape": t.shape, "parameters": {"binary_data_size": len(b)}}
            for t, b in zip(case.inputs, blobs, strict=True)
        ]
    }
    if case.outputs is not None:
        header["outputs"] = [{"name": name} for name in case.outputs]
    if case.parameters:
        header["parameters"] = case.parameters
    json_header = orjson.dumps(header)
    return json_header + b"".join(blobs), len(json_header)


def _grpc_request(case: Case) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=case.model, model_version=case.version)
    for t in case.inputs:
        request.inputs.add(name=t.name, datatype=t.datatype, shape=t.shape)
        request.raw_input_contents.append(_raw(t))
    for name in case.outputs or []:
        request.outputs.add(name=name)
    encode_parameters(case.parameters, request.parameters)
    return request


async def answer(server: InProcess, case: Case, protocol: str) -> tuple[int | grpc.StatusCode, str]:
    if protocol == "grpc":
        try:
            await server.grpc.ModelInfer(_grpc_request(case))
        except grpc.aio.AioRpcError as exc:
            return exc.code(), exc.details() or ""
        return grpc.StatusCode.OK, ""
    if protocol == "json":
        response = await server.http.post(_path(case), content=_json_body(case))
    else:
        body, length = _binary_body(case)
        response = await server.http.post(
            _path(case), content=body, headers={"Inference-Header-Content-Length": str(length)}
        )
    assert response.headers["content-type"].startswith("application/json"), response.content
    return response.status_code, response.json().get("error", "") if response.status_code != 200 else ""


MULTI_IO_ROW = [
    Tensor("text", "BYTES", [1, 1], [b"hello"]),
    Tensor("counts", "INT32", [1, 4], [1, 2, 3, 4]),
    Tensor("flag", "BOOL", [1, 1], [True]),
    Tensor("values", "FP64", [1, 4], [0.5, 1.5, 2.5, 3.5]),
]

CASES: dict[str, Case] = {
    "unknown model": Case(
        [features()],
        "Request for unknown model: 'nope' is not found",
        model="nope",
        http_status=404,
        grpc_code=grpc.StatusCode.NOT_FOUND,
    ),
    "unknown version": Case(
        [features()], "version 7 is not found", version="7", http_status=404, grpc_code=grpc.StatusCode.NOT_FOUND
    ),
    "a version that is not ASCII digits": Case(
        [features()], "model version '²' is not a version: versions are non-negative integers", version="²"
    ),
    "a version in Arabic-Indic digits": Case([features()], "versions are non-negative integers", version="١"),
    "a version in fullwidth digits": Case([features()], "versions are non-negative integers", version="１"),
    "a version of thousands of digits": Case([features()], "versions are non-negative integers", version="9" * 5000),
    "unexpected input": Case(
        [features(), Tensor("extra", "FP32", [1, 1], [1.0])], "unexpected inference input 'extra' for model 'tabular'"
    ),
    "duplicate input": Case([features(), features()], "inference input 'features' is given more than once"),
    "wrong datatype": Case(
        [Tensor("features", "FP64", [1, 8], ROW)],
        "inference input 'features' data-type is 'FP64', but model 'tabular' expects 'FP32'",
    ),
    "wrong inner shape": Case(
        [features(width=7)],
        "unexpected shape for input 'features' for model 'tabular'. Expected [-1, 8], got [1, 7]",
    ),
    "wrong shape for a model that does not batch": Case(
        [Tensor("x", "FP32", [1, 2, 3], [0.5] * 6)],
        "unexpected shape for input 'x' for model 'fixed_shape'. Expected [2, 3], got [1, 2, 3]",
        model="fixed_shape",
    ),
    "missing batch dimension": Case(
        [Tensor("features", "FP32", [8], ROW)], "input 'features' for model 'tabular'. Expected [-1, 8], got [8]"
    ),
    "empty batch": Case([Tensor("features", "FP32", [0, 8], [])], "input 'features' has an empty batch"),
    "a shape with a zero and a huge dimension": Case([Tensor("features", "FP32", [2**62, 0], [])], "is too large"),
    "a shape whose element count is past int64": Case([Tensor("features", "FP32", [2**40, 2**40], [])], "is too large"),
    "a BYTES shape with a zero and a huge dimension": Case(
        [Tensor("text", "BYTES", [0, 2**62], []), *MULTI_IO_ROW[1:]], "is too large", model="multi_io"
    ),
    "a shape of more than 64 dimensions": Case(
        [Tensor("features", "FP32", [1] * 65, [1.0])], "65 dimensions, more than the 64 supported"
    ),
    "batch above max_batch_size": Case([features(rows=65)], "batch-size must be <= 64 for 'tabular'"),
    "no inputs": Case([], "expected 1 inputs but got 0 inputs for model 'tabular'"),
    "missing input": Case(MULTI_IO_ROW[:3], "missing ['values']", model="multi_io"),
    "several missing inputs": Case([MULTI_IO_ROW[1]], "missing ['text', 'flag', 'values']", model="multi_io"),
    "inputs disagreeing on rows": Case(
        [*MULTI_IO_ROW[:3], Tensor("values", "FP64", [2, 4], [0.5] * 8)],
        "disagree on the batch size",
        model="multi_io",
    ),
    "unknown output": Case([features()], "unexpected inference output 'nope' for model 'tabular'", outputs=["nope"]),
    "duplicate output": Case(
        [features()], "inference output 'label' is requested more than once", outputs=["label", "label"]
    ),
    "negative priority": Case(
        [features()], "parameter 'priority' must be a non-negative integer", parameters={"priority": -1}
    ),
    "priority as text": Case(
        [features()], "parameter 'priority' must be a non-negative integer", parameters={"priority": "high"}
    ),
    "priority as a fraction": Case([features()], "parameter 'priority'", parameters={"priority": 1.5}),
    "timeout as a boolean": Case(
        [features()], "parameter 'timeout' must be a non-negative integer", parameters={"timeout": True}
    ),
    "timeout not a number": Case(
        [features()], "parameter 'timeout'", parameters={"timeout": math.nan}, protocols=("grpc",)
    ),
    "priority infinite": Case(
        [features()], "parameter 'priority'", parameters={"priority": math.inf}, protocols=("grpc",)
    ),
    "timeout as text": Case([features()], "parameter 'timeout'", parameters={"timeout": "soon"}),
    "BYTES that are not UTF-8 for a string model": Case(
        [Tensor("text", "BYTES", [1, 1], [b"\xff\xfe"]), *MULTI_IO_ROW[1:]],
        "input 'text': a BYTES element is not valid UTF-8",
        model="multi_io",
        protocols=("binary", "grpc"),
    ),
}


@pytest.mark.parametrize("protocol", ["json", "binary", "grpc"])
@pytest.mark.parametrize("rule", list(CASES))
async def test_a_request_breaking_a_rule_is_refused_naming_it(server: InProcess, rule: str, protocol: str) -> None:
    case = CASES[rule]
    if protocol not in case.protocols:
        pytest.skip(f"{protocol} cannot express this request")
    status, message = await answer(server, case, protocol)
    expected = case.grpc_code if protocol == "grpc" else case.http_status
    assert (status, case.fragment in message) == (expected, True), message
    ok, _ = await answer(server, Case([features()], ""), protocol)  # and the server goes on
    assert ok in (200, grpc.StatusCode.OK)


@pytest.mark.parametrize("protocol", ["json", "binary", "grpc"])
async def test_a_request_over_max_batch_size_is_told_its_rows_the_limit_and_how_to_fit(
    server: InProcess, protocol: str
) -> None:
    status, message = await answer(server, Case([features(rows=1000)], ""), protocol)
    assert status == (grpc.StatusCode.INVALID_ARGUMENT if protocol == "grpc" else 400)
    for fragment in (
        "inference request batch-size must be <= 64 for 'tabular'",  # Triton's words, which scripts match
        "the request has 1000 rows",
        "max_batch_size 64",
        "split it into requests of at most 64 rows",
        "raise max_batch_size in the model's config.pbtxt",
    ):
        assert fragment in message, message


# ---- an unknown model is 404 whatever the body -----------------------------------------------------

BODIES: dict[str, Callable[[], tuple[bytes, dict[str, str]]]] = {
    "empty": lambda: (b"", {}),
    "not JSON": lambda: (b"\x00\x01garbage", {}),
    "a JSON array": lambda: (b"[1, 2]", {}),
    "no inputs": lambda: (b'{"id": "x"}', {}),
    "a header length past the body": lambda: (b"{}", {"Inference-Header-Content-Length": "999"}),
    "a raw binary body": lambda: (b"\x00" * 32, {"Inference-Header-Content-Length": "0"}),
}


@pytest.mark.parametrize("body", list(BODIES))
async def test_an_unknown_model_is_404_over_http_whatever_the_body(server: InProcess, body: str) -> None:
    content, headers = BODIES[body]()
    response = await server.http.post("/v2/models/nope/infer", content=content, headers=headers)
    assert response.status_code == 404
    assert "Request for unknown model: 'nope' is not found" in response.json()["error"]


@pytest.mark.parametrize(
    "request_message",
    [
        pb.ModelInferRequest(model_name="nope"),
        pb.ModelInferRequest(model_name="nope", raw_input_contents=[b"\x00"]),
        pb.ModelInferRequest(model_name="nope", inputs=[pb.ModelInferRequest.InferInputTensor(name="x", shape=[-5])]),
    ],
    ids=["empty", "raw contents without inputs", "a negative dimension"],
)
async def test_an_unknown_model_is_not_found_over_grpc_whatever_the_message(
    server: InProcess, request_message: pb.ModelInferRequest
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await server.grpc.ModelInfer(request_message)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    assert "Request for unknown model: 'nope' is not found" in (raised.value.details() or "")


# ---- rules only a codec can know ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "headers", "fragment"),
    [
        (b"{not json", {}, "request JSON is malformed"),
        (b"[]", {}, "request JSON must be an object"),
        (b'{"inputs": {}}', {}, "'inputs' must be an array"),
        (b'{"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 8]}]}', {}, "has neither 'data'"),
        (b'{"inputs": [{"name": "features", "datatype": "FLOAT", "shape": [1, 8], "data": []}]}', {}, "FLOAT"),
        (b'{"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, -8], "data": []}]}', {}, "'shape'"),
        (
            b'{"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 8], "data": [1]}]}',
            {},
            "input 'features': data has 1 elements but shape [1, 8] needs 8",
        ),
        (
            b'{"inputs": []}',
            {"Inference-Header-Content-Length": "x"},
            "Inference-Header-Content-Length 'x' is not an integer",
        ),
        (
            b'{"inputs": []}',
            {"Inference-Header-Content-Length": "99"},
            "Inference-Header-Content-Length 99 is outside the body",
        ),
        (b'{"inputs": []}', {"Content-Encoding": "br"}, "unsupported Content-Encoding 'br'"),
        (b"\x1f\x8bnot gzip", {"Content-Encoding": "gzip"}, "gzip"),
    ],
    ids=[
        "malformed JSON",
        "not an object",
        "inputs not an array",
        "no data",
        "unknown datatype",
        "negative dimension",
        "element count",
        "header length not a number",
        "header length past the body",
        "unknown encoding",
        "broken gzip",
    ],
)
async def test_http_wire_format_errors_are_400_naming_the_problem(
    server: InProcess, content: bytes, headers: dict[str, str], fragment: str
) -> None:
    response = await server.http.post("/v2/models/tabular/infer", content=content, headers=headers)
    assert response.status_code == 400, response.content
    assert fragment in response.json()["error"]


async def test_a_body_over_the_limit_is_413(server: InProcess) -> None:
    limit = server.service.repository._settings.max_request_bytes
    response = await server.http.post(
        "/v2/models/tabular/infer", content=b"{}", headers={"Content-Length": str(limit + 1)}
    )
    assert response.status_code == 413
    assert "limit" in response.json()["error"]


@pytest.mark.parametrize(
    ("request_message", "fragment"),
    [
        (
            pb.ModelInferRequest(
                model_name="tabular",
                inputs=[pb.ModelInferRequest.InferInputTensor(name="features", datatype="FP32", shape=[1, 8])],
            ),
            "input 'features' has no data",
        ),
        (
            pb.ModelInferRequest(
                model_name="tabular",
                inputs=[pb.ModelInferRequest.InferInputTensor(name="features", datatype="FP32", shape=[1, 8])],
                raw_input_contents=[b"\x00" * 31],
            ),
            "input 'features': raw data has 31 bytes, but shape [1, 8] of FP32 needs 32",
        ),
        (
            pb.ModelInferRequest(model_name="tabular", raw_input_contents=[b"\x00" * 32]),
            "raw_input_contents has 1 entries but the request has 0 inputs",
        ),
        (
            pb.ModelInferRequest(
                model_name="tabular",
                inputs=[
                    pb.ModelInferRequest.InferInputTensor(
                        name="features",
                        datatype="FP32",
                        shape=[1, 8],
                        contents=pb.InferTensorContents(fp32_contents=[1.0]),
                    )
                ],
            ),
            "input 'features': contents hold 1 elements, but shape [1, 8] needs 8",
        ),
    ],
    ids=["no data", "raw size", "raw without inputs", "typed element count"],
)
async def test_grpc_wire_format_errors_are_invalid_argument(
    server: InProcess, request_message: pb.ModelInferRequest, fragment: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await server.grpc.ModelInfer(request_message)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in (raised.value.details() or "")


async def test_a_bug_answers_500_with_a_reference_and_no_internals(
    server: InProcess, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("secret path /etc/serve/token leaked")

    monkeypatch.setattr(server.service, "model_metadata", broken)
    response = await server.http.get("/v2/models/tabular")
    assert response.status_code == 500
    error = response.json()["error"]
    assert "secret" not in error and "RuntimeError" not in error
    reference = error.split("reference ")[1].split(";")[0]
    assert any(reference in r.getMessage() and r.exc_info for r in caplog.records)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await server.grpc.ModelMetadata(pb.ModelMetadataRequest(name="tabular"))
    assert raised.value.code() == grpc.StatusCode.INTERNAL
    assert "secret" not in (raised.value.details() or "")


@pytest.mark.parametrize(
    ("model", "name", "datatype", "leaf"),
    [
        ("multi_io", "text", "BYTES", b'"x"'),
        ("tabular", "features", "FP32", b"1.5"),
        ("multi_io", "counts", "INT32", b"1.5"),
    ],
    ids=["BYTES", "FP32", "INT32 given floats"],
)
async def test_data_nested_a_thousand_levels_deep_is_400(
    server: InProcess, model: str, name: str, datatype: str, leaf: bytes
) -> None:
    # 1,000 levels: under orjson's own limit (1,024), far over Python's recursion limit if walked recursively.
    data = b"[" * 1000 + leaf + b"]" * 1000
    body = b'{"inputs": [{"name": "%s", "datatype": "%s", "shape": [1, 1], "data": %s}]}' % (
        name.encode(),
        datatype.encode(),
        data,
    )
    response = await server.http.post(f"/v2/models/{model}/infer", content=body)
    assert response.status_code == 400, response.text
    assert f"input '{name}'" in response.json()["error"]


async def test_data_nested_past_the_json_parsers_limit_is_400(server: InProcess) -> None:
    data = b"[" * 5000 + b"1" + b"]" * 5000
    body = b'{"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 8], "data": %s}]}' % data
    response = await server.http.post("/v2/models/tabular/infer", content=body)
    assert response.status_code == 400
    assert "request JSON is malformed" in response.json()["error"]


GARBAGE = [b"\xff\xff\xff\xff", b"\x0a\xff\xff\xff\xff\x0f", b"\x12\x05abc"]


@pytest.mark.parametrize("raw", GARBAGE, ids=["bad tag", "length past the end", "truncated field"])
@pytest.mark.parametrize("method", ["ModelInfer", "ModelMetadata", "RepositoryIndex"])
async def test_bytes_that_are_not_the_request_message_are_invalid_argument(
    server: InProcess, method: str, raw: bytes
) -> None:
    call = server.channel.unary_unary(f"/inference.GRPCInferenceService/{method}")
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call(raw)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "is not a valid inference." in (raised.value.details() or "")
    ok, _ = await answer(server, Case([features()], ""), "grpc")
    assert ok == grpc.StatusCode.OK


async def test_an_undecodable_message_ends_a_stream_with_invalid_argument_after_answering_the_rest(
    server: InProcess,
) -> None:
    valid = _grpc_request(Case([features()], "")).SerializeToString()
    call = server.channel.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer")

    async def requests() -> AsyncIterator[bytes]:
        yield valid
        yield GARBAGE[0]

    stream = call(requests())
    replies = []
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        async for reply in stream:
            replies.append(pb.ModelStreamInferResponse.FromString(reply))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [r.error_message for r in replies] == [""]


async def test_a_health_check_that_is_not_a_protobuf_is_invalid_argument(server: InProcess) -> None:
    call = server.channel.unary_unary("/grpc.health.v1.Health/Check")
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call(GARBAGE[0])
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
