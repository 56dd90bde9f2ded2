"""Acceptance tests of the model repository, over HTTP and gRPC, in the test's own loop.

- A repository with broken models: the server starts, the good models serve, the broken ones are
  UNAVAILABLE with a reason naming the problem, and the server is not ready (Triton's strict readiness).
- Model control: load/unload refused by default, answered with --model-control-mode explicit.
- A Triton-style repository (realistic config.pbtxt, two versions) loads unchanged; version policies.

HTTP goes through httpx over ASGI; gRPC through a grpc.aio stub, and the unmodified tritonclient.grpc.aio
where the client's own encoding of a request matters (a load with a config or files).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import pytest_asyncio
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from tritonclient.utils import InferenceServerException

from serve.demo import write_demo_repository
from serve.modelgen import mlp, save
from serve.protocol import grpc_service_pb2 as pb
from serve.settings import ServerSettings
from tests.fixtures.data import features, run_reference
from tests.fixtures.grpc_frontends import grpc_frontend
from tests.fixtures.inprocess import InProcess, in_process
from tests.fixtures.repositories import (
    LOOKUP_MODEL,
    LOOKUP_TABLE,
    TRITON_MODEL,
    TRITON_POLICIES,
    triton_mlp_path,
    write_mixed_repository,
    write_triton_repository,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

GOOD_MODELS = ["fixed_shape", "identity_all", "lookup", "multi_io", "tabular"]
BROKEN_MODELS = ["corrupt_onnx", "unsupported_field", "wrong_input_name", "unsupported_op", "sequence_output"]


def tabular_body(rows: int = 1) -> dict[str, object]:
    return {
        "inputs": [
            {"name": "features", "shape": [rows, 8], "datatype": "FP32", "data": features(rows).ravel().tolist()}
        ]
    }


def lookup_body(indices: list[int]) -> dict[str, object]:
    return {"inputs": [{"name": "idx", "shape": [len(indices), 1], "datatype": "INT64", "data": indices}]}


def lookup_request(indices: list[int]) -> pb.ModelInferRequest:
    message = pb.ModelInferRequest(model_name=LOOKUP_MODEL)
    message.inputs.add(name="idx", datatype="INT64", shape=[len(indices), 1])
    message.raw_input_contents.append(np.array(indices, dtype="<i8").tobytes())
    return message


def index_by_name(rows: list[dict[str, str]]) -> dict[str, list[dict[str, str]]]:
    by_name: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        by_name.setdefault(row["name"], []).append(row)
    return by_name


async def post_json(server: InProcess, path: str, payload: Any) -> httpx.Response:
    return await server.http.post(path, content=json.dumps(payload).encode())


async def index(server: InProcess) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = (await server.http.post("/v2/repository/index")).json()
    return rows


def assert_error(response: httpx.Response, status: int, *fragments: str) -> None:
    assert response.status_code == status, (response.status_code, response.content)
    message = response.json()["error"]
    for fragment in fragments:
        assert fragment in message, message


def assert_rpc_error(error: grpc.aio.AioRpcError, code: grpc.StatusCode, *fragments: str) -> None:
    assert error.code() == code, (error.code(), error.details())
    for fragment in fragments:
        assert fragment in error.details(), error.details()


class Recorded(logging.Handler):
    """Every record logged while installed, as the server's log would have them."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@contextlib.contextmanager
def recording_logs() -> Iterator[Recorded]:
    recorded = Recorded()
    logging.getLogger().addHandler(recorded)
    try:
        yield recorded
    finally:
        logging.getLogger().removeHandler(recorded)


# ---- a repository with broken models -------------------------------------------------------------


@dataclass
class Mixed:
    server: InProcess
    reasons: dict[str, str]  # broken model -> what its reason must say
    log: list[str]  # what was logged while the repository loaded


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def mixed(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Mixed]:
    root = tmp_path_factory.mktemp("mixed-repo")
    reasons = write_mixed_repository(root)
    with recording_logs() as recorded:
        async with in_process(root) as server:
            yield Mixed(server, reasons, recorded.lines)


