"""Where Triton's behaviour is well known, ours matches it: model control switched off, the
extensions we do not implement (shared memory, logging), a load-time config override that holds, and --load-model=*."""

from __future__ import annotations

from pathlib import Path

import grpc
import orjson
import pytest

from serve.demo import TABULAR_CONFIG, write_demo_repository
from serve.protocol import grpc_service_pb2 as pb
from tests.fixtures.inprocess import in_process

DISABLED = "explicit model load / unload is not allowed"


@pytest.fixture
def demo(tmp_path: Path) -> Path:
    write_demo_repository(tmp_path)
    return tmp_path


async def test_load_and_unload_without_explicit_model_control_are_unavailable(demo: Path) -> None:
    async with in_process(demo) as server:
        for action in ("load", "unload"):
            response = await server.http.post(f"/v2/repository/models/tabular/{action}")
            assert response.status_code == 503 and DISABLED in response.json()["error"]
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await server.grpc.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="tabular"))
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE and DISABLED in (raised.value.details() or "")


@pytest.mark.parametrize(
    ("method", "path", "extension"),
    [
        ("GET", "/v2/systemsharedmemory/status", "system shared memory"),
        ("POST", "/v2/systemsharedmemory/region/r0/register", "system shared memory"),
        ("POST", "/v2/systemsharedmemory/unregister", "system shared memory"),
        ("GET", "/v2/cudasharedmemory/region/r0/status", "CUDA shared memory"),
        ("POST", "/v2/cudasharedmemory/region/r0/unregister", "CUDA shared memory"),
        ("GET", "/v2/logging", "logging"),
    ],
)
async def test_unimplemented_extensions_answer_501_naming_the_extension(
    demo: Path, method: str, path: str, extension: str
) -> None:
    async with in_process(demo) as server:
        response = await server.http.request(method, path)
    assert response.status_code == 501
    assert f"the {extension} extension is not supported" in response.json()["error"]


async def test_unimplemented_extensions_answer_unimplemented_over_grpc(demo: Path) -> None:
    async with in_process(demo) as server:
        calls = [
            (server.grpc.SystemSharedMemoryStatus(pb.SystemSharedMemoryStatusRequest()), "system shared memory"),
            (server.grpc.CudaSharedMemoryRegister(pb.CudaSharedMemoryRegisterRequest()), "CUDA shared memory"),
            (server.grpc.LogSettings(pb.LogSettingsRequest()), "logging"),
        ]
        for call, extension in calls:
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await call
            assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED
            assert f"the {extension} extension is not supported" in (raised.value.details() or "")


def _override(max_batch_size: int) -> dict[str, object]:
    config = {
        "name": "tabular",
        "max_batch_size": max_batch_size,
        "input": [{"name": "features", "data_type": "TYPE_FP32", "dims": [8]}],
        "output": [
            {"name": "probabilities", "data_type": "TYPE_FP32", "dims": [3]},
            {"name": "label", "data_type": "TYPE_INT64", "dims": [1]},
        ],
    }
    return {"parameters": {"config": orjson.dumps(config).decode()}}


async def test_a_load_time_config_holds_until_another_is_sent_or_the_model_is_unloaded(demo: Path) -> None:
    assert "max_batch_size: 64" in TABULAR_CONFIG
    async with in_process(demo, model_control_mode="explicit", load_models=["tabular"]) as server:

        async def max_batch_size() -> int:
            response = await server.http.get("/v2/models/tabular/config")
            return int(response.json()["max_batch_size"])

        async def load(body: dict[str, object] | None = None) -> None:
            response = await server.http.post("/v2/repository/models/tabular/load", json=body or {})
            assert response.status_code == 200, response.content

        await load(_override(8))
        assert await max_batch_size() == 8
        await load()  # a plain load keeps the override, as Triton does
        assert await max_batch_size() == 8
        await load(_override(16))  # a load naming another config replaces it
        assert await max_batch_size() == 16
        assert (await server.http.post("/v2/repository/models/tabular/unload")).status_code == 200
        await load()  # after an unload the model's own config.pbtxt applies again
        assert await max_batch_size() == 64


async def test_load_model_star_loads_every_model_in_explicit_mode(demo: Path) -> None:
    async with in_process(demo, model_control_mode="explicit", load_models=["*"]) as server:
        index = (await server.http.post("/v2/repository/index", json={"ready": True})).json()
    assert {row["name"] for row in index} == {"tabular", "multi_io", "identity_all", "fixed_shape"}
