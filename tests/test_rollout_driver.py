"""The rollout driver: judges each running plan every interval on the evidence since its revision, and
the process that decides applies the change, writes the audit line and sets the gauges."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import orjson
from prometheus_client import CollectorRegistry

from serve.events import RequestEvent, VersionKey
from serve.metrics.rollout_gauges import RolloutGauges
from serve.rollout.driver import RolloutDriver, weights
from serve.rollout.evidence import EvidenceRecorder
from serve.rollout.spec import Arm, Gates, RolloutPlan, RolloutSpec, Step
from serve.security.audit import AuditLog

GATES = Gates(interval_s=5, min_requests=200, bake_s=60, max_error_rate_increase=0.02, max_p99_ratio=None)
PLAN = RolloutPlan(RolloutSpec(1, candidates=(Arm(2, 10),), gates=GATES), revision=3)
STEPPED = RolloutPlan(RolloutSpec(1, candidates=(Arm(2, 10),), steps=(Step(10), Step(50), Step(100)), gates=GATES))


class Plans:
    """Rollouts as the driver sees it: the plans, and apply() that records what it was asked."""

    def __init__(self, **plans: RolloutPlan) -> None:
        self.plans = dict(plans)
        self.applied: list[tuple[str, RolloutPlan, str]] = []
        self.changed = asyncio.Event()

    def names(self) -> list[str]:
        return sorted(self.plans)

    def plan(self, name: str) -> RolloutPlan | None:
        return self.plans.get(name)

    async def apply(self, name: str, plan: RolloutPlan, actor: str) -> RolloutPlan:
        self.plans[name] = plan
        self.applied.append((name, plan, actor))
        self.changed.set()
        return plan


class Evidence:
    """The cluster's merged evidence: one recorder stands for every worker."""

    def __init__(self) -> None:
        self.recorder = EvidenceRecorder()
        self.asked: list[str] = []
        self.failing: set[str] = set()

    async def rollout_evidence(self, name: str) -> bytes:
        self.asked.append(name)
        if name in self.failing:
            raise ConnectionError("worker 1 did not answer")
        return self.recorder.evidence_json(name)

    def requests(self, model: str, version: int, role: str, n: int, errors: int = 0) -> None:
        for i in range(n):
            outcome = "model_error" if i < errors else "success"
            self.recorder.on_request(
                RequestEvent(VersionKey(model, str(version), 1), "http", outcome, 10**6, role=role)
            )

    def traffic(self, model: str, candidate_errors: int) -> None:
        self.requests(model, 1, "primary", 2_000, errors=20)
        self.requests(model, 2, "candidate", 400, errors=candidate_errors)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def _driver(plans: Plans, evidence: Evidence, clock: Clock, *, decides: bool = True, **kw: object) -> RolloutDriver:
    return RolloutDriver(plans, evidence, decides=decides, clock=clock, wall_clock=lambda: "2026-12-07T20:00:00Z", **kw)  # type: ignore[arg-type]


async def _judged_twice(driver: RolloutDriver, clock: Clock, evidence: Evidence, model: str, errors: int) -> None:
    """A first pass (the revision's snapshot), then traffic, then a pass one interval later."""
    await driver.run_once()
    evidence.traffic(model, errors)
    clock.now += GATES.interval_s
    await driver.run_once()


async def test_a_failing_candidate_is_rolled_back_through_rollouts_apply() -> None:
    plans, evidence, clock = Plans(m=PLAN), Evidence(), Clock()
    driver = _driver(plans, evidence, clock)
    await _judged_twice(driver, clock, evidence, "m", errors=80)
    ((name, plan, actor),) = plans.applied
    assert (name, actor, plan.phase, plan.revision) == ("m", "analyser", "rolled_back", 4)
    assert "error_rate 0.19" in plan.reason
    assert driver.evidence("m")["since_revision"] == 3  # the status shows the evidence that decided


async def test_an_inconclusive_candidate_changes_nothing() -> None:
    plans, evidence, clock = Plans(m=PLAN), Evidence(), Clock()
    driver = _driver(plans, evidence, clock)
    await driver.run_once()
    evidence.requests("m", 1, "primary", 100)
    evidence.requests("m", 2, "candidate", 100, errors=100)
    clock.now += GATES.interval_s
    await driver.run_once()
    assert plans.applied == []
    evaluation = driver.evaluation("m")
    assert evaluation is not None and evaluation["verdict"] == "inconclusive"