async def test_server_with_broken_models_starts_and_serves_the_good_ones(mixed: Mixed) -> None:
    http = mixed.server.http
    assert (await http.get("/v2/health/live")).status_code == 200
    for name in GOOD_MODELS:
        assert (await http.get(f"/v2/models/{name}/ready")).status_code == 200, name
    assert (await http.get("/v2/models/tabular")).json()["name"] == "tabular"
    assert (await post_json(mixed.server, "/v2/models/tabular/infer", tabular_body())).status_code == 200


async def test_http_index_lists_broken_models_unavailable_with_their_reason(mixed: Mixed) -> None:
    rows = index_by_name(await index(mixed.server))
    for name in GOOD_MODELS:
        assert [(r["version"], r["state"]) for r in rows[name]] == [("1", "READY")], name
    for name, fragment in mixed.reasons.items():
        (row,) = rows[name]
        assert row["state"] == "UNAVAILABLE", row
        assert fragment in row["reason"], row


async def test_grpc_index_lists_broken_models_unavailable_with_their_reason(mixed: Mixed) -> None:
    models = (await mixed.server.grpc.RepositoryIndex(pb.RepositoryIndexRequest())).models
    rows = index_by_name([{"name": m.name, "version": m.version, "state": m.state, "reason": m.reason} for m in models])
    assert {n for n in rows} == set(GOOD_MODELS) | set(mixed.reasons)
    for name in GOOD_MODELS:
        assert [r["state"] for r in rows[name]] == ["READY"], name
    for name, fragment in mixed.reasons.items():
        (row,) = rows[name]
        assert row["state"] == "UNAVAILABLE" and fragment in row["reason"], row


async def test_index_with_ready_filter_lists_only_ready_models(mixed: Mixed) -> None:
    rows = (await post_json(mixed.server, "/v2/repository/index", {"ready": True})).json()
    assert sorted(r["name"] for r in rows) == GOOD_MODELS
    models = (await mixed.server.grpc.RepositoryIndex(pb.RepositoryIndexRequest(ready=True))).models
    assert sorted(m.name for m in models) == GOOD_MODELS


async def test_broken_models_are_logged_with_their_reason(mixed: Mixed) -> None:
    for name, fragment in mixed.reasons.items():
        lines = [line for line in mixed.log if name in line and fragment in line]
        assert lines, name


async def test_server_is_not_ready_while_a_model_is_broken(mixed: Mixed) -> None:
    assert (await mixed.server.http.get("/v2/health/ready")).status_code == 400
    assert not (await mixed.server.grpc.ServerReady(pb.ServerReadyRequest())).ready
    assert (await mixed.server.http.get("/v2/health/live")).status_code == 200
    assert (await mixed.server.grpc.ServerLive(pb.ServerLiveRequest())).live


async def test_broken_model_is_not_ready(mixed: Mixed) -> None:
    assert (await mixed.server.http.get("/v2/models/corrupt_onnx/ready")).status_code == 400
    assert not (await mixed.server.grpc.ModelReady(pb.ModelReadyRequest(name="corrupt_onnx"))).ready


@pytest.mark.parametrize("model", BROKEN_MODELS)
async def test_http_infer_on_a_broken_model_is_503(mixed: Mixed, model: str) -> None:
    response = await post_json(mixed.server, f"/v2/models/{model}/infer", tabular_body())
    assert_error(response, 503, model, mixed.reasons[model])
    assert (await post_json(mixed.server, "/v2/models/tabular/infer", tabular_body())).status_code == 200


