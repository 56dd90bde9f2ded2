"""The loop that runs the rollout analyser (serve/rollout/analyser.py): in a server process, or in
``serve monitor --rollouts`` for several replicas (serve/monitor/rollouts.py), on whatever plans and
evidence it is given.

Every ``gates.interval_s``, for each model with a running plan, it takes the model's evidence merged over
every worker (``cluster.rollout_evidence``), subtracts the snapshot taken when the plan's revision last
changed (so each step is judged on its own evidence), and decides. One process decides — the single
process, or worker 0 of ``--workers N``: only it applies a changed plan (``rollouts.apply``, which writes
``rollout.yaml`` and makes every worker re-read it), writes the audit line and sets the
``serve_rollout_*`` gauges. Every other worker runs the same evaluation without acting on it, so that
whichever worker answers ``GET /v2/models/{m}/rollout`` shows the evaluation and the evidence.

A revision first seen by this process starts from a snapshot of the evidence then: evidence from
before (another plan, or this one before a restart) is never mixed into the step's. The loop never
raises: a model that cannot be judged is logged and the others go on; it stops on ``close()``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from serve.rollout.analyser import ANALYSER, Decision, Evaluation, EvaluationJson, decide
from serve.rollout.evidence import RolloutEvidence, evidence_from_bytes
from serve.rollout.gates import GateResult
from serve.rollout.plan_file import utc_now
from serve.rollout.spec import RolloutPlan, Routing
from serve.types import JsonObject, JsonValue

log = logging.getLogger(__name__)

TICK_S = 0.5  # how often the loop looks for a model whose interval has passed


class RolloutPlans(Protocol):
    """Every model's plan in this process, and how a change reaches every worker (serve/core/rollouts.py)."""

    def names(self) -> list[str]: ...

    def plan(self, name: str) -> RolloutPlan | None: ...

    async def apply(self, name: str, plan: RolloutPlan, actor: str) -> RolloutPlan: ...


class EvidenceSource(Protocol):
    """A model's rollout evidence merged over the workers (serve/core/cluster.py's Cluster)."""

    async def rollout_evidence(self, name: str) -> bytes: ...


class DecisionGauges(Protocol):
    """Where the decider shows each plan and evaluation (serve/metrics/rollout_gauges.py RolloutGauges)."""

    def show_plan(self, model: str, phase: str, weights: Sequence[tuple[str, str, float]]) -> None: ...

    def show_evaluation(self, model: str, verdict: str, gates: Sequence[GateResult]) -> None: ...

    def forget(self, model: str) -> None: ...


class DecisionAudit(Protocol):
    """Where the decider records each change it makes (serve/security/audit.py AuditLog)."""

    def rollout_decision(
        self,
        model: str,
        decision: str,
        *,
        version: int,
        phase: str,
        revision: int,
        measured: Mapping[str, float | None],
        thresholds: Mapping[str, float],
        samples: Mapping[str, Mapping[str, int]],
        reason: str,
        actor: str,
    ) -> None: ...


@dataclass(slots=True)
class _Judged:
    """Where this process stands on one model's plan."""

    revision: int
    baseline: RolloutEvidence  # the evidence when this revision was first seen here
    due: float  # monotonic seconds: the next evaluation
    healthy_since: float | None = None
    evaluation: Evaluation | None = None
    since_step: RolloutEvidence = field(default_factory=RolloutEvidence)  # what the last evaluation judged
    judged_revision: int = 0  # the revision that evidence belongs to


def weights(routing: Routing) -> list[tuple[str, str, float]]:
    """(version, role, percent) of every arm in force: the primary answers what the candidates do not."""
    arms = [(str(routing.primary), "primary", 100.0 - sum(a.percent for a in routing.candidates))]
    arms += [(str(a.version), "candidate", a.percent) for a in routing.candidates]
    if routing.shadow is not None:
        arms.append((str(routing.shadow.version), "shadow", routing.shadow.percent))
    return arms


def evidence_summary(revision: int, evidence: RolloutEvidence) -> JsonObject:
    """The evidence since the step began, for the status document: per arm its requests, errors,
    error rate and p99, and the shadow's comparison counts."""
    arms: list[JsonValue] = [
        {
            "version": key.version,
            "role": key.role,
            "requests": arm.requests,
            "errors": arm.errors,
            "error_rate": arm.error_rate(),
            "p99_s": arm.latency.quantile_s(0.99),
        }
        for key, arm in sorted(evidence.arms.items(), key=lambda item: (item[0].version, item[0].role))
    ]
    comparisons: JsonObject = {
        name: {"rows": c.rows, "disagreements": c.disagreements} for name, c in sorted(evidence.comparisons.items())
    }
    return {"since_revision": revision, "arms": arms, "comparisons": comparisons}


