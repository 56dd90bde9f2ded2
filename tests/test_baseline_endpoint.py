"""The server serves the baseline.json each model version bins against (HTTP `…/baseline`, gRPC
`serve.monitoring.Monitoring/Baseline`): its exact bytes with their SHA-256, or NOT_FOUND saying why
there is none to use."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from serve.baseline.model import file_sha256
from serve.protocol import serve_monitoring_pb2 as pb
from serve.protocol import serve_monitoring_pb2_grpc as pb_grpc
from tests.fixtures.clients import request
from tests.fixtures.local_servers import ThreadServer, serving_in_thread
from tests.fixtures.monitoring import MODEL, write_model
from tests.fixtures.replicas import write_model_with_baseline


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("baselines")
    write_model_with_baseline(root)
    write_model(root, "no_baseline")
    stale = write_model_with_baseline(root, "stale")
    write_model(root, "stale", seed=1)  # new weights: the ONNX file is not the one the baseline was computed for
    broken = write_model(root, "unreadable")
    (broken / "baseline.json").write_text("{not json")
    other = write_model(root, "other_model")
    shutil.copy(root / MODEL / "baseline.json", other / "baseline.json")  # names model churn
    assert (stale / "baseline.json").is_file()
    return root


@pytest.fixture(scope="module")
def server(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadServer]:
    with serving_in_thread(repository, tmp_path_factory.mktemp("baseline-server")) as running:
        yield running


def test_http_serves_the_exact_bytes_of_the_versions_baseline_with_their_sha256(
    repository: Path, server: ThreadServer
) -> None:
    response = request(server.http_port, "GET", f"/v2/models/{MODEL}/versions/1/baseline")
    on_disk = (repository / MODEL / "baseline.json").read_bytes()
    assert response.status == 200
    assert response.headers["content-type"] == "application/json"
    assert response.body == on_disk
    assert response.headers["serve-baseline-sha256"] == hashlib.sha256(on_disk).hexdigest()
    assert response.headers["serve-model-sha256"] == file_sha256(repository / MODEL / "1" / "model.onnx")
    assert response.headers["serve-model-version"] == "1"


def test_the_served_sha256_is_the_one_the_input_statistics_bin_against(server: ThreadServer) -> None:
    served = request(server.http_port, "GET", f"/v2/models/{MODEL}/baseline")
    stats = request(server.http_port, "GET", f"/v2/models/{MODEL}/input-stats").json()
    assert served.headers["serve-baseline-sha256"] == stats["baseline"]["sha256"]


def test_http_without_a_version_serves_the_default_versions_baseline(server: ThreadServer) -> None:
    default = request(server.http_port, "GET", f"/v2/models/{MODEL}/baseline")
    explicit = request(server.http_port, "GET", f"/v2/models/{MODEL}/versions/1/baseline")
    assert (default.status, default.body, default.headers["serve-model-version"]) == (200, explicit.body, "1")


@pytest.mark.parametrize(
    ("model", "why"),
    [
        ("no_baseline", "has no baseline: there is no baseline.json"),
        ("stale", "baseline.json is stale for this model"),
        ("unreadable", "baseline.json is unreadable: baseline.json: not valid JSON"),
        ("other_model", "does not fit the model: baseline is for model 'churn', not 'other_model'"),
    ],
)
def test_http_answers_404_saying_why_a_version_has_no_baseline_to_use(
    server: ThreadServer, model: str, why: str
) -> None:
    response = request(server.http_port, "GET", f"/v2/models/{model}/versions/1/baseline")
    assert response.status == 404
    assert why in response.error()
    assert "serve-baseline-sha256" not in response.headers


def test_http_answers_404_for_an_unknown_model_or_version(server: ThreadServer) -> None:
    assert "not found" in request(server.http_port, "GET", "/v2/models/nope/baseline").error()
    response = request(server.http_port, "GET", f"/v2/models/{MODEL}/versions/7/baseline")
    assert response.status == 404 and "version 7 is not found" in response.error()


def _grpc_baseline(server: ThreadServer, model: str, version: str = "") -> pb.BaselineResponse:
    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = pb_grpc.MonitoringStub(channel)
        response: pb.BaselineResponse = stub.Baseline(pb.BaselineRequest(model_name=model, model_version=version))
        return response


def test_grpc_serves_the_same_bytes_and_hashes_as_http(server: ThreadServer) -> None:
    http = request(server.http_port, "GET", f"/v2/models/{MODEL}/versions/1/baseline")
    answer = _grpc_baseline(server, MODEL)
    assert (answer.model_name, answer.model_version) == (MODEL, "1")
    assert answer.baseline == http.body
    assert answer.sha256 == http.headers["serve-baseline-sha256"] == hashlib.sha256(answer.baseline).hexdigest()
    assert answer.model_sha256 == http.headers["serve-model-sha256"]
    assert json.loads(answer.baseline)["format"] == "serve.baseline"


def test_grpc_answers_not_found_saying_why(server: ThreadServer) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        _grpc_baseline(server, "stale", "1")
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    assert "stale for this model" in (raised.value.details() or "")


def test_without_statistics_the_server_says_it_reads_no_baselines(repository: Path, tmp_path: Path) -> None:
    with serving_in_thread(repository, tmp_path, "--no-stats") as running:
        response = request(running.http_port, "GET", f"/v2/models/{MODEL}/baseline")
    assert response.status == 404
    assert "runs --no-stats and reads none" in response.error()
