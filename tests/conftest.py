"""Shared fixtures: real `serve` processes on free loopback ports, stopped by the test that started them."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from serve.demo import write_demo_repository

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


@dataclass
class RunningServer:
    process: subprocess.Popen[bytes]
    http_port: int
    grpc_port: int
    log_path: Path

    @property
    def http_url(self) -> str:
        return f"{HOST}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{HOST}:{self.grpc_port}"

    @property
    def base(self) -> str:
        return f"http://{HOST}:{self.http_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 20.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def start_server(
    repository: Path | None,
    tmp_path: Path,
    *extra_args: str,
    env: dict[str, str] | None = None,
    wait_ready: bool = True,
) -> RunningServer:
    """Start `serve run` in a subprocess on free ports and wait until its HTTP port answers."""
    for _attempt in range(3):
        http_port, grpc_port = free_port(), free_port()
        log_path = tmp_path / f"server-{http_port}.log"
        args = [sys.executable, "-m", "serve", "run", "--http-port", str(http_port), "--grpc-port", str(grpc_port)]
        if repository is not None:
            args += ["--model-repository", str(repository)]
        args += list(extra_args)
        with log_path.open("wb") as log:
            process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        server = RunningServer(process, http_port, grpc_port, log_path)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if process.poll() is not None:
                break
            try:
                with urllib.request.urlopen(f"{server.base}/v2/health/live", timeout=1) as response:
                    if response.status == 200:
                        if wait_ready:
                            _wait_grpc(grpc_port, deadline)
                        return server
            except OSError:
                pass
            time.sleep(0.1)
        server.stop()
        if "address already in use" not in server.log():
            raise RuntimeError(f"server did not start:\n{server.log()}")
    raise RuntimeError("could not find free ports for the server")


@contextlib.contextmanager
def serving(repository: Path | None, tmp_path: Path, *extra_args: str) -> Iterator[RunningServer]:
    """A server for the duration of a ``with`` block (or a fixture's ``yield``), stopped however it ends."""
    server = start_server(repository, tmp_path, *extra_args)
    try:
        yield server
    finally:
        server.stop()


def _wait_grpc(port: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex((HOST, port)) == 0:
                return
        time.sleep(0.05)


@pytest.fixture(scope="session")
def demo_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("demo-repo")
    write_demo_repository(root)
    return root


@pytest.fixture(scope="module")
def demo_server(demo_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with serving(demo_repository, tmp_path_factory.mktemp("demo-server")) as server:
        yield server