@pytest.mark.parametrize("model", BROKEN_MODELS)
async def test_grpc_infer_on_a_broken_model_is_unavailable(mixed: Mixed, model: str) -> None:
    message = pb.ModelInferRequest(model_name=model)
    message.inputs.add(name="x", datatype="FP32", shape=[1, 2])
    message.raw_input_contents.append(b"\0" * 8)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await mixed.server.grpc.ModelInfer(message)
    assert_rpc_error(info.value, grpc.StatusCode.UNAVAILABLE, model, mixed.reasons[model])
    assert (await mixed.server.grpc.ModelInfer(lookup_request([0]))).model_name == LOOKUP_MODEL


async def test_metadata_of_a_broken_model_is_503(mixed: Mixed) -> None:
    assert_error(await mixed.server.http.get("/v2/models/corrupt_onnx"), 503, "corrupt_onnx")


async def test_lookup_model_answers_in_range_indices(mixed: Mixed) -> None:
    response = await post_json(mixed.server, f"/v2/models/{LOOKUP_MODEL}/infer", lookup_body([3, 0]))
    assert response.status_code == 200
    assert response.json()["outputs"][0]["data"] == [LOOKUP_TABLE[3], LOOKUP_TABLE[0]]


async def test_http_onnxruntime_failure_is_500_for_that_request_only(mixed: Mixed) -> None:
    failed = await post_json(mixed.server, f"/v2/models/{LOOKUP_MODEL}/infer", lookup_body([1, 9]))
    assert_error(failed, 500, "onnxruntime", "Gather")
    after = await post_json(mixed.server, f"/v2/models/{LOOKUP_MODEL}/infer", lookup_body([2]))
    assert after.status_code == 200 and after.json()["outputs"][0]["data"] == [LOOKUP_TABLE[2]]


async def test_grpc_onnxruntime_failure_is_internal_for_that_request_only(mixed: Mixed) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await mixed.server.grpc.ModelInfer(lookup_request([-9]))
    assert_rpc_error(info.value, grpc.StatusCode.INTERNAL, "onnxruntime", "Gather")
    after = await mixed.server.grpc.ModelInfer(lookup_request([1]))
    assert np.frombuffer(after.raw_output_contents[0], dtype="<f4").tolist() == [LOOKUP_TABLE[1]]


async def test_onnxruntime_failure_counts_as_a_failure_in_statistics(mixed: Mixed) -> None:
    async def fails() -> int:
        (entry,) = (await mixed.server.http.get(f"/v2/models/{LOOKUP_MODEL}/stats")).json()["model_stats"]
        return int(entry["inference_stats"]["fail"]["count"])

    before = await fails()
    assert (await post_json(mixed.server, f"/v2/models/{LOOKUP_MODEL}/infer", lookup_body([4]))).status_code == 500
    assert await fails() == before + 1


async def test_http_load_and_unload_are_refused_without_explicit_model_control(mixed: Mixed) -> None:
    http = mixed.server.http
    disabled = "explicit model load / unload is not allowed"
    assert_error(await http.post("/v2/repository/models/tabular/load"), 503, disabled)
    assert_error(await http.post("/v2/repository/models/tabular/unload"), 503, disabled)
    assert (await http.get("/v2/models/tabular/ready")).status_code == 200


async def test_grpc_load_and_unload_are_refused_without_explicit_model_control(mixed: Mixed) -> None:
    stub = mixed.server.grpc
    for call in (
        stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="tabular")),
        stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="tabular")),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call
        assert_rpc_error(info.value, grpc.StatusCode.UNAVAILABLE, "explicit model load / unload is not allowed")
    assert (await stub.ModelReady(pb.ModelReadyRequest(name="tabular"))).ready


# ---- explicit model control ----------------------------------------------------------------------


