"""SIGTERM drains: requests already accepted are answered before the server exits."""

from __future__ import annotations

import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from serve.modelgen import mlp, save
from tests.fixtures.servers import start_server

# Requests are held up to 1.5 s waiting for a batch of 8 that never fills: they are queued when
# the signal arrives.
CONFIG = """
name: "held"
max_batch_size: 8
dynamic_batching { preferred_batch_size: [8] max_queue_delay_microseconds: 1500000 }
"""


def test_sigterm_answers_queued_requests_over_both_protocols_then_exits_cleanly(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    save(mlp([4, 8, 2], seed=2), repo / "held" / "1" / "model.onnx")
    (repo / "held" / "config.pbtxt").write_text(CONFIG)
    server = start_server(repo, tmp_path)
    x = np.ones((1, 4), np.float32)

    def over_http() -> np.ndarray:
        inp = httpclient.InferInput("input", [1, 4], "FP32")
        inp.set_data_from_numpy(x)
        return httpclient.InferenceServerClient(server.http_url).infer("held", [inp]).as_numpy("output")

    def over_grpc() -> np.ndarray:
        inp = grpcclient.InferInput("input", [1, 4], "FP32")
        inp.set_data_from_numpy(x)
        return grpcclient.InferenceServerClient(server.grpc_url).infer("held", [inp]).as_numpy("output")

    try:
        with ThreadPoolExecutor(2) as pool:
            pending = [pool.submit(over_http), pool.submit(over_grpc)]
            time.sleep(0.5)  # both are queued, waiting for a batch of 8
            server.process.send_signal(signal.SIGTERM)
            answers = [future.result(timeout=20) for future in pending]
        exit_code = server.process.wait(20)
    finally:
        server.stop()

    assert [a.shape for a in answers] == [(1, 2), (1, 2)]
    np.testing.assert_allclose(answers[0], answers[1])
    assert exit_code == 0
