"""A caller that gives up while its request is queued has it dropped before it runs; the other
callers are answered."""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from serve.modelgen import mlp, save
from tests.fixtures.local_servers import ThreadServer, serving_in_thread

# Held for up to 1 s waiting for a batch of 8, so requests sit in the queue long enough to be abandoned.
CONFIG = """
name: "held"
max_batch_size: 8
dynamic_batching { preferred_batch_size: [8] max_queue_delay_microseconds: 1000000 }
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadServer]:
    root = tmp_path_factory.mktemp("cancel")
    save(mlp([4, 8, 2], seed=2), root / "models" / "held" / "1" / "model.onnx")
    (root / "models" / "held" / "config.pbtxt").write_text(CONFIG)
    with serving_in_thread(root / "models", root) as running:
        yield running


def rows_inferred(server: ThreadServer) -> int:
    stats = httpclient.InferenceServerClient(server.http_url).get_inference_statistics("held")
    return int(stats["model_stats"][0]["inference_count"])


def grpc_infer(server: ThreadServer, rows: int, timeout_s: float | None = None) -> np.ndarray:
    inp = grpcclient.InferInput("input", [rows, 4], "FP32")
    inp.set_data_from_numpy(np.ones((rows, 4), np.float32))
    client = grpcclient.InferenceServerClient(server.grpc_url)
    return client.infer("held", [inp], client_timeout=timeout_s).as_numpy("output")


def test_grpc_caller_that_gives_up_is_dropped_and_its_batch_mates_answered(server: ThreadServer) -> None:
    before = rows_inferred(server)
    with ThreadPoolExecutor(2) as pool:
        patient = pool.submit(grpc_infer, server, 2)
        impatient = pool.submit(grpc_infer, server, 3, 0.3)
        with pytest.raises(InferenceServerException, match="Deadline"):
            impatient.result(timeout=10)
        answer = patient.result(timeout=10)

    assert answer.shape == (2, 2)
    assert rows_inferred(server) - before == 2  # the 3 rows of the caller who left never ran


def test_http_client_that_disconnects_is_dropped_before_running(server: ThreadServer) -> None:
    before = rows_inferred(server)
    body = json.dumps({"inputs": [{"name": "input", "shape": [3, 4], "datatype": "FP32", "data": [1.0] * 12}]})
    conn = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=5)
    conn.request("POST", "/v2/models/held/infer", body)
    time.sleep(0.2)
    conn.sock.close()  # gone while its request waits for a batch

    answer = grpc_infer(server, 1)  # joins the queue after it; runs when the hold expires

    assert answer.shape == (1, 2)
    assert rows_inferred(server) - before == 1
