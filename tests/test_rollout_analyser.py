"""The analyser's state machine: inconclusive holds, failing rolls back at once, healthy advances only
after the bake time, and the last step promotes."""

from __future__ import annotations

from dataclasses import replace

import pytest

from serve.rollout.analyser import ANALYSER, decide, judged_arms
from serve.rollout.comparison import OutputComparison, comparison_key
from serve.rollout.evidence import ArmEvidence, ArmKey, RolloutEvidence
from serve.rollout.latency import LatencyHistogram
from serve.rollout.spec import Arm, Gates, RolloutPlan, RolloutSpec, Step

MS = 1_000_000
GATES = Gates(min_requests=200, bake_s=60, max_error_rate_increase=0.02, max_p99_ratio=1.5)
STEPS = (Step(100, shadow=True), Step(10), Step(50), Step(100))
AT = "2026-12-07T20:00:00Z"


def _arm(requests: int, errors: int = 0, latency_ns: int = 2 * MS) -> ArmEvidence:
    histogram = LatencyHistogram()
    for _ in range(requests):
        histogram.record(latency_ns)
    return ArmEvidence(requests, errors, histogram)


def _evidence(**arms: ArmEvidence) -> RolloutEvidence:
    """Arms named like ``primary_1`` or ``candidate_2``."""
    keyed = {}
    for name, arm in arms.items():
        role, version = name.split("_")
        keyed[ArmKey(int(version), role)] = arm
    return RolloutEvidence(keyed)


HEALTHY = _evidence(primary_1=_arm(20_000), candidate_2=_arm(20_000))
FAILING = _evidence(primary_1=_arm(2_000, 20), candidate_2=_arm(400, 80))
FEW = _evidence(primary_1=_arm(150), candidate_2=_arm(150, 150))


def _plan(step: int = 1, steps: tuple[Step, ...] = STEPS, **spec: object) -> RolloutPlan:
    fields: dict[str, object] = {"candidates": (Arm(2, 10),), "steps": steps, "gates": GATES, **spec}
    return RolloutPlan(RolloutSpec(1, **fields), step=step, revision=4)  # type: ignore[arg-type]


def test_an_ended_rollout_is_not_judged() -> None:
    plan = replace(_plan(), phase="rolled_back")
    decision = decide(plan, FAILING, now=100, healthy_since=None, at=AT)
    assert (decision.action, decision.plan, decision.evaluation) == ("hold", plan, None)


def test_too_few_samples_hold_the_plan_however_bad_they_look() -> None:
    plan = _plan()
    decision = decide(plan, FEW, now=100, healthy_since=None, at=AT)
    assert (decision.action, decision.plan, decision.healthy_since) == ("hold", plan, None)
    assert decision.evaluation is not None and decision.evaluation.verdict == "inconclusive"


def test_a_failing_candidate_is_rolled_back_at_once() -> None:
    decision = decide(_plan(), FAILING, now=100, healthy_since=None, at=AT)
    assert decision.action == "rollback"
    new = decision.plan
    assert (new.phase, new.actor, new.revision, new.updated_at) == ("rolled_back", ANALYSER, 5, AT)
    assert new.routing().candidates == () and new.routing().primary == 1


def test_a_rollback_reason_names_the_measured_value_threshold_and_samples() -> None:
    reason = decide(_plan(), FAILING, now=100, healthy_since=None, at=AT).plan.reason
    assert "version 2 (candidate) failing" in reason
    assert "error_rate 0.19 " in reason and "threshold 0.02" in reason
    assert "samples primary 2000, candidate 400" in reason


def test_a_failing_candidate_is_rolled_back_even_in_the_middle_of_a_bake() -> None:
    assert decide(_plan(), FAILING, now=100, healthy_since=90, at=AT).action == "rollback"


def test_a_healthy_candidate_holds_until_the_bake_time_has_passed() -> None:
    decision = decide(_plan(), HEALTHY, now=100, healthy_since=None, at=AT)
    assert (decision.action, decision.healthy_since) == ("hold", 100)
    decision = decide(_plan(), HEALTHY, now=159, healthy_since=100, at=AT)
    assert (decision.action, decision.healthy_since) == ("hold", 100)