@dataclass
class Explicit:
    server: InProcess
    grpc: aioclient.InferenceServerClient  # the unmodified tritonclient, dialling the in-process port

    async def load(self, name: str, config: str | None = None) -> httpx.Response:
        """tritonclient.http's load_model request: an empty object, or the config as a parameter."""
        body = {"parameters": {"config": config}} if config is not None else {}
        return await post_json(self.server, f"/v2/repository/models/{name}/load", body)

    async def unload(self, name: str) -> httpx.Response:
        """tritonclient.http's unload_model request."""
        body = {"parameters": {"unload_dependents": False}}
        return await post_json(self.server, f"/v2/repository/models/{name}/unload", body)

    async def ready(self, name: str) -> bool:
        return (await self.server.http.get(f"/v2/models/{name}/ready")).status_code == 200

    async def max_batch_size(self, name: str) -> int:
        return int((await self.server.http.get(f"/v2/models/{name}/config")).json()["max_batch_size"])


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def explicit(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Explicit]:
    root = tmp_path_factory.mktemp("explicit-repo")
    write_demo_repository(root)
    settings = ServerSettings(model_control_mode="explicit", load_models=["tabular", "multi_io"])
    async with (
        in_process(root, settings) as server,
        grpc_frontend(server, "aio", max_message_bytes=settings.max_request_bytes) as address,
    ):
        client = aioclient.InferenceServerClient(address)
        try:
            yield Explicit(server, client)
        finally:
            await client.close()


async def test_explicit_mode_loads_only_the_models_named_at_start(explicit: Explicit) -> None:
    rows = index_by_name(await index(explicit.server))
    assert [r["state"] for r in rows["tabular"]] == ["READY"]
    assert [r["state"] for r in rows["multi_io"]] == ["READY"]
    assert [r["state"] for r in rows["identity_all"]] == ["UNAVAILABLE"]
    assert not await explicit.ready("identity_all")


async def test_http_unload_makes_the_model_unavailable_and_load_brings_it_back(explicit: Explicit) -> None:
    assert (await explicit.unload("multi_io")).status_code == 200
    assert not await explicit.ready("multi_io")
    (row,) = [r for r in await index(explicit.server) if r["name"] == "multi_io"]
    assert row["state"] == "UNAVAILABLE"
    response = await post_json(explicit.server, "/v2/models/multi_io/infer", tabular_body())
    assert response.status_code in (404, 503), response.content
    assert (await explicit.load("multi_io")).status_code == 200
    assert await explicit.ready("multi_io")
    (row,) = [r for r in await index(explicit.server) if r["name"] == "multi_io"]
    assert row["state"] == "READY"


async def test_grpc_unload_makes_the_model_unavailable_and_load_brings_it_back(explicit: Explicit) -> None:
    await explicit.grpc.unload_model("multi_io")
    assert not await explicit.grpc.is_model_ready("multi_io")
    states = {m.name: m.state for m in (await explicit.grpc.get_model_repository_index()).models}
    assert states["multi_io"] == "UNAVAILABLE"
    await explicit.grpc.load_model("multi_io")
    assert await explicit.grpc.is_model_ready("multi_io")
    states = {m.name: m.state for m in (await explicit.grpc.get_model_repository_index()).models}
    assert states["multi_io"] == "READY"


async def test_load_of_a_model_not_loaded_at_start_makes_it_serve(explicit: Explicit) -> None:
    assert (await explicit.load("fixed_shape")).status_code == 200
    x = np.ones((2, 3), dtype=np.float32)
    body = {"inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP32", "data": x.ravel().tolist()}]}
    assert (await post_json(explicit.server, "/v2/models/fixed_shape/infer", body)).status_code == 200


async def test_http_load_with_a_config_override_applies_it(explicit: Explicit) -> None:
    override = (await explicit.server.http.get("/v2/models/tabular/config")).json()
    override["max_batch_size"] = 4
    try:
        assert (await explicit.load("tabular", config=json.dumps(override))).status_code == 200
        assert await explicit.max_batch_size("tabular") == 4
        assert (await post_json(explicit.server, "/v2/models/tabular/infer", tabular_body(4))).status_code == 200
        assert_error(await post_json(explicit.server, "/v2/models/tabular/infer", tabular_body(5)), 400, "5", "4")
        await explicit.load("tabular")  # a plain load keeps the override, as Triton does
        assert await explicit.max_batch_size("tabular") == 4
    finally:
        await explicit.unload("tabular")  # an unload forgets it: back to config.pbtxt
        await explicit.load("tabular")
    assert await explicit.max_batch_size("tabular") == 64


