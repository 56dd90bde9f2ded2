"""Acceptance tests of the model repository against real servers, over HTTP and gRPC.

- A repository with broken models: the server starts, the good models serve, the broken ones are
  UNAVAILABLE with a reason naming the problem, and the server is not ready (Triton's strict readiness).
- Model control: load/unload refused by default, answered with --model-control-mode explicit.
- A Triton-style repository (realistic config.pbtxt, two versions) loads unchanged; version policies.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from serve.demo import write_demo_repository
from serve.modelgen import mlp, save
from serve.protocol import grpc_service_pb2 as pb
from serve.protocol import grpc_service_pb2_grpc as pb_grpc
from tests.fixtures.clients import RawResponse, post_json, request
from tests.fixtures.data import features, run_reference
from tests.fixtures.repositories import (
    LOOKUP_MODEL,
    LOOKUP_TABLE,
    TRITON_MODEL,
    TRITON_POLICIES,
    triton_mlp_path,
    write_mixed_repository,
    write_triton_repository,
)
from tests.fixtures.servers import RunningServer, start_server

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


def assert_error(response: RawResponse, status: int, *fragments: str) -> None:
    assert response.status == status, (response.status, response.body)
    message = response.error()
    for fragment in fragments:
        assert fragment in message, message


def assert_rpc_error(error: grpc.RpcError, code: grpc.StatusCode, *fragments: str) -> None:
    assert error.code() == code, (error.code(), error.details())
    for fragment in fragments:
        assert fragment in error.details(), error.details()


# ---- a repository with broken models -------------------------------------------------------------


@pytest.fixture(scope="module")
def broken_reasons(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("mixed-repo")
    return root, write_mixed_repository(root)


@pytest.fixture(scope="module")
def mixed_server(
    broken_reasons: tuple[Path, dict[str, str]], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    server = start_server(broken_reasons[0], tmp_path_factory.mktemp("mixed-server"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def mixed_stub(mixed_server: RunningServer) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(mixed_server.grpc_url) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def test_server_with_broken_models_starts_and_serves_the_good_ones(mixed_server: RunningServer) -> None:
    client = httpclient.InferenceServerClient(mixed_server.http_url)
    try:
        assert client.is_server_live()
        for name in GOOD_MODELS:
            assert client.is_model_ready(name), name
        result = client.get_model_metadata("tabular")
        assert result["name"] == "tabular"
    finally:
        client.close()
    assert post_json(mixed_server.http_port, "/v2/models/tabular/infer", tabular_body()).status == 200


def test_http_index_lists_broken_models_unavailable_with_their_reason(
    mixed_server: RunningServer, broken_reasons: tuple[Path, dict[str, str]]
) -> None:
    rows = index_by_name(request(mixed_server.http_port, "POST", "/v2/repository/index").json())
    for name in GOOD_MODELS:
        assert [(r["version"], r["state"]) for r in rows[name]] == [("1", "READY")], name
    for name, fragment in broken_reasons[1].items():
        (row,) = rows[name]
        assert row["state"] == "UNAVAILABLE", row
        assert fragment in row["reason"], row


def test_grpc_index_lists_broken_models_unavailable_with_their_reason(
    mixed_server: RunningServer, broken_reasons: tuple[Path, dict[str, str]]
) -> None:
    client = grpcclient.InferenceServerClient(mixed_server.grpc_url)
    try:
        models = client.get_model_repository_index().models
    finally:
        client.close()
    rows = index_by_name([{"name": m.name, "version": m.version, "state": m.state, "reason": m.reason} for m in models])
    assert {n for n in rows} == set(GOOD_MODELS) | set(broken_reasons[1])
    for name in GOOD_MODELS:
        assert [r["state"] for r in rows[name]] == ["READY"], name
    for name, fragment in broken_reasons[1].items():
        (row,) = rows[name]
        assert row["state"] == "UNAVAILABLE" and fragment in row["reason"], row


def test_tritonclient_http_reads_the_index(mixed_server: RunningServer) -> None:
    client = httpclient.InferenceServerClient(mixed_server.http_url)
    try:
        names = {row["name"] for row in client.get_model_repository_index()}
    finally:
        client.close()
    assert "corrupt_onnx" in names and "tabular" in names


def test_index_with_ready_filter_lists_only_ready_models(
    mixed_server: RunningServer, mixed_stub: pb_grpc.GRPCInferenceServiceStub
) -> None:
    rows = post_json(mixed_server.http_port, "/v2/repository/index", {"ready": True}).json()
    assert sorted(r["name"] for r in rows) == GOOD_MODELS
    models = mixed_stub.RepositoryIndex(pb.RepositoryIndexRequest(ready=True)).models
    assert sorted(m.name for m in models) == GOOD_MODELS


def test_broken_models_are_logged_with_their_reason(
    mixed_server: RunningServer, broken_reasons: tuple[Path, dict[str, str]]
) -> None:
    log = mixed_server.log()
    for name, fragment in broken_reasons[1].items():
        lines = [line for line in log.splitlines() if name in line and fragment in line]
        assert lines, name


def test_server_is_not_ready_while_a_model_is_broken(
    mixed_server: RunningServer, mixed_stub: pb_grpc.GRPCInferenceServiceStub
) -> None:
    assert request(mixed_server.http_port, "GET", "/v2/health/ready").status == 400
    assert not mixed_stub.ServerReady(pb.ServerReadyRequest()).ready
    assert request(mixed_server.http_port, "GET", "/v2/health/live").status == 200
    assert mixed_stub.ServerLive(pb.ServerLiveRequest()).live


def test_broken_model_is_not_ready(mixed_server: RunningServer, mixed_stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    assert request(mixed_server.http_port, "GET", "/v2/models/corrupt_onnx/ready").status == 400
    assert not mixed_stub.ModelReady(pb.ModelReadyRequest(name="corrupt_onnx")).ready


@pytest.mark.parametrize("model", BROKEN_MODELS)
def test_http_infer_on_a_broken_model_is_503(
    mixed_server: RunningServer, broken_reasons: tuple[Path, dict[str, str]], model: str
) -> None:
    response = post_json(mixed_server.http_port, f"/v2/models/{model}/infer", tabular_body())
    assert_error(response, 503, model, broken_reasons[1][model])
    assert post_json(mixed_server.http_port, "/v2/models/tabular/infer", tabular_body()).status == 200


@pytest.mark.parametrize("model", BROKEN_MODELS)
def test_grpc_infer_on_a_broken_model_is_unavailable(
    mixed_stub: pb_grpc.GRPCInferenceServiceStub, broken_reasons: tuple[Path, dict[str, str]], model: str
) -> None:
    message = pb.ModelInferRequest(model_name=model)
    message.inputs.add(name="x", datatype="FP32", shape=[1, 2])
    message.raw_input_contents.append(b"\0" * 8)
    with pytest.raises(grpc.RpcError) as info:
        mixed_stub.ModelInfer(message)
    assert_rpc_error(info.value, grpc.StatusCode.UNAVAILABLE, model, broken_reasons[1][model])
    assert mixed_stub.ModelInfer(lookup_request([0])).model_name == LOOKUP_MODEL


def test_metadata_of_a_broken_model_is_503(mixed_server: RunningServer) -> None:
    assert_error(request(mixed_server.http_port, "GET", "/v2/models/corrupt_onnx"), 503, "corrupt_onnx")


def test_lookup_model_answers_in_range_indices(mixed_server: RunningServer) -> None:
    response = post_json(mixed_server.http_port, f"/v2/models/{LOOKUP_MODEL}/infer", lookup_body([3, 0]))
    assert response.status == 200
    assert response.json()["outputs"][0]["data"] == [LOOKUP_TABLE[3], LOOKUP_TABLE[0]]


def test_http_onnxruntime_failure_is_500_for_that_request_only(mixed_server: RunningServer) -> None:
    port = mixed_server.http_port
    failed = post_json(port, f"/v2/models/{LOOKUP_MODEL}/infer", lookup_body([1, 9]))
    assert_error(failed, 500, "onnxruntime", "Gather")
    after = post_json(port, f"/v2/models/{LOOKUP_MODEL}/infer", lookup_body([2]))
    assert after.status == 200 and after.json()["outputs"][0]["data"] == [LOOKUP_TABLE[2]]


def test_grpc_onnxruntime_failure_is_internal_for_that_request_only(
    mixed_stub: pb_grpc.GRPCInferenceServiceStub,
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        mixed_stub.ModelInfer(lookup_request([-9]))
    assert_rpc_error(info.value, grpc.StatusCode.INTERNAL, "onnxruntime", "Gather")
    after = mixed_stub.ModelInfer(lookup_request([1]))
    assert np.frombuffer(after.raw_output_contents[0], dtype="<f4").tolist() == [LOOKUP_TABLE[1]]


def test_onnxruntime_failure_counts_as_a_failure_in_statistics(mixed_server: RunningServer) -> None:
    port = mixed_server.http_port

    def fails() -> int:
        (entry,) = request(port, "GET", f"/v2/models/{LOOKUP_MODEL}/stats").json()["model_stats"]
        return entry["inference_stats"]["fail"]["count"]

    before = fails()
    assert post_json(port, f"/v2/models/{LOOKUP_MODEL}/infer", lookup_body([4])).status == 500
    assert fails() == before + 1


def test_http_load_and_unload_are_refused_without_explicit_model_control(mixed_server: RunningServer) -> None:
    port = mixed_server.http_port
    disabled = "explicit model load / unload is not allowed"
    assert_error(request(port, "POST", "/v2/repository/models/tabular/load"), 503, disabled)
    assert_error(request(port, "POST", "/v2/repository/models/tabular/unload"), 503, disabled)
    assert request(port, "GET", "/v2/models/tabular/ready").status == 200


def test_grpc_load_and_unload_are_refused_without_explicit_model_control(
    mixed_stub: pb_grpc.GRPCInferenceServiceStub,
) -> None:
    for call in (
        lambda: mixed_stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="tabular")),
        lambda: mixed_stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="tabular")),
    ):
        with pytest.raises(grpc.RpcError) as info:
            call()
        assert_rpc_error(info.value, grpc.StatusCode.UNAVAILABLE, "explicit model load / unload is not allowed")
    assert mixed_stub.ModelReady(pb.ModelReadyRequest(name="tabular")).ready


# ---- explicit model control ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def explicit_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("explicit-repo")
    write_demo_repository(root)
    server = start_server(
        root,
        tmp_path_factory.mktemp("explicit-server"),
        "--model-control-mode",
        "explicit",
        "--load-model",
        "tabular",
        "--load-model",
        "multi_io",
    )
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture()
def explicit_http(explicit_server: RunningServer) -> Iterator[httpclient.InferenceServerClient]:
    client = httpclient.InferenceServerClient(explicit_server.http_url)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture()
def explicit_grpc(explicit_server: RunningServer) -> Iterator[grpcclient.InferenceServerClient]:
    client = grpcclient.InferenceServerClient(explicit_server.grpc_url)
    try:
        yield client
    finally:
        client.close()


def test_explicit_mode_loads_only_the_models_named_at_start(explicit_server: RunningServer) -> None:
    rows = index_by_name(request(explicit_server.http_port, "POST", "/v2/repository/index").json())
    assert [r["state"] for r in rows["tabular"]] == ["READY"]
    assert [r["state"] for r in rows["multi_io"]] == ["READY"]
    assert [r["state"] for r in rows["identity_all"]] == ["UNAVAILABLE"]
    assert request(explicit_server.http_port, "GET", "/v2/models/identity_all/ready").status == 400


def test_http_unload_makes_the_model_unavailable_and_load_brings_it_back(
    explicit_server: RunningServer, explicit_http: httpclient.InferenceServerClient
) -> None:
    explicit_http.unload_model("multi_io")
    assert not explicit_http.is_model_ready("multi_io")
    (row,) = [r for r in explicit_http.get_model_repository_index() if r["name"] == "multi_io"]
    assert row["state"] == "UNAVAILABLE"
    response = post_json(explicit_server.http_port, "/v2/models/multi_io/infer", tabular_body())
    assert response.status in (404, 503), response.body
    explicit_http.load_model("multi_io")
    assert explicit_http.is_model_ready("multi_io")
    (row,) = [r for r in explicit_http.get_model_repository_index() if r["name"] == "multi_io"]
    assert row["state"] == "READY"


def test_grpc_unload_makes_the_model_unavailable_and_load_brings_it_back(
    explicit_grpc: grpcclient.InferenceServerClient,
) -> None:
    explicit_grpc.unload_model("multi_io")
    assert not explicit_grpc.is_model_ready("multi_io")
    states = {m.name: m.state for m in explicit_grpc.get_model_repository_index().models}
    assert states["multi_io"] == "UNAVAILABLE"
    explicit_grpc.load_model("multi_io")
    assert explicit_grpc.is_model_ready("multi_io")
    states = {m.name: m.state for m in explicit_grpc.get_model_repository_index().models}
    assert states["multi_io"] == "READY"


def test_load_of_a_model_not_loaded_at_start_makes_it_serve(
    explicit_server: RunningServer, explicit_http: httpclient.InferenceServerClient
) -> None:
    explicit_http.load_model("fixed_shape")
    x = np.ones((2, 3), dtype=np.float32)
    body = {"inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP32", "data": x.ravel().tolist()}]}
    assert post_json(explicit_server.http_port, "/v2/models/fixed_shape/infer", body).status == 200


def test_http_load_with_a_config_override_applies_it(
    explicit_server: RunningServer, explicit_http: httpclient.InferenceServerClient
) -> None:
    port = explicit_server.http_port
    override = explicit_http.get_model_config("tabular")
    override["max_batch_size"] = 4
    try:
        explicit_http.load_model("tabular", config=json.dumps(override))
        assert explicit_http.get_model_config("tabular")["max_batch_size"] == 4
        assert post_json(port, "/v2/models/tabular/infer", tabular_body(4)).status == 200
        assert_error(post_json(port, "/v2/models/tabular/infer", tabular_body(5)), 400, "5", "4")
        explicit_http.load_model("tabular")  # a plain load keeps the override, as Triton does
        assert explicit_http.get_model_config("tabular")["max_batch_size"] == 4
    finally:
        explicit_http.unload_model("tabular")  # an unload forgets it: back to config.pbtxt
        explicit_http.load_model("tabular")
    assert explicit_http.get_model_config("tabular")["max_batch_size"] == 64


def test_grpc_load_with_a_config_override_applies_it(explicit_grpc: grpcclient.InferenceServerClient) -> None:
    override = explicit_grpc.get_model_config("tabular", as_json=True)["config"]
    override["max_batch_size"] = 2
    try:
        explicit_grpc.load_model("tabular", config=json.dumps(override))
        assert explicit_grpc.get_model_config("tabular").config.max_batch_size == 2
    finally:
        explicit_grpc.unload_model("tabular")
        explicit_grpc.load_model("tabular")
    assert explicit_grpc.get_model_config("tabular").config.max_batch_size == 64


def uploaded_config(name: str) -> str:
    return json.dumps(
        {
            "name": name,
            "max_batch_size": 4,
            "input": [{"name": "input", "data_type": "TYPE_FP32", "dims": [4]}],
            "output": [{"name": "output", "data_type": "TYPE_FP32", "dims": [2]}],
        }
    )


def test_http_load_from_uploaded_files_serves_the_new_model(explicit_server: RunningServer, tmp_path: Path) -> None:
    port = explicit_server.http_port
    model_path = save(mlp([4, 2], seed=3), tmp_path / "model.onnx")
    parameters = {
        "config": uploaded_config("uploaded_http"),
        "file:1/model.onnx": base64.b64encode(model_path.read_bytes()).decode(),
    }
    response = post_json(port, "/v2/repository/models/uploaded_http/load", {"parameters": parameters})
    assert response.status == 200, response.body
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    body = {"inputs": [{"name": "input", "shape": [2, 4], "datatype": "FP32", "data": x.ravel().tolist()}]}
    answer = post_json(port, "/v2/models/uploaded_http/infer", body)
    assert answer.status == 200, answer.body
    expected = run_reference(model_path, {"input": x})["output"]
    np.testing.assert_allclose(np.asarray(answer.json()["outputs"][0]["data"]).reshape(2, 2), expected, rtol=1e-5)
    assert request(port, "POST", "/v2/repository/models/uploaded_http/unload").status == 200
    assert request(port, "GET", "/v2/models/uploaded_http/ready").status == 400


def test_grpc_load_from_uploaded_files_serves_the_new_model(
    explicit_grpc: grpcclient.InferenceServerClient, tmp_path: Path
) -> None:
    model_path = save(mlp([4, 2], seed=4), tmp_path / "model.onnx")
    explicit_grpc.load_model(
        "uploaded_grpc",
        config=uploaded_config("uploaded_grpc"),
        files={"file:1/model.onnx": model_path.read_bytes()},
    )
    assert explicit_grpc.is_model_ready("uploaded_grpc")
    x = np.ones((1, 4), dtype=np.float32)
    tensor = grpcclient.InferInput("input", [1, 4], "FP32")
    tensor.set_data_from_numpy(x)
    got = explicit_grpc.infer("uploaded_grpc", [tensor]).as_numpy("output")
    np.testing.assert_allclose(got, run_reference(model_path, {"input": x})["output"], rtol=1e-5)
    explicit_grpc.unload_model("uploaded_grpc")
    assert not explicit_grpc.is_model_ready("uploaded_grpc")


def test_uploaded_files_without_a_config_are_refused(explicit_server: RunningServer) -> None:
    parameters = {"file:1/model.onnx": base64.b64encode(b"whatever").decode()}
    response = post_json(explicit_server.http_port, "/v2/repository/models/orphan/load", {"parameters": parameters})
    assert_error(response, 400, "config")


def test_uploaded_files_may_not_leave_the_model_directory(explicit_server: RunningServer) -> None:
    parameters = {
        "config": uploaded_config("escape"),
        "file:../../escaped.onnx": base64.b64encode(b"whatever").decode(),
    }
    response = post_json(explicit_server.http_port, "/v2/repository/models/escape/load", {"parameters": parameters})
    assert_error(response, 400, "outside")


def test_a_reload_does_not_fail_requests_in_flight(
    explicit_server: RunningServer, explicit_http: httpclient.InferenceServerClient
) -> None:
    x = features(2)
    message = pb.ModelInferRequest(model_name="tabular")
    message.inputs.add(name="features", datatype="FP32", shape=[2, 8])
    message.raw_input_contents.append(x.tobytes())
    with grpc.insecure_channel(explicit_server.grpc_url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        stub.ModelInfer(message)  # connected before the burst
        futures = [stub.ModelInfer.future(message) for _ in range(40)]
        explicit_http.load_model("tabular")
        futures += [stub.ModelInfer.future(message) for _ in range(40)]
        answers = [f.result(timeout=60) for f in futures]
    assert all(a.model_name == "tabular" and len(a.raw_output_contents) == 2 for a in answers)


def test_unload_of_an_unknown_model_is_404(explicit_server: RunningServer) -> None:
    assert_error(request(explicit_server.http_port, "POST", "/v2/repository/models/nope/unload"), 404, "nope")


def test_load_of_an_unknown_model_is_404(explicit_server: RunningServer) -> None:
    assert_error(request(explicit_server.http_port, "POST", "/v2/repository/models/nope/load"), 404, "nope")


def test_grpc_load_of_an_unknown_model_is_not_found(explicit_grpc: grpcclient.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as info:
        explicit_grpc.load_model("nope")
    assert info.value.status() == "StatusCode.NOT_FOUND"


def test_load_with_an_invalid_config_override_reports_why(
    explicit_server: RunningServer, explicit_http: httpclient.InferenceServerClient
) -> None:
    bad = json.dumps({"name": "multi_io", "sequence_batching": {}})
    with pytest.raises(InferenceServerException) as info:
        explicit_http.load_model("multi_io", config=bad)
    assert info.value.status() == "400" and "sequence_batching" in info.value.message()
    explicit_http.load_model("multi_io")
    assert explicit_http.is_model_ready("multi_io")


# ---- a Triton-style repository -------------------------------------------------------------------


@pytest.fixture(scope="module")
def triton_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("triton-repo")
    write_triton_repository(root)
    return root


@pytest.fixture(scope="module")
def triton_server(triton_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    server = start_server(triton_repository, tmp_path_factory.mktemp("triton-server"))
    try:
        yield server
    finally:
        server.stop()


def triton_infer(port: int, model: str, x: np.ndarray, version: str = "") -> RawResponse:
    path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
    body = {"inputs": [{"name": "INPUT__0", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
    return post_json(port, path, body)


def triton_x(rows: int = 3) -> np.ndarray:
    return np.random.default_rng(11).standard_normal((rows, 4)).astype(np.float32)


def test_triton_repository_loads_unchanged_and_the_server_is_ready(triton_server: RunningServer) -> None:
    rows = request(triton_server.http_port, "POST", "/v2/repository/index").json()
    assert all(r["state"] == "READY" for r in rows), rows
    assert request(triton_server.http_port, "GET", "/v2/health/ready").status == 200


def test_triton_config_keeps_its_fields(triton_server: RunningServer) -> None:
    config = request(triton_server.http_port, "GET", f"/v2/models/{TRITON_MODEL}/config").json()
    assert config["max_batch_size"] == 16
    assert config["dynamic_batching"]["preferred_batch_size"] == [4, 8]
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 100
    assert config["dynamic_batching"]["default_queue_policy"]["max_queue_size"] == 128
    assert [(g["kind"], g["count"]) for g in config["instance_group"]] == [("KIND_CPU", 2)]
    assert config["parameters"] == {"intra_op_thread_count": {"string_value": "1"}}
    assert config["model_warmup"][0]["name"] == "random_batch"
    assert config["version_policy"] == {"latest": {"num_versions": 1}}


def test_triton_model_infers_over_http_with_the_latest_version(
    triton_server: RunningServer, triton_repository: Path
) -> None:
    x = triton_x()
    response = triton_infer(triton_server.http_port, TRITON_MODEL, x)
    assert response.status == 200, response.body
    payload = response.json()
    assert payload["model_version"] == "2"
    expected = run_reference(triton_mlp_path(triton_repository, TRITON_MODEL, 2), {"INPUT__0": x})["OUTPUT__0"]
    np.testing.assert_allclose(np.asarray(payload["outputs"][0]["data"]).reshape(3, 2), expected, rtol=1e-5)


def test_triton_model_infers_over_grpc(triton_server: RunningServer, triton_repository: Path) -> None:
    x = triton_x(8)
    client = grpcclient.InferenceServerClient(triton_server.grpc_url)
    try:
        tensor = grpcclient.InferInput("INPUT__0", [8, 4], "FP32")
        tensor.set_data_from_numpy(x)
        result = client.infer(TRITON_MODEL, [tensor])
    finally:
        client.close()
    expected = run_reference(triton_mlp_path(triton_repository, TRITON_MODEL, 2), {"INPUT__0": x})["OUTPUT__0"]
    np.testing.assert_allclose(result.as_numpy("OUTPUT__0"), expected, rtol=1e-5)


def test_version_policy_latest_serves_only_the_newest_version(triton_server: RunningServer) -> None:
    port = triton_server.http_port
    metadata = request(port, "GET", "/v2/models/triton_latest").json()
    assert metadata["versions"] == ["2"]
    assert request(port, "GET", "/v2/models/triton_latest/versions/2/ready").status == 200
    assert request(port, "GET", "/v2/models/triton_latest/versions/1/ready").status == 400
    assert triton_infer(port, "triton_latest", triton_x(), version="1").status == 404


def test_version_policy_all_serves_every_version(triton_server: RunningServer, triton_repository: Path) -> None:
    port = triton_server.http_port
    assert request(port, "GET", "/v2/models/triton_all").json()["versions"] == ["1", "2"]
    x = triton_x()
    for version in ("1", "2"):
        response = triton_infer(port, "triton_all", x, version=version)
        assert response.status == 200 and response.json()["model_version"] == version
        expected = run_reference(triton_mlp_path(triton_repository, "triton_all", int(version)), {"INPUT__0": x})[
            "OUTPUT__0"
        ]
        got = np.asarray(response.json()["outputs"][0]["data"]).reshape(3, 2)
        np.testing.assert_allclose(got, expected, rtol=1e-5)
    # No version in the request: the highest ready one answers.
    assert triton_infer(port, "triton_all", x).json()["model_version"] == "2"


def test_version_policy_specific_serves_only_the_listed_versions(triton_server: RunningServer) -> None:
    port = triton_server.http_port
    assert request(port, "GET", "/v2/models/triton_specific").json()["versions"] == ["1"]
    assert triton_infer(port, "triton_specific", triton_x()).json()["model_version"] == "1"
    assert request(port, "GET", "/v2/models/triton_specific/versions/2/ready").status == 400


def test_every_version_has_its_own_statistics(triton_server: RunningServer) -> None:
    port = triton_server.http_port
    triton_infer(port, "triton_all", triton_x(2), version="1")
    stats = request(port, "GET", "/v2/models/triton_all/stats").json()["model_stats"]
    assert [s["version"] for s in stats] == ["1", "2"]
    (one,) = request(port, "GET", "/v2/models/triton_all/versions/1/stats").json()["model_stats"]
    assert one["version"] == "1" and one["inference_count"] >= 2


def test_every_policy_variant_is_in_the_index(triton_server: RunningServer) -> None:
    rows = index_by_name(request(triton_server.http_port, "POST", "/v2/repository/index").json())
    assert set(rows) == {TRITON_MODEL, *TRITON_POLICIES}
    assert [r["version"] for r in rows["triton_all"]] == ["1", "2"]
    assert [r["version"] for r in rows["triton_specific"]] == ["1"]
