"""Concurrent requests over HTTP and gRPC are coalesced into micro-batches, and every caller
gets exactly its own rows back."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from serve.modelgen import mlp, save
from tests.fixtures.local_servers import ThreadServer, serving_in_thread

CALLERS = 16
# Held until 8 rows are queued (or 2 s pass): concurrent callers are batched deterministically.
CONFIG = """
name: "mlp"
max_batch_size: 32
dynamic_batching { preferred_batch_size: [8] max_queue_delay_microseconds: 2000000 }
instance_group [{ count: 1 kind: KIND_CPU }]
"""


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("batching-repo")
    save(mlp([16, 32, 4], seed=3), root / "mlp" / "1" / "model.onnx")
    (root / "mlp" / "config.pbtxt").write_text(CONFIG)
    return root


@pytest.fixture(scope="module")
def server(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadServer]:
    with serving_in_thread(repository, tmp_path_factory.mktemp("batching-server")) as running:
        yield running


@pytest.fixture(scope="module")
def reference(repository: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(repository / "mlp" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])


def caller_inputs() -> list[np.ndarray]:
    rng = np.random.default_rng(11)
    return [rng.standard_normal((1 + i % 2, 16)).astype(np.float32) for i in range(CALLERS)]


def counts(server: ThreadServer) -> tuple[int, int]:
    stats = httpclient.InferenceServerClient(server.http_url).get_inference_statistics("mlp")["model_stats"][0]
    return int(stats["inference_count"]), int(stats["execution_count"])


def http_call(server: ThreadServer, x: np.ndarray) -> np.ndarray:
    client = httpclient.InferenceServerClient(server.http_url)
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return client.infer("mlp", [inp]).as_numpy("output")


def grpc_call(client: grpcclient.InferenceServerClient, x: np.ndarray) -> np.ndarray:
    inp = grpcclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return client.infer("mlp", [inp]).as_numpy("output")


def assert_batched(before: tuple[int, int], after: tuple[int, int], rows: int) -> None:
    inferred, executed = after[0] - before[0], after[1] - before[1]
    assert inferred == rows
    assert executed < inferred, f"{inferred} rows ran in {executed} executions: not batched"


def test_concurrent_http_requests_are_batched_and_each_caller_gets_its_rows(
    server: ThreadServer, reference: ort.InferenceSession
) -> None:
    inputs = caller_inputs()
    before = counts(server)

    with ThreadPoolExecutor(CALLERS) as pool:
        results = list(pool.map(lambda x: http_call(server, x), inputs))

    for x, y in zip(inputs, results, strict=True):
        np.testing.assert_allclose(y, reference.run(None, {"input": x})[0], rtol=1e-5, atol=1e-6)
    assert_batched(before, counts(server), sum(len(x) for x in inputs))


def test_concurrent_grpc_requests_are_batched_and_each_caller_gets_its_rows(
    server: ThreadServer, reference: ort.InferenceSession
) -> None:
    inputs = caller_inputs()
    client = grpcclient.InferenceServerClient(server.grpc_url)
    before = counts(server)

    with ThreadPoolExecutor(CALLERS) as pool:
        results = list(pool.map(lambda x: grpc_call(client, x), inputs))

    for x, y in zip(inputs, results, strict=True):
        np.testing.assert_allclose(y, reference.run(None, {"input": x})[0], rtol=1e-5, atol=1e-6)
    assert_batched(before, counts(server), sum(len(x) for x in inputs))


def test_http_and_grpc_requests_share_batches(server: ThreadServer, reference: ort.InferenceSession) -> None:
    inputs = caller_inputs()
    client = grpcclient.InferenceServerClient(server.grpc_url)
    before = counts(server)

    def call(i_x: tuple[int, np.ndarray]) -> np.ndarray:
        i, x = i_x
        return http_call(server, x) if i % 2 else grpc_call(client, x)

    with ThreadPoolExecutor(CALLERS) as pool:
        results = list(pool.map(call, enumerate(inputs)))

    for x, y in zip(inputs, results, strict=True):
        np.testing.assert_allclose(y, reference.run(None, {"input": x})[0], rtol=1e-5, atol=1e-6)
    assert_batched(before, counts(server), sum(len(x) for x in inputs))


def test_batch_statistics_are_recorded_per_batch_size(server: ThreadServer) -> None:
    with ThreadPoolExecutor(CALLERS) as pool:
        list(pool.map(lambda x: http_call(server, x), caller_inputs()))

    stats = httpclient.InferenceServerClient(server.http_url).get_inference_statistics("mlp")["model_stats"][0]

    sizes = {entry["batch_size"] for entry in stats["batch_stats"]}
    executions = sum(entry["compute_infer"]["count"] for entry in stats["batch_stats"])

    assert max(sizes) > 1
    assert executions == stats["execution_count"]
    assert stats["inference_stats"]["queue"]["count"] == stats["inference_stats"]["success"]["count"]