async def test_evidence_from_before_the_revision_was_seen_is_not_judged() -> None:
    plans, evidence, clock = Plans(m=PLAN), Evidence(), Clock()
    evidence.traffic("m", candidate_errors=80)  # e.g. a plan that was rolled back before this one
    driver = _driver(plans, evidence, clock)
    await driver.run_once()
    clock.now += GATES.interval_s
    await driver.run_once()
    assert plans.applied == []
    assert driver.evidence("m")["arms"] == []


async def test_each_model_is_judged_once_per_interval() -> None:
    plans, evidence, clock = Plans(m=PLAN), Evidence(), Clock()
    driver = _driver(plans, evidence, clock)
    await driver.run_once()
    clock.now += GATES.interval_s - 1
    await driver.run_once()
    clock.now += 1
    await driver.run_once()
    assert evidence.asked == ["m", "m"]


async def test_a_model_that_cannot_be_judged_does_not_stop_the_others() -> None:
    plans, evidence, clock = Plans(a=PLAN, b=PLAN), Evidence(), Clock()
    driver = _driver(plans, evidence, clock)
    await driver.run_once()
    evidence.failing.add("a")
    evidence.traffic("b", candidate_errors=80)
    clock.now += GATES.interval_s
    await driver.run_once()
    assert [name for name, _, _ in plans.applied] == ["b"]


async def test_a_healthy_stepped_candidate_advances_after_the_bake_and_its_next_step_starts_afresh() -> None:
    plans, evidence, clock = Plans(m=STEPPED), Evidence(), Clock()
    driver = _driver(plans, evidence, clock)
    await driver.run_once()
    evidence.requests("m", 1, "primary", 30_000)
    evidence.requests("m", 2, "candidate", 30_000)
    for _ in range(13):  # healthy from the first evaluation on: 60 s of bake is 12 intervals later
        clock.now += GATES.interval_s
        await driver.run_once()
    ((_, plan, _),) = plans.applied
    assert (plan.step, plan.routing().candidates) == (1, (Arm(2, 50),))
    clock.now += GATES.interval_s
    await driver.run_once()
    assert driver.evidence("m")["arms"] == []  # the new step's evidence starts empty
    assert driver.evidence("m")["since_revision"] == plan.revision


async def test_a_plan_changed_while_it_was_judged_is_not_overwritten() -> None:
    plans, evidence, clock = Plans(m=PLAN), Evidence(), Clock()
    driver = _driver(plans, evidence, clock)
    await driver.run_once()
    evidence.traffic("m", candidate_errors=80)
    asked = evidence.rollout_evidence

    async def operator_sets_a_new_plan(name: str) -> bytes:
        plans.plans[name] = replace(PLAN, revision=PLAN.revision + 1)
        return await asked(name)

    evidence.rollout_evidence = operator_sets_a_new_plan  # type: ignore[method-assign]
    clock.now += GATES.interval_s
    await driver.run_once()
    assert plans.applied == []


async def test_a_driver_that_does_not_decide_evaluates_for_the_status_but_never_acts(tmp_path: Path) -> None:
    plans, evidence, clock = Plans(m=PLAN), Evidence(), Clock()
    registry = CollectorRegistry()
    audit = AuditLog(tmp_path / "audit.jsonl")
    driver = _driver(plans, evidence, clock, decides=False, gauges=RolloutGauges(registry), audit=audit)
    await _judged_twice(driver, clock, evidence, "m", errors=80)
    assert plans.applied == []
    evaluation = driver.evaluation("m")
    assert evaluation is not None and evaluation["verdict"] == "failing"
    assert registry.get_sample_value("serve_rollout_state", {"model": "m"}) is None
    assert not (tmp_path / "audit.jsonl").read_bytes()


