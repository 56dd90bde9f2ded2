"""The server records what each model is fed, and serves it at .../input-stats (HTTP) and
serve.monitoring.Monitoring/InputStats (gRPC)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from serve.protocol import serve_monitoring_pb2 as mpb
from serve.protocol import serve_monitoring_pb2_grpc as mpb_grpc
from tests.fixtures.local_servers import ThreadServer, serving_in_thread


@pytest.fixture(scope="module")
def server(demo_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadServer]:
    with serving_in_thread(demo_repository, tmp_path_factory.mktemp("stats-server")) as running:
        yield running


def fetch(server: ThreadServer, path: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(server.base + path, timeout=10) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def wait_for_rows(server: ThreadServer, rows: int) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while True:
        status, document = fetch(server, "/v2/models/tabular/input-stats")
        assert status == 200, document
        if document["total"]["rows"] >= rows or time.monotonic() > deadline:
            return document
        time.sleep(0.05)


def test_input_statistics_match_numpy_for_traffic_over_both_protocols(server: ThreadServer) -> None:
    rng = np.random.default_rng(5)
    batches = [rng.normal(3.0, 2.0, (n, 8)).astype(np.float32) for n in (5, 1, 7, 3)]
    http = httpclient.InferenceServerClient(server.http_url)
    grpc_client = grpcclient.InferenceServerClient(server.grpc_url)
    for i, x in enumerate(batches):
        module, client = (httpclient, http) if i % 2 else (grpcclient, grpc_client)
        inp = module.InferInput("features", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        client.infer("tabular", [inp])
    sent = np.concatenate(batches)

    document = wait_for_rows(server, len(sent))

    assert document["total"]["rows"] == len(sent)
    for column in range(8):
        block = document["total"]["features"][f"features[{column}]"]
        values = sent[:, column].astype(np.float64)
        assert block["count"] == len(values)
        assert block["mean"] == pytest.approx(values.mean(), rel=1e-6)
        assert block["m2"] / block["n"] == pytest.approx(values.var(), rel=1e-5)
        assert block["min"] == pytest.approx(values.min())
        assert block["max"] == pytest.approx(values.max())


def test_outputs_are_recorded_as_prediction_statistics(server: ThreadServer) -> None:
    x = np.ones((4, 8), np.float32)
    inp = httpclient.InferInput("features", [4, 8], "FP32")
    inp.set_data_from_numpy(x)
    httpclient.InferenceServerClient(server.http_url).infer("tabular", [inp])

    document = wait_for_rows(server, 4)

    roles = {feature["role"] for feature in document["features"]}
    assert roles == {"input", "output"}


def test_grpc_monitoring_service_returns_the_same_document(server: ThreadServer) -> None:
    with grpc.insecure_channel(server.grpc_url) as channel:
        reply = mpb_grpc.MonitoringStub(channel).InputStats(mpb.InputStatsRequest(model_name="tabular"))
    document = json.loads(reply.json)
    _, over_http = fetch(server, "/v2/models/tabular/input-stats")

    assert document["instance"] == over_http["instance"]
    assert document["format"] == "serve.input-stats"


def test_since_returns_only_newer_windows(server: ThreadServer) -> None:
    _, first = fetch(server, "/v2/models/tabular/input-stats")

    _, later = fetch(server, f"/v2/models/tabular/input-stats?since={first['seq']}")

    assert later["since"] == first["seq"]
    assert all(window["seq"] > first["seq"] for window in later["windows"])


def test_unknown_model_input_stats_is_404(server: ThreadServer) -> None:
    status, body = fetch(server, "/v2/models/nope/input-stats")

    assert status == 404
    assert "nope" in body["error"]


def test_bad_since_is_400(server: ThreadServer) -> None:
    status, body = fetch(server, "/v2/models/tabular/input-stats?since=-3")

    assert status == 400
    assert "since" in body["error"]


def test_statistics_can_be_switched_off(demo_repository: Path, tmp_path: Path) -> None:
    with serving_in_thread(demo_repository, tmp_path, "--no-stats") as running:
        status, body = fetch(running, "/v2/models/tabular/input-stats")

    assert status == 404
    assert "no-stats" in body["error"]


def send(server: ThreadServer, x: np.ndarray) -> None:
    inp = httpclient.InferInput("features", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    httpclient.InferenceServerClient(server.http_url).infer("tabular", [inp])


def document_with(server: ThreadServer, rows: int) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while True:
        _, document = fetch(server, "/v2/models/tabular/input-stats")
        if document["total"]["rows"] >= rows or time.monotonic() > deadline:
            return document
        time.sleep(0.05)


def test_two_servers_merged_equal_one_server_fed_both_streams(demo_repository: Path, tmp_path: Path) -> None:
    from serve.input_stats.schema import merge

    rng = np.random.default_rng(9)
    first, second = rng.normal(0, 1, (12, 8)).astype(np.float32), rng.normal(2, 3, (20, 8)).astype(np.float32)
    for name in ("a", "b", "both"):
        (tmp_path / name).mkdir()
    with (
        serving_in_thread(demo_repository, tmp_path / "a") as a,
        serving_in_thread(demo_repository, tmp_path / "b") as b,
        serving_in_thread(demo_repository, tmp_path / "both") as both,
    ):
        send(a, first)
        send(b, second)
        send(both, first)
        send(both, second)
        merged = merge([document_with(a, 12), document_with(b, 20)])
        single = document_with(both, 32)

    for column in range(8):
        name = f"features[{column}]"
        got, want = merged["total"]["features"][name], single["total"]["features"][name]
        assert got["count"] == want["count"] == 32
        assert got["mean"] == pytest.approx(want["mean"], rel=1e-9)
        assert got["m2"] == pytest.approx(want["m2"], rel=1e-9)
        assert (got["min"], got["max"]) == (want["min"], want["max"])


def test_a_restarted_server_is_detected_and_not_double_counted(demo_repository: Path, tmp_path: Path) -> None:
    from serve.input_stats.schema import merge

    x = np.ones((5, 8), np.float32)
    (tmp_path / "first").mkdir()
    (tmp_path / "second").mkdir()
    with serving_in_thread(demo_repository, tmp_path / "first") as running:
        send(running, x)
        before = document_with(running, 5)
        again = document_with(running, 5)  # polled twice: must not count twice
    with serving_in_thread(demo_repository, tmp_path / "second") as running:
        send(running, x[:3])
        after = document_with(running, 3)

    merged = merge([before, again, after])

    assert before["instance"]["id"] != after["instance"]["id"]
    assert merged["total"]["features"]["features[0]"]["count"] == 8
    assert merged["restarts"]
