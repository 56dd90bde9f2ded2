"""Acceptance tests of the `serve` command line, each run as a real subprocess."""

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
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from serve.demo import MODELS, write_demo_repository
from tests.fixtures.repositories import write_broken_models
from tests.fixtures.servers import HOST, free_port, start_server

SERVE = [sys.executable, "-m", "serve"]
RUN_FLAGS = [
    "--model-repository",
    "--host",
    "--http-port",
    "--grpc-port",
    "--log-level",
    "--model-control-mode",
    "--load-model",
    "--max-request-bytes",
]


def serve(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SERVE, *args], capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )


@pytest.fixture()
def taken_port() -> Iterator[int]:
    """A loopback port with a listener on it for the duration of the test."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind((HOST, 0))
        holder.listen()
        yield holder.getsockname()[1]


def wait_until_live(port: int, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "server exited before answering"
        try:
            with urllib.request.urlopen(f"http://{HOST}:{port}/v2/health/live", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"nothing answered on port {port}")


# ---- help ----------------------------------------------------------------------------------------


def test_serve_is_installed_as_a_console_script() -> None:
    (script,) = entry_points(group="console_scripts", name="serve")
    assert script.value == "serve.cli:main"


def test_serve_help_lists_the_commands() -> None:
    result = serve("--help")
    assert result.returncode == 0
    for command in ("run", "validate", "demo-repo"):
        assert command in result.stdout


def test_serve_run_help_lists_every_flag_and_its_environment_variable() -> None:
    result = serve("run", "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())  # argparse wraps lines
    for flag in RUN_FLAGS:
        assert flag in text, flag
    for env in ("SERVE_HTTP_PORT", "SERVE_GRPC_PORT", "SERVE_HOST", "SERVE_MODEL_REPOSITORY"):
        assert env in text, env
    assert "default 127.0.0.1" in text


def test_serve_validate_help_describes_the_ci_gate() -> None:
    result = serve("validate", "--help")
    assert result.returncode == 0
    assert "--model-repository" in result.stdout


# ---- demo-repo -----------------------------------------------------------------------------------


def test_demo_repo_writes_every_demo_model(tmp_path: Path) -> None:
    target = tmp_path / "demo"
    result = serve("demo-repo", str(target))
    assert result.returncode == 0, result.stderr
    for name in MODELS:
        assert (target / name / "1" / "model.onnx").is_file(), name
        assert name in result.stdout
    assert (target / "tabular" / "config.pbtxt").is_file()


# ---- validate ------------------------------------------------------------------------------------


def test_validate_passes_the_demo_repository_and_prints_a_table(demo_repository: Path) -> None:
    result = serve("validate", "--model-repository", str(demo_repository))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["MODEL", "VERSION", "STATUS", "REASON"]
    rows = {line.split()[0]: line.split()[2] for line in lines[1:] if line.strip() and line.split()[0] in MODELS}
    assert rows == dict.fromkeys(MODELS, "OK")


def test_validate_fails_a_repository_with_a_broken_model_and_names_it(tmp_path: Path) -> None:
    write_demo_repository(tmp_path)
    reasons = write_broken_models(tmp_path)
    result = serve("validate", "--model-repository", str(tmp_path))
    assert result.returncode == 1
    failed = {line.split()[0]: line for line in result.stdout.splitlines() if " FAILED " in line}
    assert set(failed) == set(reasons)
    for name, fragment in reasons.items():
        assert fragment in failed[name], failed[name]


def test_validate_fails_an_empty_repository(tmp_path: Path) -> None:
    result = serve("validate", "--model-repository", str(tmp_path))
    assert result.returncode == 1
    assert "no models" in result.stdout


def test_validate_rejects_a_missing_directory(tmp_path: Path) -> None:
    result = serve("validate", "--model-repository", str(tmp_path / "absent"))
    assert result.returncode != 0
    assert "absent" in result.stderr and "Traceback" not in result.stderr


# ---- run -----------------------------------------------------------------------------------------


def test_run_honours_serve_environment_variables(demo_repository: Path, tmp_path: Path) -> None:
    http_port, grpc_port = free_port(), free_port()
    env = {
        **os.environ,
        "SERVE_HTTP_PORT": str(http_port),
        "SERVE_GRPC_PORT": str(grpc_port),
        "SERVE_MODEL_REPOSITORY": str(demo_repository),
    }
    with (tmp_path / "server.log").open("wb") as log:
        process = subprocess.Popen([*SERVE, "run"], stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        wait_until_live(http_port, process)
        with urllib.request.urlopen(f"http://{HOST}:{http_port}/v2/models/tabular/ready", timeout=5) as response:
            assert response.status == 200
        with socket.create_connection((HOST, grpc_port), timeout=5):
            pass
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)


def test_a_flag_wins_over_its_environment_variable(demo_repository: Path, tmp_path: Path) -> None:
    server = start_server(demo_repository, tmp_path, env={"SERVE_HTTP_PORT": "1"})
    try:
        with urllib.request.urlopen(f"{server.base}/v2/health/live", timeout=5) as response:
            assert response.status == 200
    finally:
        server.stop()


def test_an_invalid_environment_value_is_refused_clearly() -> None:
    result = serve("run", env={"SERVE_HTTP_PORT": "eighty"})
    assert result.returncode == 2
    assert "SERVE_HTTP_PORT='eighty' is not valid: expected an integer" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_enumeration_names_its_flag_and_the_allowed_values() -> None:
    result = serve("run", "--model-control-mode", "sometimes")
    assert result.returncode == 2
    assert "--model-control-mode='sometimes': 'sometimes' is not one of none, poll, explicit" in result.stderr


def test_sigterm_stops_the_server_with_exit_code_zero(demo_repository: Path, tmp_path: Path) -> None:
    server = start_server(demo_repository, tmp_path)
    assert server.stop() == 0
    assert "stopped" in server.log()


def _load_check_running(pid: int) -> bool:
    """Whether a thread of ``pid`` has a load-check child (``serve.runtime.probe``) running."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            for child in (task / "children").read_text().split():
                if b"serve.runtime.probe" in Path(f"/proc/{child}/cmdline").read_bytes():
                    return True
    return False


