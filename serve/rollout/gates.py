"""The gates: pure functions that judge a candidate (or shadow) arm against the primary on the same
window of evidence. Each answers a ``GateResult``: the measured value, its threshold, the samples
per arm and a verdict:

- **failing** when the evidence shows, at the gates' ``confidence``, that the candidate is past the
  threshold (the one-sided bound on the *good* side is already past it);
- **healthy** when it shows it is within (the bound on the *bad* side is within);
- **inconclusive** otherwise, and always below ``min_requests`` samples per arm.

So equal arms are never failing by chance more often than 1 − confidence, and a small sample waits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

from serve.rollout.comparison import OutputComparison
from serve.rollout.evidence import ArmEvidence, Labelled
from serve.rollout.latency import LatencyHistogram
from serve.rollout.spec import Gates, Verdict

ERROR_RATE = "error_rate"
P99_RATIO = "p99_ratio"
DISAGREEMENT = "disagreement"
ACCURACY_DROP = "accuracy_drop"
_P99 = 0.99


@dataclass(frozen=True, slots=True)
class GateResult:
    name: str
    value: float | None  # the point estimate; None without samples to measure it
    threshold: float
    samples_primary: int
    samples_candidate: int
    verdict: Verdict
    low: float | None = None  # the confidence bounds the verdict came from
    high: float | None = None


def _z(confidence: float) -> float:
    return NormalDist().inv_cdf(confidence)


def _verdict(low: float, high: float, threshold: float, enough: bool) -> Verdict:
    if not enough:
        return "inconclusive"
    if low > threshold:
        return "failing"
    if high < threshold:
        return "healthy"
    return "inconclusive"


def wilson_interval(successes: int, n: int, z: float) -> tuple[float, float]:
    """Wilson's score interval for a proportion (Wilson 1927): unlike Wald's it stays inside [0, 1] and
    keeps its coverage at proportions near 0, where error rates live. ``z`` per side."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def difference_interval(primary: tuple[int, int], candidate: tuple[int, int], z: float) -> tuple[float, float]:
    """Bounds on p_candidate − p_primary from (events, trials) pairs: Newcombe's hybrid score interval,
    his method 10, built from the two Wilson intervals (R. G. Newcombe, "Interval estimation for the
    difference between independent proportions", Statistics in Medicine 17:873–890, 1998). It keeps
    close to nominal coverage with zero events and small p, where the Wald interval (even with a
    continuity correction) collapses or overshoots. ``z`` per side: each bound is one-sided at Φ(z)."""
    (e1, n1), (e2, n2) = primary, candidate
    p1, p2 = e1 / n1, e2 / n2
    l1, u1 = wilson_interval(e1, n1, z)
    l2, u2 = wilson_interval(e2, n2, z)
    d = p2 - p1
    return d - math.sqrt((p2 - l2) ** 2 + (u1 - p1) ** 2), d + math.sqrt((u2 - p2) ** 2 + (p1 - l1) ** 2)


def error_rate_gate(primary: ArmEvidence, candidate: ArmEvidence, gates: Gates, threshold: float) -> GateResult:
    """The candidate's error rate minus the primary's, failing when its lower bound exceeds ``threshold``."""
    return _difference_gate(
        ERROR_RATE, (primary.errors, primary.requests), (candidate.errors, candidate.requests), gates, threshold
    )


def accuracy_gate(primary: Labelled, candidate: Labelled, gates: Gates, threshold: float) -> GateResult:
    """The primary's accuracy minus the candidate's on the rows labelled through the feedback API, failing when
    its lower bound exceeds ``threshold``: the error-rate gate's interval on the share of wrong predictions."""
    return _difference_gate(
        ACCURACY_DROP, (primary.wrong, primary.rows), (candidate.wrong, candidate.rows), gates, threshold
    )


def _difference_gate(
    name: str, primary: tuple[int, int], candidate: tuple[int, int], gates: Gates, threshold: float
) -> GateResult:
    """The candidate's share of bad events minus the primary's, from (events, trials), with Newcombe's bounds."""
    (e1, n1), (e2, n2) = primary, candidate
    if n1 == 0 or n2 == 0:
        return GateResult(name, None, threshold, n1, n2, "inconclusive")
    low, high = difference_interval(primary, candidate, _z(gates.confidence))
    enough = min(n1, n2) >= gates.min_requests
    return GateResult(name, e2 / n2 - e1 / n1, threshold, n1, n2, _verdict(low, high, threshold, enough), low, high)


