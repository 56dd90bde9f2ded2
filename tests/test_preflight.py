"""`serve run` checks what it can before any model loads (serve/preflight.py): a taken port, an
unusable TLS or token file, or a model directory given as the repository stops the start at once,
with one line on stderr saying what to do and exit status 1 (2 for a file that is not there, a
settings error), before any model is loaded. An empty repository starts, with a warning that names
it."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.servers import HOST, free_port, serving


@pytest.fixture
def held_port() -> Iterator[int]:
    """A port another process would hold: bound and listening until the test ends."""
    with socket.create_server((HOST, 0)) as sock:
        yield int(sock.getsockname()[1])


def _serve_run(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "serve", "run", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def _ports(http: int | None = None, grpc: int | None = None) -> list[str]:
    return ["--http-port", str(http or free_port()), "--grpc-port", str(grpc or free_port())]


def _assert_stopped_before_loading(done: subprocess.CompletedProcess[str], *wanted: str, status: int = 1) -> None:
    # Exactly one line: no model-load line came before it, and no traceback after.
    assert done.returncode == status, done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("serve run: ")
    for text in wanted:
        assert text in line


def test_a_taken_http_port_stops_the_start_before_any_model_loads(demo_repository: Path, held_port: int) -> None:
    done = _serve_run("--model-repository", str(demo_repository), *_ports(http=held_port))
    _assert_stopped_before_loading(
        done, f"cannot listen for HTTP on {HOST}:{held_port}: address already in use", "--http-port"
    )


def test_a_taken_grpc_port_stops_the_start_before_any_model_loads(demo_repository: Path, held_port: int) -> None:
    done = _serve_run("--model-repository", str(demo_repository), *_ports(grpc=held_port))
    _assert_stopped_before_loading(
        done, f"cannot listen for gRPC on {HOST}:{held_port}: address already in use", "--grpc-port"
    )


def test_one_port_for_two_listeners_stops_the_start(demo_repository: Path) -> None:
    port = free_port()
    done = _serve_run("--model-repository", str(demo_repository), *_ports(http=port, grpc=port))
    _assert_stopped_before_loading(done, f"--grpc-port {port} is also --http-port")


def test_a_missing_tls_certificate_file_stops_the_start(demo_repository: Path, tmp_path: Path) -> None:
    (tmp_path / "key.pem").write_text("")
    tls = ["--tls-cert-file", str(tmp_path / "cert.pem"), "--tls-key-file", str(tmp_path / "key.pem")]
    done = _serve_run("--model-repository", str(demo_repository), *_ports(), *tls)
    # A path that is no file is refused with the other settings (exit status 2, as for any bad flag).
    _assert_stopped_before_loading(done, "--tls-cert-file", "cert.pem", status=2)


def test_a_tls_certificate_that_is_no_certificate_stops_the_start(demo_repository: Path, tmp_path: Path) -> None:
    for name in ("cert.pem", "key.pem"):
        (tmp_path / name).write_text("not PEM\n")
    tls = ["--tls-cert-file", str(tmp_path / "cert.pem"), "--tls-key-file", str(tmp_path / "key.pem")]
    done = _serve_run("--model-repository", str(demo_repository), *_ports(), *tls)
    _assert_stopped_before_loading(done, "not a PEM certificate chain and its matching key")


def test_a_missing_token_file_stops_the_start(demo_repository: Path, tmp_path: Path) -> None:
    tokens = ["--auth-tokens-file", str(tmp_path / "tokens.txt")]
    done = _serve_run("--model-repository", str(demo_repository), *_ports(), *tokens)
    _assert_stopped_before_loading(done, "--auth-tokens-file", "tokens.txt", status=2)


def test_a_token_file_that_cannot_be_read_as_tokens_stops_the_start(demo_repository: Path, tmp_path: Path) -> None:
    (tmp_path / "tokens.txt").write_text("alice admin\n")
    tokens = ["--auth-tokens-file", str(tmp_path / "tokens.txt")]
    done = _serve_run("--model-repository", str(demo_repository), *_ports(), *tokens)
    _assert_stopped_before_loading(done, "tokens.txt line 1: expected 3 fields")


def test_a_model_directory_given_as_the_repository_is_told_to_point_at_its_parent(demo_repository: Path) -> None:
    done = _serve_run("--model-repository", str(demo_repository / "tabular"), *_ports())
    _assert_stopped_before_loading(
        done, "is one model's directory", f"point --model-repository at its parent, {demo_repository}"
    )


def test_an_empty_repository_serves_with_a_warning_naming_it(tmp_path: Path) -> None:
    empty = tmp_path / "models"
    empty.mkdir()
    with serving(empty, tmp_path) as server:
        log = server.log()
    assert f"WARNING serve.preflight: SERVING NO MODEL: --model-repository {empty} holds no model directory" in log
