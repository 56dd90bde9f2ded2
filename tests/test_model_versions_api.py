"""One rule for a model version named in a request, on every route and RPC that takes one.

A version is "" (the policy's default) or a non-negative integer written in ASCII digits. Anything
else ("abc", "-1", "²", which str.isdigit() accepts) is the client's mistake: HTTP 400 with a JSON
error, gRPC INVALID_ARGUMENT, as Triton answers, with a message naming the version and the rule.
A well-formed version that is not served stays NOT_FOUND (and ModelReady stays a plain false).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import quote

import grpc
import orjson
import pytest
import pytest_asyncio

from serve.demo import write_demo_repository
from serve.protocol import grpc_service_pb2 as pb
from tests.fixtures.inprocess import InProcess, in_process

pytestmark = pytest.mark.asyncio(loop_scope="module")

INVALID = {"letters": "abc", "negative": "-1", "superscript two": "²", "5,000 digits": "9" * 5000}
RULE = "versions are non-negative integers"
ROW = [0.5, -1.0, 2.0, 0.0, 1.5, -0.5, 3.0, 1.0]


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[InProcess]:
    root = tmp_path_factory.mktemp("versions")
    write_demo_repository(root)
    async with in_process(root) as running:
        yield running


def _infer_body() -> bytes:
    return orjson.dumps({"inputs": [{"name": "features", "shape": [1, 8], "datatype": "FP32", "data": ROW}]})


HTTP_ROUTES: dict[str, tuple[str, str]] = {
    "ready": ("GET", "/ready"),
    "metadata": ("GET", ""),
    "config": ("GET", "/config"),
    "stats": ("GET", "/stats"),
    "input-stats": ("GET", "/input-stats"),
    "baseline": ("GET", "/baseline"),
    "infer": ("POST", "/infer"),
}

GrpcCall = Callable[[InProcess, str], Awaitable[Any]]

GRPC_CALLS: dict[str, GrpcCall] = {
    "ModelReady": lambda s, v: s.grpc.ModelReady(pb.ModelReadyRequest(name="tabular", version=v)),
    "ModelMetadata": lambda s, v: s.grpc.ModelMetadata(pb.ModelMetadataRequest(name="tabular", version=v)),
    "ModelConfig": lambda s, v: s.grpc.ModelConfig(pb.ModelConfigRequest(name="tabular", version=v)),
    "ModelStatistics": lambda s, v: s.grpc.ModelStatistics(pb.ModelStatisticsRequest(name="tabular", version=v)),
    "ModelInfer": lambda s, v: s.grpc.ModelInfer(
        pb.ModelInferRequest(
            model_name="tabular",
            model_version=v,
            inputs=[pb.ModelInferRequest.InferInputTensor(name="features", datatype="FP32", shape=[1, 8])],
            raw_input_contents=[b"\x00" * 32],
        )
    ),
}


@pytest.mark.parametrize("version", list(INVALID.values()), ids=list(INVALID))
@pytest.mark.parametrize("route", list(HTTP_ROUTES))
async def test_an_invalid_version_is_a_400_naming_it_on_every_http_route(
    server: InProcess, route: str, version: str
) -> None:
    method, suffix = HTTP_ROUTES[route]
    path = f"/v2/models/tabular/versions/{quote(version)}{suffix}"
    response = await server.http.request(method, path, content=_infer_body() if method == "POST" else None)
    error = response.json()["error"]
    assert (response.status_code, repr(version)[:20] in error, RULE in error) == (400, True, True), error


@pytest.mark.parametrize("version", list(INVALID.values()), ids=list(INVALID))
@pytest.mark.parametrize("rpc", list(GRPC_CALLS))
async def test_an_invalid_version_is_invalid_argument_naming_it_on_every_rpc(
    server: InProcess, rpc: str, version: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await GRPC_CALLS[rpc](server, version)
    details = refused.value.details() or ""
    assert (refused.value.code(), repr(version)[:20] in details, RULE in details) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        True,
        True,
    ), details


async def test_a_well_formed_version_that_is_not_served_is_not_ready_over_grpc(server: InProcess) -> None:
    answer = await server.grpc.ModelReady(pb.ModelReadyRequest(name="tabular", version="9"))
    assert answer.ready is False


async def test_a_well_formed_version_that_is_not_served_is_not_found_over_http(server: InProcess) -> None:
    response = await server.http.get("/v2/models/tabular/versions/9")
    assert (response.status_code, "version 9 is not found" in response.json()["error"]) == (404, True)


async def test_a_served_version_with_leading_zeros_is_that_version(server: InProcess) -> None:
    answer = await server.grpc.ModelReady(pb.ModelReadyRequest(name="tabular", version="01"))
    assert answer.ready is True
