"""Tracing as SREs run it: `serve run --trace` exporting OTLP to a collector (tests/fixtures/otlp_receiver.py), with
two workers and SIGTERM, with the collector down, and OTEL_TRACES_EXPORTER=console for debugging."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

import grpc
import pytest

from serve.protocol import grpc_service_pb2 as pb
from serve.protocol import grpc_service_pb2_grpc as pb_grpc
from tests.fixtures.otlp_receiver import OtlpReceiver, unused_endpoint
from tests.fixtures.servers import RunningServer, free_port, start_server

HTTP_ROUTE = "POST /v2/models/{model_name}/infer"
GRPC_METHOD = "inference.GRPCInferenceService/ModelInfer"
BODY = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}).encode()


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    from serve.modelgen import mlp, save

    root = tmp_path / "models"
    save(mlp([4, 8, 2], seed=1, input_name="x", output_name="y"), root / "m" / "1" / "model.onnx")
    return root


def post(server: RunningServer, headers: dict[str, str] | None = None) -> int:
    request = urllib.request.Request(
        f"{server.base}/v2/models/m/infer", BODY, {"content-type": "application/json", **(headers or {})}
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        return int(answer.status)


def grpc_infer(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 4]).contents.fp32_contents.extend([1, 2, 3, 4])
    stub.ModelInfer(request, timeout=10)


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_two_workers_export_every_request_span_and_lose_none_on_sigterm(
    repository: Path, tmp_path: Path, protocol: Literal["http/protobuf", "grpc"]
) -> None:
    with OtlpReceiver() as otlp:
        server = start_server(repository, tmp_path, "--workers", "2", "--trace", env=otlp.env(protocol))
        sent = 0
        try:
            # A connection per call, from the workers' one accept queue: until both workers have answered some.
            with ThreadPoolExecutor(8) as pool:
                for _ in range(20):
                    assert list(pool.map(lambda _: post(server), range(100))) == [200] * 100
                    sent += 100
                    if len({span.resource.get("process.pid") for span in otlp.spans()}) == 2:
                        break
                    time.sleep(0.2)  # the batch span processors export every 100 ms here
            channel = grpc.insecure_channel(server.grpc_url)
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            for _ in range(50):
                grpc_infer(stub)
            sent += 50
            channel.close()
        finally:
            # Spans of the last requests are still in the workers' batch processors: SIGTERM must flush them.
            assert server.stop() == 0
        servers = otlp.wait_for(lambda s: s.name in (HTTP_ROUTE, GRPC_METHOD), timeout_s=10, count=sent)
        assert len(servers) == sent
        assert len({span.resource.get("process.pid") for span in servers}) == 2
        assert {span.service_name for span in servers} == {"serve"}


def test_a_traced_request_and_its_batch_reach_the_collector_linked(repository: Path, tmp_path: Path) -> None:
    with OtlpReceiver() as otlp:
        server = start_server(repository, tmp_path, "--trace", env=otlp.env("http/protobuf"))
        try:
            parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
            assert post(server, {"traceparent": parent}) == 200
            (request_span,) = otlp.wait_for(lambda s: s.name == HTTP_ROUTE, timeout_s=10)
            (batch,) = otlp.wait_for(lambda s: s.name == "batch m", timeout_s=10)
        finally:
            server.stop()
    assert request_span.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert request_span.parent_span_id == "00f067aa0ba902b7"
    assert batch.links == ((request_span.trace_id, request_span.span_id),)


def test_a_collector_that_is_down_never_fails_a_request_nor_holds_the_exit(repository: Path, tmp_path: Path) -> None:
    env = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": unused_endpoint() + "/v1/traces", "OTEL_BSP_SCHEDULE_DELAY": "50"}
    server = start_server(repository, tmp_path, "--trace", env=env)
    try:
        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(lambda _: post(server), range(300)))
    finally:
        stopping = time.monotonic()
        code = server.stop()
        stopped_s = time.monotonic() - stopping
    assert statuses == [200] * 300
    assert code == 0
    assert stopped_s < 15, f"SIGTERM took {stopped_s:.1f} s with the collector down"


def test_a_collector_that_hangs_never_fails_a_request(repository: Path, tmp_path: Path) -> None:
    with OtlpReceiver() as otlp:
        otlp.hang()
        server = start_server(repository, tmp_path, "--trace", env=otlp.env("http/protobuf"))
        try:
            with ThreadPoolExecutor(8) as pool:
                statuses = list(pool.map(lambda _: post(server), range(300)))
        finally:
            code = server.stop()
            otlp.heal()
    assert statuses == [200] * 300 and code == 0


def test_the_console_exporter_prints_each_span_as_json_on_stdout(repository: Path, tmp_path: Path) -> None:
    http_port, grpc_port = free_port(), free_port()
    stdout = tmp_path / "stdout.txt"
    with stdout.open("wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "serve",
                "run",
                "--model-repository",
                str(repository),
                "--http-port",
                str(http_port),
                "--grpc-port",
                str(grpc_port),
            ],  # fmt: skip
            stdout=out,
            stderr=subprocess.DEVNULL,
            env={**_environment(), "OTEL_TRACES_EXPORTER": "console", "OTEL_BSP_SCHEDULE_DELAY": "50"},
        )
    server = RunningServer(process, http_port, grpc_port, stdout)
    try:
        _wait_live(server)
        assert post(server) == 200
    finally:
        assert server.stop() == 0
    names = [json.loads(block)["name"] for block in _json_objects(stdout.read_text())]
    assert HTTP_ROUTE in names and "batch m" in names


def _environment() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}


def _wait_live(server: RunningServer) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{server.base}/v2/health/ready", timeout=1) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("the server did not become ready")


def _json_objects(text: str) -> list[str]:
    """The SDK's console exporter prints each span as indented JSON, one after another."""
    decoder = json.JSONDecoder()
    found: list[str] = []
    position = 0
    while True:
        start = text.find("{", position)
        if start < 0:
            return found
        _, end = decoder.raw_decode(text, start)
        found.append(text[start:end])
        position = end
