"""bench/run.py in a tiny configuration: one model, two protocols, concurrency 1 and 2, 2 s a point."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from tests.fixtures.servers import RunningServer

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run_matrix(results: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    command = [sys.executable, "-m", "bench.run", "--results-dir", str(results), *args]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    (out,) = results.iterdir()
    return done, out


@pytest.fixture(scope="module")
def matrix(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    """One run shared by the tests below: it starts its own server on free loopback ports."""
    results = tmp_path_factory.mktemp("bench-results")
    return run_matrix(
        results, "--models", "tabular", "--protocols", "http,grpc", "--concurrency", "1,2",
        "--duration", "2", "--warmup", "0.2", "--ceiling-seconds", "0.3",
    )  # fmt: skip


def points(out: Path) -> list[dict[str, Any]]:
    return json.loads((out / "report.json").read_text())["points"]


def test_report_plot_and_server_log_are_written(matrix: tuple[Any, Path]) -> None:
    _, out = matrix
    written = {p.name for p in out.iterdir()}
    assert {"report.md", "report.json", "throughput_vs_p99.png", "server.log"} <= written
    assert (out / "throughput_vs_p99.png").read_bytes().startswith(PNG_MAGIC)


def test_every_point_of_the_matrix_is_measured(matrix: tuple[Any, Path]) -> None:
    _, out = matrix
    measured = {(p["model"], p["protocol"], p["concurrency"]) for p in points(out)}
    assert measured == {("tabular", proto, c) for proto in ("http", "grpc") for c in (1, 2)}


def test_client_numbers_are_sane(matrix: tuple[Any, Path]) -> None:
    _, out = matrix
    for p in points(out):
        assert p["failures"] == 0, p["errors"]
        assert p["requests_per_s"] > 0 and p["rows_per_s"] == pytest.approx(p["requests_per_s"])
        lat = p["latency_ms"]
        assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]


def test_server_deltas_cover_exactly_the_measured_requests(matrix: tuple[Any, Path]) -> None:
    _, out = matrix
    for p in points(out):
        server = p["server"]
        # Snapshots are taken with nothing in flight; allow one request per connection of slack in case the
        # server counts a request just after answering it.
        assert abs(server["inference_count"] - p["requests"]) <= p["concurrency"]
        assert server["avg_batch_size"] >= 1
        assert server["avg_queue_us"] is not None and server["avg_queue_us"] >= 0


def test_onnxruntime_ceiling_is_measured_for_the_model(matrix: tuple[Any, Path]) -> None:
    _, out = matrix
    ceiling = json.loads((out / "report.json").read_text())["ceiling"]["tabular"]
    assert ceiling["best_rows_per_s"] > 0 and ceiling["best_batch"] in (1, 8, 64)


def test_markdown_report_has_a_row_per_point_and_the_ceiling(matrix: tuple[Any, Path]) -> None:
    _, out = matrix
    text = (out / "report.md").read_text()
    assert "Raw onnxruntime ceiling" in text
    assert sum(line.startswith("| tabular | ") for line in text.splitlines()) == 1 + 4  # ceiling row + points


def test_progress_is_printed_one_line_per_point(matrix: tuple[Any, Path]) -> None:
    done, _ = matrix
    progress = [line for line in done.stdout.splitlines() if line.startswith("[")]
    assert [line.split("]")[0] for line in progress] == ["[1/4", "[2/4", "[3/4", "[4/4"]
    assert all("req/s" in line for line in progress)


def test_running_server_is_benchmarked_by_url(
    demo_server: RunningServer, demo_repository: Path, tmp_path: Path
) -> None:
    _, out = run_matrix(
        tmp_path, "--url", demo_server.base, "--grpc-port", str(demo_server.grpc_port),
        "--model-repository", str(demo_repository), "--models", "multi_io", "--protocols", "http-json",
        "--concurrency", "1", "--duration", "1", "--warmup", "0", "--ceiling-seconds", "0",
    )  # fmt: skip
    (point,) = points(out)
    assert point["requests"] > 0 and point["failures"] == 0
    assert "server_cpu_pct" not in point  # not our process: its CPU time is not ours to read
