"""bench/rollout_routing.py's arithmetic and its repository, without running a load."""

from __future__ import annotations

from pathlib import Path

import yaml

from bench.rollout_routing import (
    PLAIN,
    ROUTED,
    SHADOWED,
    TARGETS,
    Outcomes,
    RoutingPoint,
    outcomes_by_model,
    round_plan,
    summary,
    write_repository,
)


def _point(
    round_index: int, protocol: str, target: str, rate: float, cpu_us: float, p99: float, concurrency: int = 64
) -> RoutingPoint:
    shadow_runs = 990 if target == SHADOWED else 0
    return RoutingPoint(round_index, protocol, target, concurrency, rate, p99, cpu_us, 0, 1000, shadow_runs)


def _row(text: str, protocol: str) -> list[str]:
    (line,) = [line for line in text.splitlines() if line.startswith(protocol)]
    return line.split()


def test_summary_gives_routed_to_plain_throughput_as_the_ratio_of_the_rounds_means_and_each_rounds_own() -> None:
    points = [
        _point(0, "http", PLAIN, 1000, 100, 10),
        _point(0, "http", ROUTED, 980, 102, 10),
        _point(0, "http", SHADOWED, 900, 120, 11),
        _point(1, "http", PLAIN, 3000, 100, 10),
        _point(1, "http", ROUTED, 2960, 104, 10),
        _point(1, "http", SHADOWED, 2900, 120, 13),
    ]

    row = _row(summary(points), "http")

    assert row[1:4] == ["2,000", "1,970", "98.5%"]
    assert row[4:6] == ["98%", "99%"]


def test_summary_gives_cpu_per_request_routed_to_plain() -> None:
    points = [_point(0, "grpc", t, 1000, cpu, 10) for t, cpu in zip(TARGETS, (500, 510, 600), strict=True)]

    row = _row(summary(points), "grpc")

    assert row[5:8] == ["500", "510", "102.0%"]  # one round: one per-round ratio before them


def test_summary_gives_the_shadowed_client_p99_as_a_ratio_of_plain_and_the_share_the_shadow_ran() -> None:
    points = [_point(0, "grpc", t, 1000, 100, p99) for t, p99 in zip(TARGETS, (10.0, 10.0, 11.0), strict=True)]

    row = _row(summary(points), "grpc")

    assert row[8:12] == ["10.00", "11.00", "1.10x", "110%"]
    assert row[12:] == ["99.0%", "0"]


def test_summary_has_a_line_per_protocol() -> None:
    points = [_point(0, protocol, t, 1000, 100, 10) for protocol in ("grpc", "http") for t in TARGETS]

    lines = summary(points).splitlines()

    assert [line.split()[0] for line in lines[1:-1]] == ["grpc", "http"]


def test_summary_compares_the_shadowed_p99_with_plain_at_the_shadowed_concurrency() -> None:
    points = [
        _point(0, "http", PLAIN, 3000, 100, 40.0, concurrency=64),
        _point(0, "http", ROUTED, 2940, 100, 41.0, concurrency=64),
        _point(0, "http", PLAIN, 2000, 100, 2.0, concurrency=8),
        _point(0, "http", SHADOWED, 1900, 100, 2.2, concurrency=8),
    ]

    text = summary(points)

    row = _row(text, "http")
    assert row[1:4] == ["3,000", "2,940", "98.0%"]  # plain at 64, not the mean with plain at 8
    assert row[8:11] == ["2.00", "2.20", "1.10x"]
    assert text.splitlines()[-1] == "req/s and CPU at concurrency [64], p99 at concurrency [8]"


def test_outcomes_count_client_requests_failures_and_shadow_runs_per_model() -> None:
    exposition = (
        "# TYPE serve_requests counter\n"
        'serve_requests_total{model="routed",version="1",protocol="grpc",outcome="success",role="primary"} 90\n'
        'serve_requests_total{model="routed",version="2",protocol="grpc",outcome="success",role="candidate"} 8\n'
        'serve_requests_total{model="routed",version="2",protocol="http",outcome="model_error",role="candidate"} 2\n'
        'serve_requests_total{model="routed",version="1",protocol="grpc",outcome="cancelled",role="primary"} 5\n'
        'serve_requests_total{model="shadowed",version="2",protocol="grpc",outcome="model_error",role="shadow"} 3\n'
        'serve_requests_total{model="shadowed",version="2",protocol="grpc",outcome="success",role="shadow"} 97\n'
        'serve_requests_total{model="plain",version="2",protocol="http",outcome="success",role=""} 100\n'
    )

    outcomes = outcomes_by_model(exposition)

    assert outcomes["routed"] == Outcomes(answered=105, failed=2, shadow=0)
    assert outcomes["shadowed"] == Outcomes(answered=0, failed=0, shadow=100)  # the shadow's errors reach no client
    assert outcomes["plain"] == Outcomes(answered=100, failed=0, shadow=0)


def test_every_point_is_measured_first_and_last_over_as_many_rounds_as_points() -> None:
    plans = [round_plan(r, 64, 8) for r in range(4)]

    assert {plan[0] for plan in plans} == {plan[-1] for plan in plans} == set(plans[0])
    assert set(plans[0]) == {(PLAIN, 64), (ROUTED, 64), (PLAIN, 8), (SHADOWED, 8)}


def test_plain_is_measured_once_a_round_when_both_concurrencies_are_the_same() -> None:
    assert sorted(round_plan(0, 64, 64)) == sorted((t, 64) for t in TARGETS)


def test_repository_has_the_same_two_versions_under_each_target_and_a_rollout_where_one_is_wanted(
    tmp_path: Path,
) -> None:
    write_repository(tmp_path)

    for version in (1, 2):
        files = {(tmp_path / t / str(version) / "model.onnx").read_bytes() for t in TARGETS}
        assert len(files) == 1
    assert not (tmp_path / PLAIN / "rollout.yaml").exists()
    routed = yaml.safe_load((tmp_path / ROUTED / "rollout.yaml").read_text())
    shadowed = yaml.safe_load((tmp_path / SHADOWED / "rollout.yaml").read_text())
    assert (routed["primary"], routed["candidates"]) == (1, [{"version": 2, "percent": 100}])
    assert (shadowed["primary"], shadowed["shadow"]) == (1, {"version": 2, "percent": 100})
    assert routed["gates"]["max_error_rate_increase"] is None and routed["gates"]["max_p99_ratio"] is None