def test_a_healthy_candidate_advances_to_the_next_step_after_the_bake_time() -> None:
    decision = decide(_plan(step=1), HEALTHY, now=160, healthy_since=100, at=AT)
    assert decision.action == "advance"
    assert (decision.plan.step, decision.plan.phase, decision.plan.actor) == (2, "running", ANALYSER)
    assert decision.plan.routing().candidates == (Arm(2, 50),)
    assert "advanced to step 3 of 4 (50 %)" in decision.plan.reason
    assert decision.healthy_since is None  # the next step bakes from its own start


def test_an_inconclusive_verdict_restarts_the_bake() -> None:
    assert decide(_plan(), FEW, now=200, healthy_since=100, at=AT).healthy_since is None


def test_the_last_step_promotes_the_candidate_after_its_bake() -> None:
    steps = (Step(100, shadow=True), Step(10), Step(50))
    decision = decide(_plan(step=2, steps=steps), HEALTHY, now=160, healthy_since=100, at=AT)
    assert decision.action == "promote"
    new = decision.plan
    assert (new.phase, new.spec.primary, new.spec.candidates, new.spec.steps) == ("promoted", 2, (), ())
    assert new.routing().primary == 2 and new.routing().candidates == ()


def test_a_last_step_of_100_percent_is_the_promotion_itself() -> None:
    decision = decide(_plan(step=2), HEALTHY, now=160, healthy_since=100, at=AT)
    assert (decision.action, decision.plan.spec.primary) == ("promote", 2)


def test_without_steps_a_healthy_candidate_is_left_for_the_operator_to_promote() -> None:
    plan = _plan(steps=())
    decision = decide(plan, HEALTHY, now=10_000, healthy_since=100, at=AT)
    assert (decision.action, decision.plan) == ("hold", plan)


def test_without_steps_a_failing_candidate_is_rolled_back() -> None:
    assert decide(_plan(steps=()), FAILING, now=100, healthy_since=None, at=AT).action == "rollback"


def test_a_shadow_step_judges_the_shadow_arm() -> None:
    plan = _plan(step=0)
    assert judged_arms(plan) == (ArmKey(2, "shadow"),)
    evidence = _evidence(primary_1=_arm(2_000), shadow_2=_arm(2_000, 0, 80 * MS))
    decision = decide(plan, evidence, now=100, healthy_since=None, at=AT)
    assert decision.action == "rollback"
    assert decision.evaluation is not None and decision.evaluation.role == "shadow"
    assert "p99_ratio" in decision.plan.reason


def test_a_shadow_that_disagrees_with_the_primary_is_rolled_back() -> None:
    plan = _plan(step=0, gates=replace(GATES, max_disagreement=0.05))
    evidence = _evidence(primary_1=_arm(2_000), shadow_2=_arm(2_000))
    evidence.comparisons[comparison_key("1", "2")] = OutputComparison(2_000, 400)
    decision = decide(plan, evidence, now=100, healthy_since=None, at=AT)
    assert decision.action == "rollback" and "disagreement 0.2 " in decision.plan.reason


def test_any_failing_candidate_of_several_rolls_the_rollout_back_naming_it() -> None:
    plan = _plan(steps=(), candidates=(Arm(2, 10), Arm(3, 10)))
    evidence = _evidence(primary_1=_arm(20_000), candidate_2=_arm(20_000), candidate_3=_arm(400, 80))
    decision = decide(plan, evidence, now=100, healthy_since=None, at=AT)
    assert decision.action == "rollback"
    assert decision.evaluation is not None and decision.evaluation.version == 3


def test_the_evaluation_document_has_each_gates_value_threshold_and_samples() -> None:
    evaluation = decide(_plan(), FAILING, now=100, healthy_since=None, at=AT).evaluation
    assert evaluation is not None
    doc = evaluation.to_json()
    assert (doc["at"], doc["verdict"], doc["version"], doc["role"]) == (AT, "failing", 2, "candidate")
    error_rate = doc["gates"][0]
    assert error_rate["name"] == "error_rate" and error_rate["threshold"] == 0.02
    assert error_rate["value"] == pytest.approx(0.19)
    assert error_rate["samples"] == {"primary": 2000, "candidate": 400}
    assert error_rate["verdict"] == "failing"
