"""The gates judge a candidate against the primary with confidence bounds: a clear regression fails,
equal arms fail no more often than 1 − confidence (seeded simulations), and too few samples wait."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from serve.rollout.comparison import OutputComparison
from serve.rollout.evidence import ArmEvidence
from serve.rollout.gates import (
    DISAGREEMENT,
    ERROR_RATE,
    P99_RATIO,
    GateResult,
    difference_interval,
    disagreement_gate,
    error_rate_gate,
    judge,
    overall,
    p99_ratio_gate,
    wilson_interval,
)
from serve.rollout.latency import BUCKETS, EDGES_NS, LatencyHistogram
from serve.rollout.spec import Gates

GATES = Gates(min_requests=200, confidence=0.95, max_error_rate_increase=0.02, max_p99_ratio=1.5)
SIMULATIONS = 1_000


def _errors(n: int, errors: int) -> ArmEvidence:
    return ArmEvidence(requests=n, errors=errors)


def _histogram(durations_s: np.ndarray) -> LatencyHistogram:
    buckets = np.searchsorted(np.asarray(EDGES_NS), (durations_s * 1e9).astype(np.int64), side="right")
    return LatencyHistogram.from_counts(np.bincount(buckets, minlength=BUCKETS).tolist())


def _simulated_error_verdicts(p_primary: float, p_candidate: float, n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    primary = rng.binomial(n, p_primary, SIMULATIONS)
    candidate = rng.binomial(n, p_candidate, SIMULATIONS)
    return [
        error_rate_gate(_errors(n, int(e1)), _errors(n, int(e2)), GATES, 0.02).verdict
        for e1, e2 in zip(primary, candidate, strict=True)
    ]


# ---- the error-rate gate ------------------------------------------------------------------------


def test_wilson_interval_matches_the_published_example() -> None:
    # Newcombe (1998), table I: 81 of 263 -> 0.2553 to 0.3662 at 95 %.
    assert wilson_interval(81, 263, 1.959964) == pytest.approx((0.2553, 0.3662), abs=1e-4)


def test_difference_interval_matches_newcombes_method_10() -> None:
    # Newcombe (1998), table II, example (a): 56/70 − 48/80 -> 0.0524 to 0.3339 at 95 %.
    assert difference_interval((48, 80), (56, 70), 1.959964) == pytest.approx((0.0524, 0.3339), abs=1e-4)


def test_difference_interval_stays_finite_with_no_errors_at_all() -> None:
    low, high = difference_interval((0, 200), (0, 200), 1.645)
    assert -0.03 < low < 0 < high < 0.03


def test_a_candidate_failing_20_percent_against_1_percent_fails_at_200_requests() -> None:
    verdicts = _simulated_error_verdicts(0.01, 0.20, 200, seed=20)
    assert verdicts.count("failing") == SIMULATIONS


@pytest.mark.parametrize("rate", [0.0, 0.01, 0.05, 0.20])
def test_equal_error_rates_fail_in_at_most_5_percent_of_simulations(rate: float) -> None:
    verdicts = _simulated_error_verdicts(rate, rate, 200, seed=int(rate * 100) + 1)
    assert verdicts.count("failing") <= 0.05 * SIMULATIONS


def test_equal_low_error_rates_never_fail_at_200_requests() -> None:
    assert "failing" not in _simulated_error_verdicts(0.01, 0.01, 200, seed=3)


def test_error_rate_is_inconclusive_below_min_requests_however_bad() -> None:
    result = error_rate_gate(_errors(199, 0), _errors(199, 199), GATES, 0.02)
    assert result.verdict == "inconclusive"
    assert result.value == 1.0


def test_equal_error_rates_with_many_requests_are_healthy() -> None:
    result = error_rate_gate(_errors(20_000, 200), _errors(20_000, 200), GATES, 0.02)
    assert result.verdict == "healthy"
    assert result.high is not None and result.high < 0.02


def test_error_rate_result_carries_value_threshold_and_samples() -> None:
    result = error_rate_gate(_errors(400, 4), _errors(300, 60), GATES, 0.02)
    assert (result.name, result.threshold, result.samples_primary, result.samples_candidate) == (
        ERROR_RATE,
        0.02,
        400,
        300,
    )
    assert result.value == pytest.approx(0.19)


def test_error_rate_without_requests_has_no_value() -> None:
    result = error_rate_gate(_errors(0, 0), _errors(10, 1), GATES, 0.02)
    assert (result.value, result.verdict) == (None, "inconclusive")


# ---- the p99 latency ratio gate ----------------------------------------------------------------


def _latencies(scale_s: float, n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).lognormal(math.log(scale_s), 0.3, n)


def test_a_candidate_50ms_slower_fails_the_p99_ratio_at_200_requests() -> None:
    primary, candidate = _histogram(_latencies(0.002, 200, 1)), _histogram(0.050 + _latencies(0.002, 200, 2))
    result = p99_ratio_gate(primary, candidate, GATES, 1.5)
    assert result.verdict == "failing"
    assert result.value is not None and result.value > 5


def test_p99_ratio_value_is_within_a_few_percent_of_the_samples_ratio() -> None:
    a, b = _latencies(0.002, 20_000, 3), _latencies(0.003, 20_000, 4)
    result = p99_ratio_gate(_histogram(a), _histogram(b), GATES, 1.5)
    assert result.value == pytest.approx(float(np.quantile(b, 0.99) / np.quantile(a, 0.99)), rel=0.05)


def test_equal_latencies_never_fail_the_p99_ratio_in_seeded_simulations() -> None:
    verdicts = [
        p99_ratio_gate(
            _histogram(_latencies(0.002, 500, 2 * s)), _histogram(_latencies(0.002, 500, 2 * s + 1)), GATES, 1.5
        )
        for s in range(200)
    ]
    assert "failing" not in {r.verdict for r in verdicts}


def test_equal_latencies_with_many_samples_are_healthy() -> None:
    result = p99_ratio_gate(
        _histogram(_latencies(0.002, 20_000, 5)), _histogram(_latencies(0.002, 20_000, 6)), GATES, 1.5
    )
    assert result.verdict == "healthy"


def test_p99_ratio_is_inconclusive_below_min_requests() -> None:
    result = p99_ratio_gate(_histogram(_latencies(0.002, 100, 7)), _histogram(_latencies(1.0, 100, 8)), GATES, 1.5)
    assert (result.name, result.verdict) == (P99_RATIO, "inconclusive")


def test_p99_ratio_without_samples_has_no_value() -> None:
    result = p99_ratio_gate(LatencyHistogram(), _histogram(_latencies(0.002, 300, 9)), GATES, 1.5)
    assert (result.value, result.verdict, result.samples_primary, result.samples_candidate) == (
        None,
        "inconclusive",
        0,
        300,
    )


# ---- the disagreement gate ---------------------------------------------------------------------


def test_disagreement_well_above_the_threshold_fails() -> None:
    result = disagreement_gate(OutputComparison(1_000, 300), GATES, 0.05)
    assert (result.name, result.value, result.verdict) == (DISAGREEMENT, 0.3, "failing")


def test_disagreement_well_below_the_threshold_is_healthy() -> None:
    assert disagreement_gate(OutputComparison(1_000, 10), GATES, 0.05).verdict == "healthy"


def test_disagreement_is_inconclusive_below_min_requests_rows() -> None:
    assert disagreement_gate(OutputComparison(100, 100), GATES, 0.05).verdict == "inconclusive"


# ---- all gates together ------------------------------------------------------------------------


def test_judge_runs_only_the_gates_switched_on() -> None:
    arm = ArmEvidence(300, 0)
    off = replace(GATES, max_p99_ratio=None, max_disagreement=0.1)
    assert [r.name for r in judge(arm, arm, None, off)] == [ERROR_RATE]
    assert [r.name for r in judge(arm, arm, OutputComparison(10, 0), off)] == [ERROR_RATE, DISAGREEMENT]


def _result(verdict: str) -> GateResult:
    return GateResult("g", 0.0, 1.0, 500, 500, verdict)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("verdicts", "expected"),
    [
        (("healthy", "failing"), "failing"),
        (("inconclusive", "failing"), "failing"),
        (("healthy", "inconclusive"), "inconclusive"),
        (("healthy", "healthy"), "healthy"),
    ],
)
def test_overall_verdict_fails_on_any_gate_and_is_healthy_only_when_all_are(
    verdicts: tuple[str, ...], expected: str
) -> None:
    assert overall(tuple(_result(v) for v in verdicts), (500, 500), 200) == expected


def test_overall_without_gates_waits_for_min_requests() -> None:
    assert overall((), (500, 100), 200) == "inconclusive"
    assert overall((), (500, 200), 200) == "healthy"
