"""The analyser: a pure state machine from a running plan and the evidence since its step began to a
decision — hold, advance to the next step, promote after the last one, or roll back.

Every arm in force besides the primary (each candidate, and a shadow) is judged against the primary on
the same evidence (serve/rollout/gates.py). Then:

- **failing** (any arm): roll back at once — phase ``rolled_back``, so the routing sends everything to
  the primary (a rolled-back candidate has weight 0), with the measured values, thresholds and sample
  counts in the reason;
- **healthy** (every arm) for ``bake_s`` without a break: a stepped rollout advances to its next step,
  and promotes the candidate after its last step. A last step of 100 % is the promotion itself: there
  the primary would answer nothing to compare with, so the analyser promotes instead of entering it.
  Without steps a healthy rollout is left as it is: the weights are the operator's, and only they
  promote (``serve rollout promote``);
- **inconclusive** (otherwise): hold, and the bake starts again at the next healthy verdict.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal, TypedDict

from serve.rollout.evidence import ArmKey, RolloutEvidence
from serve.rollout.gates import GateResult, judge, overall
from serve.rollout.spec import RolloutPlan, Verdict

ANALYSER = "analyser"  # the actor of the analyser's changes
Action = Literal["hold", "advance", "promote", "rollback"]


class GateSamplesJson(TypedDict):
    primary: int
    candidate: int


class GateJson(TypedDict):
    name: str
    value: float | None
    threshold: float
    samples: GateSamplesJson
    verdict: str
    low: float | None
    high: float | None


class EvaluationJson(TypedDict):
    at: str
    verdict: str
    gates: list[GateJson]
    version: int
    role: str
    reason: str  # the evaluation in one line (describe())


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


@dataclass(frozen=True, slots=True)
class Evaluation:
    """One arm judged against the primary: what the status document and the gauges show."""

    at: str  # RFC 3339, UTC
    version: int
    role: str  # "candidate" or "shadow"
    verdict: Verdict
    gates: tuple[GateResult, ...]

    def to_json(self) -> EvaluationJson:
        return {
            "at": self.at,
            "verdict": self.verdict,
            "gates": [
                {
                    "name": g.name,
                    "value": _finite(g.value),
                    "threshold": g.threshold,
                    "samples": {"primary": g.samples_primary, "candidate": g.samples_candidate},
                    "verdict": g.verdict,
                    "low": _finite(g.low),
                    "high": _finite(g.high),
                }
                for g in self.gates
            ],
            "version": self.version,
            "role": self.role,
            "reason": describe(self),
        }


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    plan: RolloutPlan  # the plan to apply: the same one when holding
    evaluation: (
        Evaluation | None
    )  # the arm that decided (the failing one, else the least healthy); None: nothing to judge
    healthy_since: float | None  # when the current run of healthy verdicts began, to pass to the next decide()


def judged_arms(plan: RolloutPlan) -> tuple[ArmKey, ...]:
    """The arms in force that are judged against the primary: candidates with weight, then the shadow."""
    routing = plan.routing()
    arms = [ArmKey(a.version, "candidate") for a in routing.candidates]
    if routing.shadow is not None:
        arms.append(ArmKey(routing.shadow.version, "shadow"))
    return tuple(arms)


def evaluate(plan: RolloutPlan, evidence: RolloutEvidence, arm: ArmKey, at: str) -> Evaluation:
    primary_version = plan.spec.primary
    primary = evidence.arm(primary_version, "primary")
    candidate = evidence.arm(arm.version, arm.role)
    comparison = evidence.comparison(primary_version, arm.version) if arm.role == "shadow" else None
    gates = plan.spec.gates
    labels = (evidence.labelled(primary_version), evidence.labelled(arm.version))
    results = judge(primary, candidate, comparison, gates, labels)
    verdict = overall(results, (primary.requests, candidate.requests), gates.min_requests)
    return Evaluation(at, arm.version, arm.role, verdict, results)


_SEVERITY: dict[Verdict, int] = {"failing": 0, "inconclusive": 1, "healthy": 2}


def _gate_text(g: GateResult) -> str:
    value = "n/a" if g.value is None else f"{g.value:.4g}"
    bounds = "" if g.low is None or g.high is None else f" [{g.low:.4g}, {g.high:.4g}]"
    return (
        f"{g.name} {value}{bounds} vs threshold {g.threshold:g} "
        f"(samples primary {g.samples_primary}, candidate {g.samples_candidate}): {g.verdict}"
    )


def describe(evaluation: Evaluation) -> str:
    """The evaluation in one line: the arm, then every gate's value, bounds, threshold and samples."""
    gates = "; ".join(_gate_text(g) for g in evaluation.gates) or "no gate switched on"
    return f"version {evaluation.version} ({evaluation.role}) {evaluation.verdict}: {gates}"


def _step_text(plan: RolloutPlan, step: int) -> str:
    s = plan.spec.steps[step]
    return f"step {step + 1} of {len(plan.spec.steps)} ({'shadow' if s.shadow else f'{s.percent:g} %'})"


def promoted(plan: RolloutPlan, version: int, reason: str, at: str) -> RolloutPlan:
    """``version`` is the primary, alone: no candidates, no shadow, no steps; the gates and key stay."""
    spec = replace(plan.spec, primary=version, candidates=(), shadow=None, steps=())
    return plan.changed(spec=spec, step=0, phase="promoted", reason=reason, actor=ANALYSER, updated_at=at)


def decide(
    plan: RolloutPlan, evidence: RolloutEvidence, now: float, healthy_since: float | None, at: str = ""
) -> Decision:
    """``evidence`` is since the plan's step began; ``now`` and ``healthy_since`` are seconds on one
    monotonic clock; ``at`` (RFC 3339) stamps the evaluation and a changed plan."""
    if plan.phase != "running":
        return Decision("hold", plan, None, None)
    arms = judged_arms(plan)
    if not arms:
        return Decision("hold", plan, None, None)
    evaluations = sorted((evaluate(plan, evidence, arm, at) for arm in arms), key=lambda e: _SEVERITY[e.verdict])
    shown = evaluations[0]
    if shown.verdict == "failing":
        reason = f"rolled back: {describe(shown)}"
        return Decision(
            "rollback", plan.changed(phase="rolled_back", reason=reason, actor=ANALYSER, updated_at=at), shown, None
        )
    if shown.verdict == "inconclusive":
        return Decision("hold", plan, shown, None)
    since = now if healthy_since is None else healthy_since
    steps = plan.spec.steps
    bake_s = plan.spec.gates.bake_s
    if not steps or now - since < bake_s:
        return Decision("hold", plan, shown, since)
    healthy = f"healthy for {now - since:.0f} s at {_step_text(plan, plan.step)}: {describe(shown)}"
    following = plan.step + 1
    last = len(steps) - 1
    if following > last or (following == last and not steps[last].shadow and steps[last].percent >= 100):
        return Decision("promote", promoted(plan, shown.version, f"promoted, {healthy}", at), shown, None)
    reason = f"advanced to {_step_text(plan, following)}, {healthy}"
    return Decision("advance", plan.changed(step=following, reason=reason, actor=ANALYSER, updated_at=at), shown, None)
