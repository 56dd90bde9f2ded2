"""The rollout's JSON documents, as types: the spec an operator sends (PUT /v2/models/{m}/rollout, the
YAML file's fields), the plan with its status section, and the status document every rollout call
answers with. plan_file.py converts between these and serve/rollout/spec.py's dataclasses."""

from __future__ import annotations

from typing import TypedDict

from serve.rollout.analyser import EvaluationJson
from serve.types import JsonObject


class ArmDocument(TypedDict):
    version: int
    percent: float


class GatesDocument(TypedDict):
    interval_s: float
    min_requests: int
    confidence: float
    max_error_rate_increase: float | None
    max_p99_ratio: float | None
    max_disagreement: float | None
    max_accuracy_drop: float | None
    bake_s: float


class SpecDocument(TypedDict):
    primary: int
    candidates: list[ArmDocument]
    shadow: ArmDocument | None
    key: str | None
    steps: list[str | float]  # "shadow" or a percent
    gates: GatesDocument


class StatusSection(TypedDict):
    revision: int
    step: int
    phase: str
    reason: str
    actor: str
    updated_at: str


class PlanDocument(SpecDocument):
    status: StatusSection


class RoutingDocument(TypedDict):
    primary: int
    candidates: list[ArmDocument]
    shadow: ArmDocument | None
    key: str | None


# One evaluation by the analyser, as the analyser writes it (one definition).
EvaluationDocument = EvaluationJson


class StatusDocument(TypedDict):
    """What GET /v2/models/{m}/rollout (and every change) answers."""

    model: str
    plan: PlanDocument | None
    routing: RoutingDocument | None
    evaluation: EvaluationDocument | None
    evidence: JsonObject
