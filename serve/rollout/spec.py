"""What a rollout is: the document in ``<model>/rollout.yaml`` and behind ``/v2/models/{m}/rollout``.

A **spec** is what an operator declares (primary, candidates with weights, a shadow, a routing key,
steps and gates). A **plan** is a spec plus where the rollout stands (its step, its phase, why, who
changed it last, a revision that grows with every change). The router reads only the plan's
``routing()``: the weights in force now.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

# The arm a request was answered (or mirrored) by. "" where the model has no rollout.
Role = Literal["", "primary", "candidate", "shadow"]
ROLES: tuple[Role, ...] = ("primary", "candidate", "shadow")

# running: the analyser evaluates and advances; promoted / rolled_back / aborted: it ended, only the
# primary answers (a rolled-back or aborted candidate keeps weight 0 until a new `set`).
Phase = Literal["running", "promoted", "rolled_back", "aborted"]
# One evaluation's verdict on a candidate (or shadow) against the primary.
Verdict = Literal["inconclusive", "healthy", "failing"]


@dataclass(frozen=True, slots=True)
class Arm:
    """A version and the percent of unversioned requests it answers (or, for a shadow, gets a copy of)."""

    version: int
    percent: float


@dataclass(frozen=True, slots=True)
class Step:
    """One step of a stepped rollout: the single candidate mirrored as a shadow (``shadow``), or
    answering ``percent`` of the unversioned requests."""

    percent: float  # 100 for a shadow step: every request is mirrored
    shadow: bool = False


@dataclass(frozen=True, slots=True)
class Gates:
    """When a candidate (or shadow) is judged, and against what. None switches a gate off."""

    interval_s: float = 5.0  # the analyser evaluates every this often
    min_requests: int = 200  # per arm, since the step began, before any verdict but "inconclusive"
    confidence: float = 0.95  # of the one-sided bound on the error-rate difference
    max_error_rate_increase: float | None = 0.02  # candidate − primary error rate (0.02 = 2 points)
    max_p99_ratio: float | None = 1.5  # candidate p99 latency / primary's, from the two histograms
    max_disagreement: float | None = None  # share of compared rows whose predicted class differs
    # primary − candidate accuracy on the rows labelled through the feedback API (README: Ground truth)
    max_accuracy_drop: float | None = None
    bake_s: float = 60.0  # healthy for this long before the next step


@dataclass(frozen=True, slots=True)
class RolloutSpec:
    primary: int
    candidates: tuple[Arm, ...] = ()
    shadow: Arm | None = None
    key: str | None = None  # a request parameter, else a header / metadata key, whose hash picks the arm
    steps: tuple[Step, ...] = ()  # only with exactly one candidate; its weight comes from the step
    gates: Gates = field(default_factory=Gates)

    def versions(self) -> tuple[int, ...]:
        """Every version the spec names, primary first."""
        named = [self.primary, *(a.version for a in self.candidates)]
        if self.shadow is not None:
            named.append(self.shadow.version)
        return tuple(dict.fromkeys(named))


@dataclass(frozen=True, slots=True)
class Routing:
    """The weights in force: what the router reads on every unversioned request."""

    primary: int
    candidates: tuple[Arm, ...]  # percent > 0 only
    shadow: Arm | None  # percent > 0 only
    key: str | None

    def role_of(self, version: int) -> Role:
        if version == self.primary:
            return "primary"
        if any(a.version == version for a in self.candidates):
            return "candidate"
        if self.shadow is not None and self.shadow.version == version:
            return "shadow"
        return ""


@dataclass(frozen=True, slots=True)
class RolloutPlan:
    spec: RolloutSpec
    step: int = 0  # index into spec.steps (ignored without steps)
    phase: Phase = "running"
    reason: str = ""  # why the last change happened (the analyser's measured values, or the API call)
    actor: str = ""  # who made the last change: an API caller's name, "analyser", "file"
    revision: int = 1  # grows with every change; the highest seen wins (file re-read, workers, replicas)
    updated_at: str = ""  # RFC 3339, UTC

    def routing(self) -> Routing:
        """The weights now: the step's for a stepped candidate, none once the rollout ended."""
        spec = self.spec
        if self.phase != "running":
            return Routing(spec.primary, (), None, spec.key)
        candidates = spec.candidates
        shadow = spec.shadow
        if spec.steps:
            (candidate,) = spec.candidates
            step = spec.steps[min(self.step, len(spec.steps) - 1)]
            if step.shadow:
                candidates, shadow = (), Arm(candidate.version, step.percent)
            else:
                candidates = (Arm(candidate.version, step.percent),)
        return Routing(
            spec.primary,
            tuple(a for a in candidates if a.percent > 0),
            shadow if shadow is not None and shadow.percent > 0 else None,
            spec.key,
        )

    def changed(self, **changes: object) -> RolloutPlan:
        """This plan with ``changes`` applied and its revision one higher."""
        return replace(self, revision=self.revision + 1, **changes)  # type: ignore[arg-type]