async def test_grpc_load_with_a_config_override_applies_it(explicit: Explicit) -> None:
    override = (await explicit.grpc.get_model_config("tabular", as_json=True))["config"]
    override["max_batch_size"] = 2
    try:
        await explicit.grpc.load_model("tabular", config=json.dumps(override))
        assert (await explicit.grpc.get_model_config("tabular")).config.max_batch_size == 2
    finally:
        await explicit.grpc.unload_model("tabular")
        await explicit.grpc.load_model("tabular")
    assert (await explicit.grpc.get_model_config("tabular")).config.max_batch_size == 64


def uploaded_config(name: str) -> str:
    return json.dumps(
        {
            "name": name,
            "max_batch_size": 4,
            "input": [{"name": "input", "data_type": "TYPE_FP32", "dims": [4]}],
            "output": [{"name": "output", "data_type": "TYPE_FP32", "dims": [2]}],
        }
    )


async def test_http_load_from_uploaded_files_serves_the_new_model(explicit: Explicit, tmp_path: Path) -> None:
    model_path = save(mlp([4, 2], seed=3), tmp_path / "model.onnx")
    parameters = {
        "config": uploaded_config("uploaded_http"),
        "file:1/model.onnx": base64.b64encode(model_path.read_bytes()).decode(),
    }
    response = await post_json(explicit.server, "/v2/repository/models/uploaded_http/load", {"parameters": parameters})
    assert response.status_code == 200, response.content
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    body = {"inputs": [{"name": "input", "shape": [2, 4], "datatype": "FP32", "data": x.ravel().tolist()}]}
    answer = await post_json(explicit.server, "/v2/models/uploaded_http/infer", body)
    assert answer.status_code == 200, answer.content
    expected = run_reference(model_path, {"input": x})["output"]
    np.testing.assert_allclose(np.asarray(answer.json()["outputs"][0]["data"]).reshape(2, 2), expected, rtol=1e-5)
    assert (await explicit.server.http.post("/v2/repository/models/uploaded_http/unload")).status_code == 200
    assert not await explicit.ready("uploaded_http")


async def test_grpc_load_from_uploaded_files_serves_the_new_model(explicit: Explicit, tmp_path: Path) -> None:
    model_path = save(mlp([4, 2], seed=4), tmp_path / "model.onnx")
    await explicit.grpc.load_model(
        "uploaded_grpc",
        config=uploaded_config("uploaded_grpc"),
        files={"file:1/model.onnx": model_path.read_bytes()},
    )
    assert await explicit.grpc.is_model_ready("uploaded_grpc")
    x = np.ones((1, 4), dtype=np.float32)
    tensor = grpcclient.InferInput("input", [1, 4], "FP32")
    tensor.set_data_from_numpy(x)
    got = (await explicit.grpc.infer("uploaded_grpc", [tensor])).as_numpy("output")
    np.testing.assert_allclose(got, run_reference(model_path, {"input": x})["output"], rtol=1e-5)
    await explicit.grpc.unload_model("uploaded_grpc")
    assert not await explicit.grpc.is_model_ready("uploaded_grpc")


async def test_uploaded_files_without_a_config_are_refused(explicit: Explicit) -> None:
    parameters = {"file:1/model.onnx": base64.b64encode(b"whatever").decode()}
    response = await post_json(explicit.server, "/v2/repository/models/orphan/load", {"parameters": parameters})
    assert_error(response, 400, "config")


