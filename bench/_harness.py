"""Shared pieces of the benchmarks: starting a server, pre-encoded request bodies, percentiles.

Benchmarks print ratios measured in the same run, because the machine is shared and noisy.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


@dataclass
class ServerProcess:
    process: subprocess.Popen[bytes]
    http_port: int
    grpc_port: int

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_server(
    repository: Path, *extra: str, env: dict[str, str] | None = None, log: Path | None = None
) -> ServerProcess:
    http_port, grpc_port = free_port(), free_port()
    out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115 - lives as long as the process
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
            "--log-level",
            "warning",
            *extra,
        ],
        stdout=out,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("server exited during start")
        try:
            with urllib.request.urlopen(f"http://{HOST}:{http_port}/v2/health/ready", timeout=1) as r:
                if r.status == 200:
                    return ServerProcess(process, http_port, grpc_port)
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("server did not become ready")


def http_json_body(name: str, array: np.ndarray, datatype: str) -> bytes:
    return orjson.dumps(
        {
            "inputs": [
                {"name": name, "shape": list(array.shape), "datatype": datatype, "data": array.reshape(-1).tolist()}
            ]
        }
    )


def http_binary_body(name: str, array: np.ndarray, datatype: str) -> tuple[bytes, int]:
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": name,
                    "shape": list(array.shape),
                    "datatype": datatype,
                    "parameters": {"binary_data_size": array.nbytes},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    )
    return header + array.tobytes(), len(header)


def grpc_request_bytes(model: str, name: str, array: np.ndarray, datatype: str) -> bytes:
    from serve.protocol import grpc_service_pb2 as pb

    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name=name, datatype=datatype, shape=list(array.shape))
    request.raw_input_contents.append(array.tobytes())
    return bytes(request.SerializeToString())


def percentiles_ms(samples_s: list[float]) -> tuple[float, float]:
    arr = np.asarray(samples_s) * 1000
    return float(np.percentile(arr, 50)), float(np.percentile(arr, 99))


def metric_sum(
    server: ServerProcess, name: str, where: Callable[[dict[str, str]], bool] = lambda labels: True
) -> float:
    """The sum of the server's ``name`` samples whose labels pass ``where`` (one scrape of /metrics)."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://{HOST}:{server.http_port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and where(sample.labels)
    )
