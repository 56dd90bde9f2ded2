"""Token auth over both protocols, in-process: which calls need which scope, and how refusals answer.

The tokens file holds one admin and one inference token. Health endpoints stay open; the
repository API needs admin; everything else needs inference (or admin) unless --no-auth-inference.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import orjson
import pytest
import pytest_asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from serve.demo import write_demo_repository
from serve.protocol import grpc_service_pb2 as pb
from tests.fixtures.inprocess import InProcess, in_process

pytestmark = pytest.mark.asyncio(loop_scope="module")

ADMIN_TOKEN = "admin-token-0123456789abcdef"
INFERENCE_TOKEN = "inference-token-0123456789"
WRONG_TOKEN = "wrong-token-0123456789abcdef"
MODEL = "tabular"
ROW = [0.5, -1.0, 2.0, 0.0, 1.5, -0.5, 3.0, 1.0]
INFER_BODY = {"inputs": [{"name": "features", "shape": [1, 8], "datatype": "FP32", "data": ROW}]}


def write_tokens(directory: Path) -> Path:
    path = directory / "tokens"
    path.write_text(f"deployer admin {ADMIN_TOKEN}\nfrontend inference {INFERENCE_TOKEN}\n")
    return path


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def grpc_bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def infer_request() -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=MODEL)
    request.inputs.add(name="features", datatype="FP32", shape=[1, 8])
    request.raw_input_contents.append(np.array(ROW, dtype="<f4").tobytes())
    return request


async def _serving(tmp_path_factory: pytest.TempPathFactory, **settings: Any) -> AsyncIterator[InProcess]:
    root = tmp_path_factory.mktemp("auth")
    write_demo_repository(root / "models")
    async with in_process(
        root / "models",
        auth_tokens_file=write_tokens(root),
        model_control_mode="explicit",
        load_models=["*"],
        **settings,
    ) as running:
        yield running


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[InProcess]:
    async for running in _serving(tmp_path_factory):
        yield running


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def open_inference(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[InProcess]:
    async for running in _serving(tmp_path_factory, auth_inference=False):
        yield running


# ---- HTTP ----------------------------------------------------------------------------------------

INFERENCE_CALLS = [
    ("POST", f"/v2/models/{MODEL}/infer"),
    ("GET", f"/v2/models/{MODEL}"),
    ("GET", f"/v2/models/{MODEL}/ready"),
    ("GET", f"/v2/models/{MODEL}/config"),
    ("GET", f"/v2/models/{MODEL}/stats"),
    ("GET", f"/v2/models/{MODEL}/input-stats"),
    ("GET", "/v2"),
    ("GET", "/metrics"),
]
ADMIN_CALLS = [
    ("POST", f"/v2/repository/models/{MODEL}/load"),
    ("POST", "/v2/repository/models/no_such_model/unload"),
]


async def call(
    running: InProcess, method: str, path: str, token: str | None = None
) -> tuple[int, dict[str, str], bytes]:
    body = orjson.dumps(INFER_BODY) if path.endswith("/infer") else b""
    response = await running.http.request(method, path, content=body, headers=bearer(token) if token else {})
    return response.status_code, dict(response.headers), response.content


@pytest.mark.parametrize("path", ["/v2/health/live", "/v2/health/ready"])
async def test_health_endpoints_need_no_token(server: InProcess, path: str) -> None:
    status, _, _ = await call(server, "GET", path)

    assert status == 200


@pytest.mark.parametrize(("method", "path"), INFERENCE_CALLS + ADMIN_CALLS)
async def test_a_call_without_a_token_is_401_with_a_bearer_challenge(server: InProcess, method: str, path: str) -> None:
    status, headers, body = await call(server, method, path)

    assert status == 401, body
    assert headers["www-authenticate"] == 'Bearer realm="serve"'
    assert "no bearer token was sent" in orjson.loads(body)["error"]


async def test_an_unknown_token_is_401_invalid_token_and_is_never_echoed(server: InProcess) -> None:
    status, headers, body = await call(server, "POST", f"/v2/models/{MODEL}/infer", WRONG_TOKEN)

    assert status == 401
    assert headers["www-authenticate"] == 'Bearer realm="serve", error="invalid_token"'
    assert "the bearer token is not valid" in orjson.loads(body)["error"]
    assert WRONG_TOKEN.encode() not in body


async def test_a_path_that_does_not_exist_needs_a_token_too(server: InProcess) -> None:
    status, _, _ = await call(server, "GET", "/v2/no/such/route")

    assert status == 401


async def test_another_authorization_scheme_is_not_a_token(server: InProcess) -> None:
    response = await server.http.get(f"/v2/models/{MODEL}", headers={"Authorization": f"Basic {INFERENCE_TOKEN}"})

    assert response.status_code == 401


@pytest.mark.parametrize(("method", "path"), INFERENCE_CALLS)
@pytest.mark.parametrize("token", [INFERENCE_TOKEN, ADMIN_TOKEN])
async def test_an_inference_or_admin_token_is_answered_on_inference_calls(
    server: InProcess, method: str, path: str, token: str
) -> None:
    status, _, body = await call(server, method, path, token)

    assert status == 200, body


@pytest.mark.parametrize(("method", "path"), ADMIN_CALLS)
async def test_an_inference_token_on_the_repository_api_is_403_insufficient_scope(
    server: InProcess, method: str, path: str
) -> None:
    status, headers, body = await call(server, method, path, INFERENCE_TOKEN)

    assert status == 403
    assert 'error="insufficient_scope"' in headers["www-authenticate"]
    assert orjson.loads(body)["error"] == "the token of 'frontend' has scope inference; this endpoint needs scope admin"


async def test_an_inference_token_reads_the_repository_index(server: InProcess) -> None:
    # Read-only, and what metadata shows too: the drift monitor finds the models with it.
    index = await server.http.post("/v2/repository/index", headers=bearer(INFERENCE_TOKEN))
    grpc_index = await server.grpc.RepositoryIndex(pb.RepositoryIndexRequest(), metadata=grpc_bearer(INFERENCE_TOKEN))

    assert index.status_code == 200 and any(m.name == MODEL for m in grpc_index.models)


async def test_an_admin_token_is_answered_on_the_repository_api(server: InProcess) -> None:
    index = await server.http.post("/v2/repository/index", headers=bearer(ADMIN_TOKEN))
    load = await server.http.post(f"/v2/repository/models/{MODEL}/load", headers=bearer(ADMIN_TOKEN))

    assert index.status_code == 200 and any(row["name"] == MODEL for row in index.json())
    assert load.status_code == 200, load.text


async def test_without_auth_inference_inference_is_open_but_model_control_is_not(open_inference: InProcess) -> None:
    infer = await open_inference.http.post(f"/v2/models/{MODEL}/infer", json=INFER_BODY)
    index = await open_inference.http.post("/v2/repository/index")
    load = f"/v2/repository/models/{MODEL}/load"
    anonymous = await open_inference.http.post(load)
    inference = await open_inference.http.post(load, headers=bearer(INFERENCE_TOKEN))
    admin = await open_inference.http.post(load, headers=bearer(ADMIN_TOKEN))

    assert (infer.status_code, index.status_code) == (200, 200)
    assert (anonymous.status_code, inference.status_code, admin.status_code) == (401, 403, 200)


# ---- gRPC ----------------------------------------------------------------------------------------


async def test_grpc_health_server_live_ready_and_reflection_need_no_token(server: InProcess) -> None:
    health = await health_pb2_grpc.HealthStub(server.channel).Check(health_pb2.HealthCheckRequest())
    live = await server.grpc.ServerLive(pb.ServerLiveRequest())
    ready = await server.grpc.ServerReady(pb.ServerReadyRequest())
    reflection = reflection_pb2_grpc.ServerReflectionStub(server.channel)
    answers = [
        a
        async for a in reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    ]

    assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert live.live and ready.ready
    assert any(s.name == "inference.GRPCInferenceService" for s in answers[0].list_services_response.service)


async def test_grpc_inference_without_a_token_is_unauthenticated(server: InProcess) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await server.grpc.ModelInfer(infer_request())

    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "no bearer token was sent" in (raised.value.details() or "")


async def test_grpc_an_unknown_token_is_unauthenticated_and_never_echoed(server: InProcess) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await server.grpc.ModelMetadata(pb.ModelMetadataRequest(name=MODEL), metadata=grpc_bearer(WRONG_TOKEN))

    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert WRONG_TOKEN not in (raised.value.details() or "")


async def test_grpc_stream_inference_without_a_token_is_unauthenticated(server: InProcess) -> None:
    stream = server.grpc.ModelStreamInfer(iter([infer_request()]))

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        async for _ in stream:
            pass

    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize("token", [INFERENCE_TOKEN, ADMIN_TOKEN])
async def test_grpc_an_inference_or_admin_token_is_answered(server: InProcess, token: str) -> None:
    response = await server.grpc.ModelInfer(infer_request(), metadata=grpc_bearer(token))
    streamed = [r async for r in server.grpc.ModelStreamInfer(iter([infer_request()]), metadata=grpc_bearer(token))]

    assert response.model_name == MODEL
    assert streamed[0].error_message == "" and streamed[0].infer_response.model_name == MODEL


async def test_grpc_an_inference_token_on_the_repository_api_is_permission_denied(server: InProcess) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await server.grpc.RepositoryModelUnload(
            pb.RepositoryModelUnloadRequest(model_name=MODEL), metadata=grpc_bearer(INFERENCE_TOKEN)
        )

    assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert raised.value.details() == "the token of 'frontend' has scope inference; this method needs scope admin"


async def test_grpc_an_admin_token_is_answered_on_the_repository_api(server: InProcess) -> None:
    index = await server.grpc.RepositoryIndex(pb.RepositoryIndexRequest(), metadata=grpc_bearer(ADMIN_TOKEN))
    await server.grpc.RepositoryModelLoad(
        pb.RepositoryModelLoadRequest(model_name=MODEL), metadata=grpc_bearer(ADMIN_TOKEN)
    )

    assert any(m.name == MODEL for m in index.models)


async def test_grpc_without_auth_inference_inference_is_open_but_model_control_is_not(
    open_inference: InProcess,
) -> None:
    response = await open_inference.grpc.ModelInfer(infer_request())
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await open_inference.grpc.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name=MODEL))

    assert response.model_name == MODEL
    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_without_a_tokens_file_no_call_needs_a_token(tmp_path: Path) -> None:
    write_demo_repository(tmp_path)
    async with in_process(tmp_path, model_control_mode="explicit", load_models=["*"]) as running:
        index = await running.http.post("/v2/repository/index")
        grpc_index = await running.grpc.RepositoryIndex(pb.RepositoryIndexRequest())

    assert index.status_code == 200 and len(grpc_index.models) == len(index.json())
