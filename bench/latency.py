"""Latency at concurrency 1 for the demo tabular model: raw onnxruntime in-process vs the server
over HTTP JSON, HTTP binary and gRPC, with each protocol's added latency over raw.

Clients send pre-encoded bodies on one persistent connection, so what is measured is the
server plus the transport, not the Python client's encoding. A second table repeats the
measurement with the official tritonclient for reference.

    python bench/latency.py [--requests 2000]
"""

from __future__ import annotations

import argparse
import http.client
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort

from bench._harness import (
    HOST,
    grpc_request_bytes,
    http_binary_body,
    http_json_body,
    percentiles_ms,
    start_server,
)
from serve.demo import write_demo_repository

MODEL, INPUT = "tabular", "features"


def timed(fn: Callable[[], object], n: int, warmup: int = 100) -> list[float]:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    n = args.requests
    x = np.random.default_rng(0).standard_normal((1, 8)).astype(np.float32)

    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp)
        write_demo_repository(repo)
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(str(repo / MODEL / "1" / "model.onnx"), so, providers=["CPUExecutionProvider"])
        results: dict[str, list[float]] = {"raw onnxruntime": timed(lambda: session.run(None, {INPUT: x}), n)}

        server = start_server(repo)
        try:
            conn = http.client.HTTPConnection(HOST, server.http_port)
            json_body = http_json_body(INPUT, x, "FP32")
            bin_body, header_len = http_binary_body(INPUT, x, "FP32")
            path = f"/v2/models/{MODEL}/infer"

            def post(body: bytes, headers: dict[str, str]) -> None:
                conn.request("POST", path, body, headers)
                response = conn.getresponse()
                response.read()
                assert response.status == 200, response.status

            results["HTTP JSON"] = timed(lambda: post(json_body, {"Content-Type": "application/json"}), n)
            bin_headers = {
                "Inference-Header-Content-Length": str(header_len),
                "Content-Type": "application/octet-stream",
            }
            results["HTTP binary"] = timed(lambda: post(bin_body, bin_headers), n)

            import grpc

            channel = grpc.insecure_channel(f"{HOST}:{server.grpc_port}")
            call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
            grpc_body = grpc_request_bytes(MODEL, INPUT, x, "FP32")
            results["gRPC"] = timed(lambda: call(grpc_body), n)

            import tritonclient.grpc as tgrpc
            import tritonclient.http as thttp

            hc = thttp.InferenceServerClient(f"{HOST}:{server.http_port}")
            hin = thttp.InferInput(INPUT, [1, 8], "FP32")
            hin.set_data_from_numpy(x, binary_data=True)
            gc = tgrpc.InferenceServerClient(f"{HOST}:{server.grpc_port}")
            gin = tgrpc.InferInput(INPUT, [1, 8], "FP32")
            gin.set_data_from_numpy(x)
            client_results = {
                "tritonclient.http (binary)": timed(lambda: hc.infer(MODEL, [hin]), n // 2),
                "tritonclient.grpc": timed(lambda: gc.infer(MODEL, [gin]), n // 2),
            }
            channel.close()
            conn.close()
        finally:
            server.stop()

    raw_p50, raw_p99 = percentiles_ms(results["raw onnxruntime"])
    print(f"model {MODEL}, 1 row, concurrency 1, {n} requests each (ms)")
    print(f"{'path':30s} {'p50':>8s} {'p99':>8s} {'+p50 vs raw':>12s} {'+p99 vs raw':>12s}")
    for name, samples in [*results.items(), *client_results.items()]:
        p50, p99 = percentiles_ms(samples)
        print(f"{name:30s} {p50:8.3f} {p99:8.3f} {p50 - raw_p50:12.3f} {p99 - raw_p99:12.3f}")


if __name__ == "__main__":
    main()