def _ratio(numerator: float, denominator: float) -> float:
    if denominator > 0:
        return numerator / denominator
    return math.inf if numerator > 0 else 1.0


def p99_ratio_gate(
    primary: LatencyHistogram, candidate: LatencyHistogram, gates: Gates, threshold: float
) -> GateResult:
    """The candidate's p99 latency over the primary's. The value is the ratio of the two p99s
    interpolated inside their buckets. The verdict uses bounds: each p99 gets a distribution-free
    interval from order statistics widened to its buckets' outer edges (latency.py), at a Bonferroni
    split of the confidence (each side 1 − (1 − confidence)/2, since two intervals must both hold),
    and the ratio's lower bound is candidate-low / primary-high, its upper bound candidate-high /
    primary-low. Failing needs the lower bound past the threshold, healthy the upper bound within."""
    n1, n2 = primary.total, candidate.total
    p1, p2 = primary.quantile_s(_P99), candidate.quantile_s(_P99)
    if p1 is None or p2 is None:
        return GateResult(P99_RATIO, None, threshold, n1, n2, "inconclusive")
    z = _z(1 - (1 - gates.confidence) / 2)
    bounds1, bounds2 = primary.quantile_bounds_s(_P99, z), candidate.quantile_bounds_s(_P99, z)
    assert bounds1 is not None and bounds2 is not None  # both histograms have samples
    low, high = _ratio(bounds2[0], bounds1[1]), _ratio(bounds2[1], bounds1[0])
    enough = min(n1, n2) >= gates.min_requests
    return GateResult(P99_RATIO, _ratio(p2, p1), threshold, n1, n2, _verdict(low, high, threshold, enough), low, high)


def disagreement_gate(comparison: OutputComparison, gates: Gates, threshold: float) -> GateResult:
    """The share of compared rows whose predicted class differs, with Wilson bounds at ``confidence``."""
    rows = comparison.rows
    value = comparison.disagreement()
    if value is None:
        return GateResult(DISAGREEMENT, None, threshold, 0, 0, "inconclusive")
    low, high = wilson_interval(comparison.disagreements, rows, _z(gates.confidence))
    verdict = _verdict(low, high, threshold, rows >= gates.min_requests)
    return GateResult(DISAGREEMENT, value, threshold, rows, rows, verdict, low, high)


def judge(
    primary: ArmEvidence,
    candidate: ArmEvidence,
    comparison: OutputComparison | None,
    gates: Gates,
    labels: tuple[Labelled, Labelled] = (Labelled(), Labelled()),
) -> tuple[GateResult, ...]:
    """Every gate that is switched on. The disagreement gate needs a comparison, which only a shadow
    arm has (the shadow package compares its outputs with the primary's): ``None`` leaves it out.
    ``labels``: the primary's and the candidate's labelled rows, for the accuracy gate."""
    results: list[GateResult] = []
    if gates.max_error_rate_increase is not None:
        results.append(error_rate_gate(primary, candidate, gates, gates.max_error_rate_increase))
    if gates.max_p99_ratio is not None:
        results.append(p99_ratio_gate(primary.latency, candidate.latency, gates, gates.max_p99_ratio))
    if gates.max_disagreement is not None and comparison is not None:
        results.append(disagreement_gate(comparison, gates, gates.max_disagreement))
    if gates.max_accuracy_drop is not None:
        results.append(accuracy_gate(*labels, gates, gates.max_accuracy_drop))
    return tuple(results)


def overall(results: tuple[GateResult, ...], samples: tuple[int, int], min_requests: int) -> Verdict:
    """Failing if any gate fails; healthy if every gate is (with no gate switched on: once both arms
    have ``min_requests``); else inconclusive."""
    verdicts = {r.verdict for r in results}
    if "failing" in verdicts:
        return "failing"
    if not results:
        return "healthy" if min(samples) >= min_requests else "inconclusive"
    return "healthy" if verdicts == {"healthy"} else "inconclusive"