class RolloutDriver:
    def __init__(
        self,
        plans: RolloutPlans,
        evidence: EvidenceSource,
        *,
        decides: bool,
        gauges: DecisionGauges | None = None,
        audit: DecisionAudit | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], str] = utc_now,
        tick_s: float = TICK_S,
    ) -> None:
        self._plans = plans
        self._evidence = evidence
        self._decides = decides
        self._gauges = gauges if decides else None  # with workers, only the deciding one exports them
        self._audit = audit if decides else None
        self._clock = clock
        self._wall_clock = wall_clock
        self._tick_s = tick_s
        self._judged: dict[str, _Judged] = {}
        self._task: asyncio.Task[None] | None = None

    # ---- what the status document shows (serve/core/rollouts.py RolloutStatusExtras) ------------------
    def evaluation(self, name: str) -> EvaluationJson | None:
        judged = self._judged.get(name)
        return judged.evaluation.to_json() if judged is not None and judged.evaluation is not None else None

    def evidence(self, name: str) -> JsonObject:
        judged = self._judged.get(name)
        return evidence_summary(judged.judged_revision, judged.since_step) if judged is not None else {}

    # ---- the loop ------------------------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="rollout-driver")

    async def close(self) -> None:
        if self._task is None:
            return
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        self._task = None

    async def _run(self) -> None:
        while True:
            await self.run_once()
            await asyncio.sleep(self._tick_s)

    async def run_once(self) -> None:
        """Judge every model whose interval has passed; forget models whose plan is gone."""
        names = self._plans.names()
        for gone in set(self._judged) - set(names):
            del self._judged[gone]
            if self._gauges is not None:
                self._gauges.forget(gone)
        for name in names:
            try:
                await self._judge(name)
            except Exception:
                log.exception("model %s: the rollout analyser could not judge it; it tries again", name)

    async def _judge(self, name: str) -> None:
        plan = self._plans.plan(name)
        if plan is None:
            return
        now = self._clock()
        judged = self._judged.get(name)
        if judged is not None and judged.revision == plan.revision and now < judged.due:
            return
        if plan.phase != "running":
            self._show_plan(name, plan)
            if judged is not None:
                judged.revision = plan.revision
            return
        evidence = evidence_from_bytes(await self._evidence.rollout_evidence(name))
        if judged is None or judged.revision != plan.revision:
            judged = self._judged[name] = _Judged(plan.revision, evidence, now)
        judged.due = now + plan.spec.gates.interval_s
        judged.since_step, judged.judged_revision = evidence.minus(judged.baseline), plan.revision
        decision = decide(plan, judged.since_step, now, judged.healthy_since, self._wall_clock())
        judged.healthy_since = decision.healthy_since
        judged.evaluation = decision.evaluation or judged.evaluation
        if self._gauges is not None and decision.evaluation is not None:
            self._gauges.show_evaluation(name, decision.evaluation.verdict, decision.evaluation.gates)
        if decision.action != "hold" and self._decides:
            plan = await self._act(name, plan, decision, judged, evidence)
        self._show_plan(name, plan)

    async def _act(
        self, name: str, judged_plan: RolloutPlan, decision: Decision, judged: _Judged, evidence: RolloutEvidence
    ) -> RolloutPlan:
        current = self._plans.plan(name)
        if current is None or current.revision != judged_plan.revision:
            return current or judged_plan  # changed meanwhile (an operator's call): judged again on its own evidence
        applied = await self._plans.apply(name, decision.plan, ANALYSER)
        # The next step is judged on its own evidence; the status keeps showing what decided until then.
        judged.revision, judged.baseline, judged.healthy_since = applied.revision, evidence, None
        log.info("model %s: rollout %s (revision %d): %s", name, decision.action, applied.revision, applied.reason)
        if self._audit is not None and decision.evaluation is not None:
            self._audit_decision(name, decision.action, applied, decision.evaluation)
        return applied

    def _audit_decision(self, name: str, action: str, plan: RolloutPlan, evaluation: Evaluation) -> None:
        assert self._audit is not None
        self._audit.rollout_decision(
            name,
            action,
            version=evaluation.version,
            phase=plan.phase,
            revision=plan.revision,
            measured={g.name: g.value for g in evaluation.gates},
            thresholds={g.name: g.threshold for g in evaluation.gates},
            samples={
                g.name: {"primary": g.samples_primary, "candidate": g.samples_candidate} for g in evaluation.gates
            },
            reason=plan.reason,
            actor=ANALYSER,
        )

    def _show_plan(self, name: str, plan: RolloutPlan) -> None:
        if self._gauges is not None:
            self._gauges.show_plan(name, plan.phase, weights(plan.routing()))