async def test_uploaded_files_may_not_leave_the_model_directory(explicit: Explicit) -> None:
    parameters = {
        "config": uploaded_config("escape"),
        "file:../../escaped.onnx": base64.b64encode(b"whatever").decode(),
    }
    response = await post_json(explicit.server, "/v2/repository/models/escape/load", {"parameters": parameters})
    assert_error(response, 400, "outside")


async def test_a_reload_does_not_fail_requests_in_flight(explicit: Explicit) -> None:
    x = features(2)
    message = pb.ModelInferRequest(model_name="tabular")
    message.inputs.add(name="features", datatype="FP32", shape=[2, 8])
    message.raw_input_contents.append(x.tobytes())
    stub = explicit.server.grpc
    await stub.ModelInfer(message)  # connected before the burst
    calls = [asyncio.ensure_future(stub.ModelInfer(message)) for _ in range(40)]
    await asyncio.sleep(0)  # the burst is on its way when the reload starts
    assert (await explicit.load("tabular")).status_code == 200
    calls += [asyncio.ensure_future(stub.ModelInfer(message)) for _ in range(40)]
    async with asyncio.timeout(60):
        answers = await asyncio.gather(*calls)
    assert all(a.model_name == "tabular" and len(a.raw_output_contents) == 2 for a in answers)


async def test_unload_of_an_unknown_model_is_404(explicit: Explicit) -> None:
    assert_error(await explicit.server.http.post("/v2/repository/models/nope/unload"), 404, "nope")


async def test_load_of_an_unknown_model_is_404(explicit: Explicit) -> None:
    assert_error(await explicit.server.http.post("/v2/repository/models/nope/load"), 404, "nope")


async def test_grpc_load_of_an_unknown_model_is_not_found(explicit: Explicit) -> None:
    with pytest.raises(InferenceServerException) as info:
        await explicit.grpc.load_model("nope")
    assert info.value.status() == "StatusCode.NOT_FOUND"


async def test_load_with_an_invalid_config_override_reports_why(explicit: Explicit) -> None:
    bad = json.dumps({"name": "multi_io", "sequence_batching": {}})
    assert_error(await explicit.load("multi_io", config=bad), 400, "sequence_batching")
    assert (await explicit.load("multi_io")).status_code == 200
    assert await explicit.ready("multi_io")


# ---- a Triton-style repository -------------------------------------------------------------------


@pytest.fixture(scope="module")
def triton_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("triton-repo")
    write_triton_repository(root)
    return root


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def triton(triton_repository: Path) -> AsyncIterator[InProcess]:
    async with in_process(triton_repository) as server:
        yield server


