"""Random inference requests, well-formed and not, over HTTP JSON, HTTP binary and gRPC (hypothesis).

Whatever is sent, the answer is a refusal the client can act on (4xx; 501 for an unsupported
extension; a gRPC status other than INTERNAL and UNKNOWN) or a correct result, never a 500, and
the server then answers a valid request. The service runs in this test's event loop
(tests/fixtures/inprocess.py); examples per test: tests/fixtures/fuzzing.py.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from typing import Any

import grpc
import orjson
import pytest
import pytest_asyncio
from hypothesis import given

from serve.demo import write_demo_repository
from serve.protocol import grpc_service_pb2 as pb
from tests.fixtures.fuzzing import MODELS, binary_request, garbage, grpc_request, json_request
from tests.fixtures.inprocess import InProcess, in_process

pytestmark = pytest.mark.asyncio(loop_scope="module")

SERVER_FAULTS = (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)
VALID = orjson.dumps({"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 8], "data": [0.5] * 8}]})


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[InProcess]:
    root = tmp_path_factory.mktemp("fuzz")
    write_demo_repository(root)
    async with in_process(root) as running:
        yield running


def _check_http_answer(status: int, body: bytes, headers: Any) -> None:
    assert status < 500 or status == 501, body[:500]
    if status != 200:
        assert "error" in orjson.loads(body)
        return
    length = headers.get("inference-header-content-length")
    header = orjson.loads(body[: int(length)] if length else body)
    assert header["outputs"], header
    for output in header["outputs"]:
        if "data" in output:
            assert len(output["data"]) == math.prod(output["shape"])


async def _still_serving(server: InProcess) -> None:
    response = await server.http.post("/v2/models/tabular/infer", content=VALID)
    assert response.status_code == 200


@given(json_request())
async def test_a_random_json_request_is_refused_or_answered_never_a_server_error(
    server: InProcess, drawn: tuple[str, dict[str, Any]]
) -> None:
    model, body = drawn
    response = await server.http.post(f"/v2/models/{model}/infer", content=orjson.dumps(body))
    _check_http_answer(response.status_code, response.content, response.headers)
    await _still_serving(server)


@given(binary_request())
async def test_a_random_binary_request_is_refused_or_answered_never_a_server_error(
    server: InProcess, drawn: tuple[str, bytes, dict[str, str]]
) -> None:
    model, body, headers = drawn
    response = await server.http.post(f"/v2/models/{model}/infer", content=body, headers=headers)
    _check_http_answer(response.status_code, response.content, response.headers)
    await _still_serving(server)


@given(garbage(), garbage())
async def test_garbage_bodies_and_header_values_are_refused_never_a_server_error(
    server: InProcess, body: bytes, header: bytes
) -> None:
    value = header.replace(b"\r", b"").replace(b"\n", b"")
    headers = {
        b"inference-header-content-length": value[:20],
        b"content-encoding": value[:12],
        b"accept-encoding": value,
    }
    for sent in ({}, headers):
        response = await server.http.post("/v2/models/tabular/infer", content=body, headers=sent)
        assert response.status_code < 500 or response.status_code == 501, response.content
    await _still_serving(server)


@given(grpc_request())
async def test_a_random_grpc_request_is_refused_or_answered_never_internal(
    server: InProcess, request: pb.ModelInferRequest
) -> None:
    try:
        response = await server.grpc.ModelInfer(request)
    except grpc.aio.AioRpcError as exc:
        assert exc.code() not in SERVER_FAULTS, exc.details()
    else:
        assert [o.name for o in response.outputs] and len(response.raw_output_contents) == len(response.outputs)
        assert response.model_name in MODELS
    await _still_serving(server)


@given(garbage())
async def test_grpc_bytes_that_are_not_a_message_are_refused_never_unknown(server: InProcess, raw: bytes) -> None:
    call = server.channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
    try:
        await call(raw)
    except grpc.aio.AioRpcError as exc:
        assert exc.code() not in SERVER_FAULTS, exc.details()
    await _still_serving(server)
