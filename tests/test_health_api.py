"""Server readiness, told the same way by every door: HTTP ``/v2/health/ready``, gRPC ``ServerReady`` and
the standard gRPC health service (``grpc.health.v1``, for "" and the inference service), all read from
the InferenceService, never from a flag set beside it.

Not ready is HTTP 400, as in Triton, with a JSON body naming each model that serves no version, its
state and why; ready stays Triton's empty 200. The health service follows changes as they happen:
Watch streams NOT_SERVING while a model has failed, SERVING once it loads, NOT_SERVING again when the
server drains.
"""

from __future__ import annotations

import asyncio
import json
import signal
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from serve.demo import tabular_model, write_demo_repository
from serve.grpc.server import SERVICE_NAME, set_serving
from serve.modelgen import save
from serve.protocol import grpc_service_pb2 as pb
from tests.fixtures.inprocess import InProcess, in_process
from tests.fixtures.local_servers import serving_in_thread
from tests.fixtures.servers import serving

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
BROKEN = "broken"


def write_broken_model(root: Path) -> None:
    (root / BROKEN / "1").mkdir(parents=True)
    (root / BROKEN / "1" / "model.onnx").write_bytes(b"not an onnx model")


def repair_broken_model(root: Path) -> None:
    save(tabular_model(), root / BROKEN / "1" / "model.onnx")


@pytest.fixture
async def failed(tmp_path: Path) -> AsyncIterator[InProcess]:
    """Every demo model loaded, and one model whose only version failed to load."""
    write_demo_repository(tmp_path)
    write_broken_model(tmp_path)
    async with in_process(tmp_path) as server:
        yield server


@pytest.fixture
async def healthy(tmp_path: Path) -> AsyncIterator[InProcess]:
    write_demo_repository(tmp_path)
    async with in_process(tmp_path) as server:
        yield server


async def health_of(server: InProcess, service: str) -> int:
    stub = health_pb2_grpc.HealthStub(server.channel)
    return int((await stub.Check(health_pb2.HealthCheckRequest(service=service))).status)


async def every_answer(server: InProcess) -> dict[str, Any]:
    """What each door says about the server's readiness."""
    http = await server.http.get("/v2/health/ready")
    grpc_ready = await server.grpc.ServerReady(pb.ServerReadyRequest())
    return {
        "http": http.status_code,
        "ServerReady": grpc_ready.ready,
        "health ''": await health_of(server, ""),
        "health inference": await health_of(server, SERVICE_NAME),
    }


READY = {"http": 200, "ServerReady": True, "health ''": SERVING, "health inference": SERVING}
NOT_READY = {"http": 400, "ServerReady": False, "health ''": NOT_SERVING, "health inference": NOT_SERVING}


async def test_a_model_that_failed_to_load_makes_every_door_say_not_ready(failed: InProcess) -> None:
    assert await every_answer(failed) == NOT_READY


async def test_a_server_with_every_model_loaded_is_ready_on_every_door(healthy: InProcess) -> None:
    assert await every_answer(healthy) == READY


async def test_not_ready_over_http_is_a_json_body_naming_the_model_its_state_and_why(failed: InProcess) -> None:
    response = await failed.http.get("/v2/health/ready")
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["ready"] is False
    assert f"model '{BROKEN}'" in body["error"] and "not a valid ONNX model" in body["error"]
    ((model,),) = [[m for m in body["models"] if m["name"] == BROKEN]]
    assert (model["version"], model["state"]) == ("1", "UNAVAILABLE")
    assert "not a valid ONNX model" in model["reason"]
    assert [m["name"] for m in body["models"]] == [BROKEN]  # the models that serve are not listed


async def test_a_model_that_is_not_ready_says_why_over_http(failed: InProcess) -> None:
    response = await failed.http.get(f"/v2/models/{BROKEN}/ready")
    body = response.json()
    assert (response.status_code, body["ready"]) == (400, False)
    assert "not a valid ONNX model" in body["error"]


async def test_an_unknown_model_is_not_ready_and_says_it_is_unknown_over_http(healthy: InProcess) -> None:
    response = await healthy.http.get("/v2/models/nope/ready")
    assert (response.status_code, "'nope' is not found" in response.json()["error"]) == (400, True)


async def test_ready_over_http_stays_an_empty_200_as_in_triton(healthy: InProcess) -> None:
    response = await healthy.http.get("/v2/health/ready")
    assert (response.status_code, response.content) == (200, b"")


async def test_the_health_service_answers_not_found_for_a_service_it_does_not_serve(healthy: InProcess) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await health_of(healthy, "no.such.Service")
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND


async def test_watch_follows_a_failed_model_loading_and_the_server_draining(tmp_path: Path) -> None:
    write_demo_repository(tmp_path)
    write_broken_model(tmp_path)
    async with in_process(tmp_path, model_control_mode="explicit", load_models=["*"]) as server:
        stub = health_pb2_grpc.HealthStub(server.channel)
        watch = stub.Watch(health_pb2.HealthCheckRequest(service=SERVICE_NAME))
        seen = [(await watch.read()).status]
        assert await every_answer(server) == NOT_READY

        repair_broken_model(tmp_path)
        assert (await server.http.post(f"/v2/repository/models/{BROKEN}/load")).status_code == 200
        seen.append((await asyncio.wait_for(watch.read(), 10)).status)
        assert await every_answer(server) == READY

        server.service.shutting_down = True  # what a stopping server does first
        seen.append((await asyncio.wait_for(watch.read(), 10)).status)
        answers = await every_answer(server)
        body = (await server.http.get("/v2/health/ready")).json()
        watch.cancel()
    assert seen == [NOT_SERVING, SERVING, NOT_SERVING]
    assert answers == NOT_READY
    assert "shutting down" in body["error"]


async def test_a_drain_from_the_grpc_side_is_told_by_every_door(healthy: InProcess) -> None:
    await set_serving(healthy.health, False)  # what a stopping server's gRPC front end says
    assert await every_answer(healthy) == NOT_READY


# ---- the real server on sockets (a thread of this process), and a real `serve run` for its SIGTERM --------


def test_a_real_server_with_a_failed_model_says_not_serving_and_why(tmp_path: Path) -> None:
    root = tmp_path / "models"
    write_demo_repository(root)
    write_broken_model(root)
    with serving_in_thread(root, tmp_path) as server, grpc.insecure_channel(server.grpc_url) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        statuses = [health.Check(health_pb2.HealthCheckRequest(service=s)).status for s in ("", SERVICE_NAME)]
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{server.base}/v2/health/ready", timeout=10)
        body = json.loads(refused.value.read())
    assert statuses == [NOT_SERVING, NOT_SERVING]
    assert (refused.value.code, [m["name"] for m in body["models"]]) == (400, [BROKEN])


def test_sigterm_turns_a_watched_health_to_not_serving_before_the_server_goes(tmp_path: Path) -> None:
    root = tmp_path / "models"
    write_demo_repository(root)
    with serving(root, tmp_path) as server, grpc.insecure_channel(server.grpc_url) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""), timeout=30)
        first = next(watch).status
        server.process.send_signal(signal.SIGTERM)
        then = next(watch).status
    assert (first, then) == (SERVING, NOT_SERVING)
