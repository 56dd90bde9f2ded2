"""The input-stats HTTP routes (serve.http.input_stats_routes) and the serve.monitoring gRPC service.

The routes are called in-process through ASGI: starlette's TestClient would need httpx,
which is not a dependency of this project.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, MutableMapping
from typing import Any, cast

import grpc
import numpy as np
import orjson
import pytest
from starlette.routing import Router
from starlette.types import ASGIApp

from serve.errors import ModelNotFound, ModelNotReady, NotFound
from serve.grpc.input_stats_service import SERVICE_NAME, add_monitoring_servicer
from serve.http.errors import ErrorBoundary
from serve.http.input_stats_routes import monitoring_routes
from serve.input_stats.recorder import StatsRecorder
from serve.input_stats.served_baseline import ServedBaseline
from serve.input_stats.windows import ServerInstance
from serve.input_stats.wiring import local_documents
from serve.protocol import serve_monitoring_pb2 as pb
from serve.protocol import serve_monitoring_pb2_grpc as pb_grpc
from serve.types import TensorSpec


@pytest.fixture
def recorders() -> Iterator[dict[tuple[str, str], StatsRecorder]]:
    instance = ServerInstance("inst", "r", 0.0)
    recs = {}
    for version in ("1", "2"):
        rec = StatsRecorder("m", version, [TensorSpec("x", "FP32", ())], [], instance=instance)
        rec.submit({"x": np.arange(int(version) * 3, dtype=np.float32)}, {})
        rec.flush(5)
        recs[("m", version)] = rec
    yield recs
    for rec in recs.values():
        rec.close()


def _lookup(recorders: dict[tuple[str, str], StatsRecorder]):  # noqa: ANN202
    def lookup(name: str, version: str) -> StatsRecorder:
        if name == "loading":
            raise ModelNotReady(f"model '{name}' is not ready")
        key = (name, version or "2")  # "" = the default (highest) version
        if key not in recorders:
            raise ModelNotFound(f"unknown model '{name}' version '{version}'")
        return recorders[key]

    return lookup


def _no_baselines(name: str, version: str) -> ServedBaseline:
    raise NotFound(f"model '{name}' has no baseline")


class Client:
    """GET through the ASGI interface of a tiny Starlette app holding only the input-stats routes."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def get(self, path: str, query: str = "") -> tuple[int, dict[str, str], bytes]:
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
            "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": query.encode(),
            "root_path": "", "headers": [], "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 5000),
        }  # fmt: skip
        sent: list[MutableMapping[str, Any]] = []

        async def receive() -> dict:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: MutableMapping[str, Any]) -> None:
            sent.append(message)

        await self.app(scope, receive, send)
        headers = {k.decode(): v.decode() for k, v in sent[0]["headers"]}
        return sent[0]["status"], headers, b"".join(m.get("body", b"") for m in sent[1:])

    async def json(self, path: str, query: str = "") -> dict:
        status, _, body = await self.get(path, query)
        assert status == 200, body
        return orjson.loads(body)


@pytest.fixture
def client(recorders) -> Client:  # noqa: ANN001
    return Client(ErrorBoundary(Router(routes=monitoring_routes(local_documents(_lookup(recorders)), _no_baselines))))


async def test_http_returns_the_default_versions_document(client: Client) -> None:
    status, headers, body = await client.get("/v2/models/m/input-stats")
    assert status == 200
    assert headers["content-type"] == "application/json"
    doc = orjson.loads(body)
    assert doc["model"] == {"name": "m", "version": "2"}
    assert doc["total"]["features"]["x"]["n"] == 6


async def test_http_returns_a_named_versions_document(client: Client) -> None:
    doc = await client.json("/v2/models/m/versions/1/input-stats")
    assert doc["model"]["version"] == "1"
    assert doc["total"]["features"]["x"]["n"] == 3


async def test_http_since_leaves_out_unchanged_windows(client: Client) -> None:
    first = await client.json("/v2/models/m/input-stats")
    later = await client.json("/v2/models/m/input-stats", f"since={first['seq']}")
    assert len(first["windows"]) == 1 and later["windows"] == []


@pytest.mark.parametrize(
    ("path", "query", "status"),
    [
        ("/v2/models/nope/input-stats", "", 404),
        ("/v2/models/m/versions/7/input-stats", "", 404),
        ("/v2/models/loading/input-stats", "", 503),
        ("/v2/models/m/input-stats", "since=-1", 400),
        ("/v2/models/m/input-stats", "since=abc", 400),
    ],
    ids=["unknown-model", "unknown-version", "not-ready", "negative-since", "bad-since"],
)
async def test_http_errors_are_json_with_the_errors_status(client: Client, path: str, query: str, status: int) -> None:
    got, _, body = await client.get(path, query)
    assert got == status
    assert set(orjson.loads(body)) == {"error"}


@pytest.fixture
async def grpc_target(recorders) -> AsyncIterator[str]:  # noqa: ANN001
    server = grpc.aio.server()
    # No core: these tests ask only for statistics (the feedback RPCs are tests/test_feedback_api.py's).
    add_monitoring_servicer(server, local_documents(_lookup(recorders)), _no_baselines, cast(Any, None))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


async def test_grpc_input_stats_returns_the_same_document(grpc_target: str) -> None:
    async with grpc.aio.insecure_channel(grpc_target) as channel:
        stub = pb_grpc.MonitoringStub(channel)
        response = await stub.InputStats(pb.InputStatsRequest(model_name="m", model_version="1"))
    doc = orjson.loads(response.json)
    assert doc["model"] == {"name": "m", "version": "1"}
    assert doc["total"]["features"]["x"]["n"] == 3


async def test_grpc_input_stats_honours_since(grpc_target: str) -> None:
    async with grpc.aio.insecure_channel(grpc_target) as channel:
        stub = pb_grpc.MonitoringStub(channel)
        first = orjson.loads((await stub.InputStats(pb.InputStatsRequest(model_name="m"))).json)
        later = await stub.InputStats(pb.InputStatsRequest(model_name="m", since=first["seq"]))
    assert orjson.loads(later.json)["windows"] == []


@pytest.mark.parametrize(
    ("name", "code"),
    [("nope", grpc.StatusCode.NOT_FOUND), ("loading", grpc.StatusCode.UNAVAILABLE)],
    ids=["unknown", "not-ready"],
)
async def test_grpc_errors_carry_the_errors_status_code(grpc_target: str, name: str, code: grpc.StatusCode) -> None:
    async with grpc.aio.insecure_channel(grpc_target) as channel:
        stub = pb_grpc.MonitoringStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.InputStats(pb.InputStatsRequest(model_name=name))
    assert info.value.code() == code


def test_the_service_is_named_in_the_serve_monitoring_package() -> None:
    assert SERVICE_NAME == "serve.monitoring.Monitoring"