async def triton_infer(server: InProcess, model: str, x: np.ndarray, version: str = "") -> httpx.Response:
    path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
    body = {"inputs": [{"name": "INPUT__0", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
    return await post_json(server, path, body)


def triton_x(rows: int = 3) -> np.ndarray:
    return np.random.default_rng(11).standard_normal((rows, 4)).astype(np.float32)


async def test_triton_repository_loads_unchanged_and_the_server_is_ready(triton: InProcess) -> None:
    rows = await index(triton)
    assert all(r["state"] == "READY" for r in rows), rows
    assert (await triton.http.get("/v2/health/ready")).status_code == 200


async def test_triton_config_keeps_its_fields(triton: InProcess) -> None:
    config = (await triton.http.get(f"/v2/models/{TRITON_MODEL}/config")).json()
    assert config["max_batch_size"] == 16
    assert config["dynamic_batching"]["preferred_batch_size"] == [4, 8]
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 100
    assert config["dynamic_batching"]["default_queue_policy"]["max_queue_size"] == 128
    assert [(g["kind"], g["count"]) for g in config["instance_group"]] == [("KIND_CPU", 2)]
    assert config["parameters"] == {"intra_op_thread_count": {"string_value": "1"}}
    assert config["model_warmup"][0]["name"] == "random_batch"
    assert config["version_policy"] == {"latest": {"num_versions": 1}}


async def test_triton_model_infers_over_http_with_the_latest_version(
    triton: InProcess, triton_repository: Path
) -> None:
    x = triton_x()
    response = await triton_infer(triton, TRITON_MODEL, x)
    assert response.status_code == 200, response.content
    payload = response.json()
    assert payload["model_version"] == "2"
    expected = run_reference(triton_mlp_path(triton_repository, TRITON_MODEL, 2), {"INPUT__0": x})["OUTPUT__0"]
    np.testing.assert_allclose(np.asarray(payload["outputs"][0]["data"]).reshape(3, 2), expected, rtol=1e-5)


async def test_triton_model_infers_over_grpc(triton: InProcess, triton_repository: Path) -> None:
    x = triton_x(8)
    message = pb.ModelInferRequest(model_name=TRITON_MODEL)
    message.inputs.add(name="INPUT__0", datatype="FP32", shape=[8, 4])
    message.raw_input_contents.append(x.tobytes())
    response = await triton.grpc.ModelInfer(message)
    got = np.frombuffer(response.raw_output_contents[0], dtype="<f4").reshape(8, 2)
    expected = run_reference(triton_mlp_path(triton_repository, TRITON_MODEL, 2), {"INPUT__0": x})["OUTPUT__0"]
    np.testing.assert_allclose(got, expected, rtol=1e-5)


async def test_version_policy_latest_serves_only_the_newest_version(triton: InProcess) -> None:
    metadata = (await triton.http.get("/v2/models/triton_latest")).json()
    assert metadata["versions"] == ["2"]
    assert (await triton.http.get("/v2/models/triton_latest/versions/2/ready")).status_code == 200
    assert (await triton.http.get("/v2/models/triton_latest/versions/1/ready")).status_code == 400
    assert (await triton_infer(triton, "triton_latest", triton_x(), version="1")).status_code == 404


async def test_version_policy_all_serves_every_version(triton: InProcess, triton_repository: Path) -> None:
    assert (await triton.http.get("/v2/models/triton_all")).json()["versions"] == ["1", "2"]
    x = triton_x()
    for version in ("1", "2"):
        response = await triton_infer(triton, "triton_all", x, version=version)
        assert response.status_code == 200 and response.json()["model_version"] == version
        expected = run_reference(triton_mlp_path(triton_repository, "triton_all", int(version)), {"INPUT__0": x})[
            "OUTPUT__0"
        ]
        got = np.asarray(response.json()["outputs"][0]["data"]).reshape(3, 2)
        np.testing.assert_allclose(got, expected, rtol=1e-5)
    # No version in the request: the highest ready one answers.
    assert (await triton_infer(triton, "triton_all", x)).json()["model_version"] == "2"


async def test_version_policy_specific_serves_only_the_listed_versions(triton: InProcess) -> None:
    assert (await triton.http.get("/v2/models/triton_specific")).json()["versions"] == ["1"]
    assert (await triton_infer(triton, "triton_specific", triton_x())).json()["model_version"] == "1"
    assert (await triton.http.get("/v2/models/triton_specific/versions/2/ready")).status_code == 400


async def test_every_version_has_its_own_statistics(triton: InProcess) -> None:
    await triton_infer(triton, "triton_all", triton_x(2), version="1")
    stats = (await triton.http.get("/v2/models/triton_all/stats")).json()["model_stats"]
    assert [s["version"] for s in stats] == ["1", "2"]
    (one,) = (await triton.http.get("/v2/models/triton_all/versions/1/stats")).json()["model_stats"]
    assert one["version"] == "1" and one["inference_count"] >= 2


async def test_every_policy_variant_is_in_the_index(triton: InProcess) -> None:
    rows = index_by_name(await index(triton))
    assert set(rows) == {TRITON_MODEL, *TRITON_POLICIES}
    assert [r["version"] for r in rows["triton_all"]] == ["1", "2"]
    assert [r["version"] for r in rows["triton_specific"]] == ["1"]