async def test_the_decision_is_audited_with_values_thresholds_and_samples(tmp_path: Path) -> None:
    plans, evidence, clock = Plans(m=PLAN), Evidence(), Clock()
    driver = _driver(plans, evidence, clock, audit=AuditLog(tmp_path / "audit.jsonl"))
    await _judged_twice(driver, clock, evidence, "m", errors=80)
    (line,) = [orjson.loads(raw) for raw in (tmp_path / "audit.jsonl").read_bytes().splitlines()]
    assert (line["event"], line["actor"], line["model"], line["decision"]) == (
        "rollout_decision",
        "analyser",
        "m",
        "rollback",
    )
    assert (line["version"], line["phase"], line["revision"]) == ("2", "rolled_back", 4)
    assert line["thresholds"] == {"error_rate": 0.02}
    assert abs(line["measured"]["error_rate"] - 0.19) < 1e-9
    assert line["samples"] == {"error_rate": {"primary": 2000, "candidate": 400}}
    assert "error_rate 0.19" in line["reason"]


async def test_gauges_show_the_verdict_the_gates_and_the_weights_after_a_rollback() -> None:
    plans, evidence, clock = Plans(m=PLAN), Evidence(), Clock()
    registry = CollectorRegistry()
    await _judged_twice(_driver(plans, evidence, clock, gauges=RolloutGauges(registry)), clock, evidence, "m", 80)
    get = registry.get_sample_value
    assert get("serve_rollout_state", {"model": "m"}) == 2
    assert get("serve_rollout_phase", {"model": "m", "phase": "rolled_back"}) == 1
    assert get("serve_rollout_gate_threshold", {"model": "m", "gate": "error_rate"}) == 0.02
    assert get("serve_rollout_weight", {"model": "m", "version": "1", "role": "primary"}) == 100
    assert get("serve_rollout_weight", {"model": "m", "version": "2", "role": "candidate"}) == 0


async def test_a_model_whose_plan_is_gone_is_forgotten() -> None:
    plans, evidence, clock = Plans(m=PLAN), Evidence(), Clock()
    registry = CollectorRegistry()
    driver = _driver(plans, evidence, clock, gauges=RolloutGauges(registry))
    await driver.run_once()
    del plans.plans["m"]
    await driver.run_once()
    assert (driver.evaluation("m"), driver.evidence("m")) == (None, {})
    assert registry.get_sample_value("serve_rollout_phase", {"model": "m", "phase": "running"}) == 0


async def test_the_status_evidence_gives_each_arm_since_the_step_began() -> None:
    plans, evidence, clock = Plans(m=PLAN), Evidence(), Clock()
    driver = _driver(plans, evidence, clock)
    await driver.run_once()
    evidence.requests("m", 2, "candidate", 10, errors=1)
    clock.now += GATES.interval_s
    await driver.run_once()
    summary = driver.evidence("m")
    assert summary["since_revision"] == 3
    arms = summary["arms"]
    assert isinstance(arms, list)
    (arm,) = arms
    assert isinstance(arm, dict)
    assert {k: arm[k] for k in ("version", "role", "requests", "errors", "error_rate")} == {
        "version": 2,
        "role": "candidate",
        "requests": 10,
        "errors": 1,
        "error_rate": 0.1,
    }
    p99 = arm["p99_s"]
    assert isinstance(p99, float) and abs(p99 - 0.001) < 1e-4


async def test_the_loop_runs_until_closed() -> None:
    fast = replace(PLAN, spec=replace(PLAN.spec, gates=replace(GATES, interval_s=0.01)))
    plans, evidence = Plans(m=fast), Evidence()
    asked = evidence.rollout_evidence

    async def traffic_after_the_first_look(name: str) -> bytes:
        doc = await asked(name)
        if len(evidence.asked) == 1:  # the first pass took its snapshot: what comes now is judged
            evidence.traffic(name, candidate_errors=80)
        return doc

    evidence.rollout_evidence = traffic_after_the_first_look  # type: ignore[method-assign]
    driver = RolloutDriver(plans, evidence, decides=True, tick_s=0.01)
    driver.start()
    await plans.changed.wait()
    await driver.close()
    assert plans.applied[0][1].phase == "rolled_back"


def test_weights_give_the_primary_what_the_candidates_do_not() -> None:
    routing = RolloutPlan(RolloutSpec(1, candidates=(Arm(2, 10), Arm(3, 5)), shadow=Arm(4, 50))).routing()
    assert weights(routing) == [
        ("1", "primary", 85.0),
        ("2", "candidate", 10.0),
        ("3", "candidate", 5.0),
        ("4", "shadow", 50.0),
    ]
