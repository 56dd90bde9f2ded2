"""The rollout evidence: what each arm answered, failed and took, recorded from request events,
merged across workers by summing, and subtracted to give the evidence since a step began."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from serve.events import RequestEvent, VersionKey
from serve.rollout.comparison import OutputComparison, compare, comparison_key
from serve.rollout.evidence import (
    ArmEvidence,
    ArmKey,
    EvidenceRecorder,
    RolloutEvidence,
    evidence_from_bytes,
    merge_evidence_json,
)
from serve.rollout.latency import BUCKETS, EDGES_NS, LatencyHistogram

MS = 1_000_000


def _event(
    version: int, role: str, outcome: str = "success", duration_ns: int = 2 * MS, model: str = "m"
) -> RequestEvent:
    return RequestEvent(VersionKey(model, str(version), 7), "http", outcome, duration_ns, role=role)


def _recorded(*events: RequestEvent) -> EvidenceRecorder:
    recorder = EvidenceRecorder()
    for event in events:
        recorder.on_request(event)
    return recorder


def test_requests_are_recorded_per_version_and_role() -> None:
    recorder = _recorded(_event(1, "primary"), _event(1, "primary"), _event(2, "candidate"), _event(2, "shadow"))
    evidence = recorder.evidence("m")
    assert {key: arm.requests for key, arm in evidence.arms.items()} == {
        ArmKey(1, "primary"): 2,
        ArmKey(2, "candidate"): 1,
        ArmKey(2, "shadow"): 1,
    }


def test_requests_without_a_rollout_are_not_recorded() -> None:
    assert _recorded(_event(1, "")).evidence("m").arms == {}


def test_server_failures_count_as_errors_and_client_mistakes_not_at_all() -> None:
    outcomes = ["success", "model_error", "error", "timeout", "rejected", "unavailable", "invalid_input", "cancelled"]
    arm = _recorded(*(_event(2, "candidate", outcome) for outcome in outcomes)).evidence("m").arm(2, "candidate")
    assert (arm.requests, arm.errors) == (6, 5)
    assert arm.latency.total == 6


def test_models_keep_their_own_evidence() -> None:
    recorder = _recorded(_event(1, "primary", model="a"), _event(1, "primary", model="b"))
    assert recorder.evidence("a").arm(1, "primary").requests == 1
    assert recorder.evidence("unknown").arms == {}


def test_evidence_is_a_copy_that_later_requests_do_not_change() -> None:
    recorder = _recorded(_event(1, "primary"))
    before = recorder.evidence("m")
    recorder.on_request(_event(1, "primary"))
    assert before.arm(1, "primary").requests == 1


def test_merge_sums_arms_and_comparisons() -> None:
    one = RolloutEvidence({ArmKey(1, "primary"): ArmEvidence(10, 1)}, {"1->2": OutputComparison(5, 1)})
    two = RolloutEvidence(
        {ArmKey(1, "primary"): ArmEvidence(3, 2), ArmKey(2, "candidate"): ArmEvidence(4, 0)},
        {"1->2": OutputComparison(2, 2)},
    )
    one.merge(two)
    assert (one.arm(1, "primary").requests, one.arm(1, "primary").errors) == (13, 3)
    assert one.arm(2, "candidate").requests == 4
    assert (one.comparison(1, 2).rows, one.comparison(1, 2).disagreements) == (7, 3)


def test_merge_does_not_share_state_with_what_it_merged() -> None:
    source = RolloutEvidence({ArmKey(1, "primary"): ArmEvidence(1, 0)})
    merged = RolloutEvidence()
    merged.merge(source)
    merged.merge(source)
    assert source.arm(1, "primary").requests == 1


def test_minus_gives_the_evidence_since_a_snapshot() -> None:
    recorder = _recorded(_event(1, "primary"), _event(2, "candidate", "model_error"))
    snapshot = recorder.evidence("m")
    recorder.on_request(_event(2, "candidate", "success", 40 * MS))
    since = recorder.evidence("m").minus(snapshot)
    candidate = since.arm(2, "candidate")
    assert (candidate.requests, candidate.errors, candidate.latency.total) == (1, 0, 1)
    assert since.arm(1, "primary").requests == 0


def test_minus_subtracts_the_comparison_counts() -> None:
    now = RolloutEvidence(comparisons={comparison_key("1", "2"): OutputComparison(100, 9)})
    then = RolloutEvidence(comparisons={comparison_key("1", "2"): OutputComparison(40, 4)})
    added = now.minus(then).comparison(1, 2)
    assert (added.rows, added.disagreements) == (60, 5)


def test_json_round_trip_keeps_everything() -> None:
    recorder = _recorded(_event(1, "primary", duration_ns=3 * MS), _event(2, "shadow", "timeout", 9 * MS))
    evidence = recorder.evidence("m")
    evidence.comparisons[comparison_key("1", "2")] = OutputComparison(3, 1)
    assert RolloutEvidence.from_json(orjson.loads(orjson.dumps(evidence.to_json()))) == evidence


def test_merge_evidence_json_equals_merging_the_evidence() -> None:
    workers = [_recorded(_event(1, "primary"), _event(2, "candidate", "error")), _recorded(_event(1, "primary"))]
    merged = evidence_from_bytes(merge_evidence_json([w.evidence_json("m") for w in workers]))
    expected = RolloutEvidence()
    for worker in workers:
        expected.merge(worker.evidence("m"))
    assert merged == expected
    assert merged.arm(1, "primary").requests == 2


def test_merge_evidence_json_of_nothing_is_empty_evidence() -> None:
    assert evidence_from_bytes(merge_evidence_json([])) == RolloutEvidence()


def test_the_shadows_comparisons_join_the_evidence() -> None:
    comparisons = {"m": {comparison_key("1", "3"): OutputComparison(50, 5)}}
    recorder = EvidenceRecorder(lambda name: comparisons.get(name, {}))
    joined = recorder.evidence("m").comparison(1, 3)
    assert (joined.rows, joined.disagreements) == (50, 5)
    assert recorder.evidence("other").comparisons == {}


# ---- the latency histogram ---------------------------------------------------------------------


def test_histogram_buckets_cover_50_microseconds_to_two_minutes_at_under_ten_percent_steps() -> None:
    assert EDGES_NS[0] == 50_000 and EDGES_NS[-1] >= 120 * 10**9
    ratios = [b / a for a, b in zip(EDGES_NS, EDGES_NS[1:], strict=False)]
    assert max(ratios) < 1.1
    assert BUCKETS == len(EDGES_NS) + 1


def test_histogram_quantile_is_within_a_few_percent_of_the_samples() -> None:
    durations = np.random.default_rng(1).lognormal(np.log(0.005), 0.6, 20_000)
    histogram = LatencyHistogram()
    for d in durations:
        histogram.record(int(d * 1e9))
    for q in (0.5, 0.9, 0.99):
        assert histogram.quantile_s(q) == pytest.approx(float(np.quantile(durations, q)), rel=0.03)


def test_histogram_quantile_bounds_bracket_the_samples_quantile() -> None:
    durations = np.random.default_rng(2).exponential(0.01, 5_000)
    histogram = LatencyHistogram()
    for d in durations:
        histogram.record(int(d * 1e9))
    bounds = histogram.quantile_bounds_s(0.99, 1.96)
    assert bounds is not None
    assert bounds[0] < float(np.quantile(durations, 0.99)) < bounds[1]


def test_empty_histogram_has_no_quantile() -> None:
    assert LatencyHistogram().quantile_s(0.99) is None
    assert LatencyHistogram().quantile_bounds_s(0.99, 1.96) is None


def test_durations_past_the_last_edge_land_in_the_overflow_bucket() -> None:
    histogram = LatencyHistogram()
    histogram.record(10**12)
    assert histogram.counts[-1] == 1
    assert histogram.quantile_s(0.5) == EDGES_NS[-1] / 1e9


def test_a_histogram_of_another_size_is_refused() -> None:
    with pytest.raises(ValueError, match=f"{BUCKETS} buckets"):
        LatencyHistogram.from_counts([0, 1])


def test_the_shadows_full_comparisons_survive_the_workers_merge() -> None:
    primary = {"label": np.array([0, 1, 1, 2])}
    shadow = {"label": np.array([0, 2, 1, 2])}
    comparison = compare(primary, shadow)
    workers = [EvidenceRecorder(lambda name: {comparison_key("1", "3"): comparison}) for _ in range(2)]
    merged = evidence_from_bytes(merge_evidence_json([w.evidence_json("m") for w in workers])).comparison(1, 3)
    expected = comparison.copy()
    expected.merge(comparison)
    assert merged.to_json() == expected.to_json()
    assert (merged.rows, merged.disagreements) == (8, 2)
