"""The benches' arithmetic (bench/grpc_servicer, bench/grpc_balancing) and the reading of py-spy output,
without running a load."""

from __future__ import annotations

from pathlib import Path

from bench._pyspy import NATIVE, summarize
from bench.grpc_balancing import Point as BalancingPoint
from bench.grpc_balancing import summary as balancing_summary
from bench.grpc_servicer import Point, frontend_summary, summary


def _point(target: str, concurrency: int, rate: float) -> Point:
    return Point(target, concurrency, rate, 1.0, 2.0, 0, 100.0, 1.0)


def test_summary_gives_the_servicer_to_echo_ratio_per_concurrency_and_round() -> None:
    points = [
        _point("echo", 64, 1000),
        _point("servicer", 64, 800),
        _point("echo", 64, 3000),
        _point("servicer", 64, 1200),
    ]

    row = summary(points, [64]).splitlines()[1].split()

    assert row[:4] == ["64", "2,000", "1,000", "50.0%"]  # the ratio of the means
    assert row[4:6] == ["80%", "40%"]  # and each round's own


def test_profile_summary_counts_native_time_under_the_loop_and_each_function(tmp_path: Path) -> None:
    raw = tmp_path / "raw.txt"
    loop = "thread (1): MainThread;_run_module_as_main (<frozen runpy>:198);main (serve/cli.py:133)"
    raw.write_text(
        f"{loop} 6\n"
        f"{loop};submit (serve/batching/batcher.py:10) 3\n"
        f"{loop};submit (serve/batching/batcher.py:12);run (onnx.py:4) 1\n"
        "thread (2): Thread-1 (_poll_wrapper);Thread.run (threading.py:982) 10\n"
    )

    text = summarize(raw)

    assert "50.0%  MainThread" in text and "50.0%  Thread-1 (_poll_wrapper)" in text
    assert f"60.0%  {NATIVE}" in text
    assert "30.0%  submit (serve/batching/batcher.py)" in text  # innermost, per function
    assert "40.0%  submit (serve/batching/batcher.py)" in text  # anywhere in the stack


def test_frontend_summary_compares_each_front_end_with_echo_and_native_with_aio() -> None:
    points = [_point("echo", 64, 1000), _point("servicer", 64, 500), _point("native", 64, 2000)]

    lines = frontend_summary(points, [64], ["aio", "native"]).splitlines()

    assert lines[1].split()[:4] == ["64", "aio", "500", "0.50"]
    assert lines[2].split()[:4] == ["64", "native", "2,000", "2.00"]
    assert lines[3].split() == ["64", "native:aio", "4.00x"]


def test_balancing_summary_gives_each_target_as_a_ratio_of_one_worker() -> None:
    points = [
        BalancingPoint("1 worker", 1000.0, {"worker": 1.0}, 200.0),
        BalancingPoint("envoy x2", 600.0, {"worker 1": 0.5, "worker 2": 0.5, "envoy": 0.5}, 500.0),
        BalancingPoint("1 worker", 3000.0, {"worker": 1.0}, 200.0),
        BalancingPoint("envoy x2", 1800.0, {"worker 1": 0.5, "worker 2": 0.5, "envoy": 0.5}, 300.0),
    ]

    rows = [line.split() for line in balancing_summary(points).splitlines()[1:]]

    assert rows[0][-4:] == ["2,000", "1.00", "200", "1.00"]
    assert rows[1][-4:] == ["1,200", "0.60", "400", "2.00"]  # mean req/s, median CPU per call