def test_sigterm_while_models_load_stops_the_server_with_exit_code_zero(demo_repository: Path, tmp_path: Path) -> None:
    # The load check runs each model in a child first: while one exists, the server is still starting.
    args = ["--model-repository", str(demo_repository), "--model-load-check", "child"]
    args += ["--http-port", str(free_port()), "--grpc-port", str(free_port())]
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "serve", "run", *args], stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while process.poll() is None and time.monotonic() < deadline and not _load_check_running(process.pid):
            time.sleep(0.005)
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert "stopped" in log.read_text()


def test_sigint_stops_the_server_with_exit_code_zero(demo_repository: Path, tmp_path: Path) -> None:
    server = start_server(demo_repository, tmp_path)
    server.process.send_signal(signal.SIGINT)
    assert server.process.wait(30) == 0


def test_a_taken_http_port_fails_with_a_clear_message(demo_repository: Path, taken_port: int) -> None:
    result = serve(
        "run",
        "--model-repository",
        str(demo_repository),
        "--http-port",
        str(taken_port),
        "--grpc-port",
        str(free_port()),
    )
    assert result.returncode != 0
    assert f"HTTP on {HOST}:{taken_port}" in result.stderr
    assert "address already in use" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_taken_grpc_port_fails_with_a_clear_message(demo_repository: Path, taken_port: int) -> None:
    result = serve(
        "run",
        "--model-repository",
        str(demo_repository),
        "--http-port",
        str(free_port()),
        "--grpc-port",
        str(taken_port),
    )
    assert result.returncode != 0
    assert f"gRPC on {HOST}:{taken_port}" in result.stderr
    assert "address already in use" in result.stderr
    assert "Traceback" not in result.stderr


def test_run_rejects_a_missing_repository_directory(tmp_path: Path) -> None:
    result = serve("run", "--model-repository", str(tmp_path / "absent"), "--http-port", str(free_port()))
    assert result.returncode != 0
    assert "absent" in result.stderr and "Traceback" not in result.stderr


def test_load_model_naming_an_absent_model_fails_clearly(demo_repository: Path) -> None:
    result = serve(
        "run",
        "--model-repository",
        str(demo_repository),
        "--model-control-mode",
        "explicit",
        "--load-model",
        "absent_model",
        "--http-port",
        str(free_port()),
        "--grpc-port",
        str(free_port()),
    )
    assert result.returncode == 1
    assert "absent_model" in result.stderr and "Traceback" not in result.stderr


def test_run_without_a_repository_serves_the_demo_models(tmp_path: Path) -> None:
    server = start_server(None, tmp_path, env={"XDG_CACHE_HOME": str(tmp_path / "cache")})
    try:
        with urllib.request.urlopen(f"{server.base}/v2/health/ready", timeout=5) as response:
            assert response.status == 200
        for name in MODELS:
            with urllib.request.urlopen(f"{server.base}/v2/models/{name}/ready", timeout=5) as response:
                assert response.status == 200, name
    finally:
        assert server.stop() == 0
    assert any((tmp_path / "cache" / "serve").iterdir())


def test_monitor_with_a_missing_baseline_file_fails_clearly(tmp_path: Path) -> None:
    missing = tmp_path / "baseline.json"

    result = serve("monitor", "--server", "http://127.0.0.1:1", "--baseline", str(missing), "--port", "0")

    assert result.returncode == 2
    assert f"{missing}: cannot read the baseline (no such file or directory)" in result.stderr
    assert "Traceback" not in result.stderr


def test_monitor_on_a_taken_port_fails_clearly(tmp_path: Path, taken_port: int) -> None:
    result = serve("monitor", "--server", "http://127.0.0.1:1", "--host", HOST, "--port", str(taken_port), timeout=60)

    assert result.returncode != 0
    assert str(taken_port) in result.stderr and "Traceback" not in result.stderr, result.stderr
