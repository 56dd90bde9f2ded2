"""A rollout plan as ``<model>/rollout.yaml`` and as JSON documents, both ways, checked on the way in.

Whatever comes in (a hand-written file, a PUT body) is refused with an InvalidInput that names the
field and the rule it broke, before anything is applied. The file is written atomically (a reader
sees the old file or the new one) with its ``status`` section; a hand-written file has none and is
revision 1, phase running.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Mapping
from pathlib import Path
from typing import cast, get_args

import yaml

from serve.errors import InvalidInput
from serve.modelgen import write_atomic
from serve.rollout.documents import (
    ArmDocument,
    GatesDocument,
    PlanDocument,
    RoutingDocument,
    SpecDocument,
    StatusSection,
)
from serve.rollout.spec import Arm, Gates, Phase, RolloutPlan, RolloutSpec, Routing, Step

FILE_NAME = "rollout.yaml"
SHADOW_STEP = "shadow"
FILE_ACTOR = "file"  # who changed a plan that came from a hand-written file

_SPEC_FIELDS = ("primary", "candidates", "shadow", "key", "steps", "gates")
_STATUS_FIELDS = tuple(StatusSection.__annotations__)
_GATE_FIELDS = tuple(GatesDocument.__annotations__)
PHASES: tuple[Phase, ...] = get_args(Phase)


# ---- reading ---------------------------------------------------------------------------------------
def _fields(value: object, where: str, allowed: tuple[str, ...]) -> Mapping[str, object]:
    if not isinstance(value, Mapping):
        raise InvalidInput(f"{where} must be an object with fields {', '.join(allowed)}")
    unknown = [str(k) for k in value if k not in allowed]
    if unknown:
        raise InvalidInput(
            f"{where} has unknown field(s) {', '.join(repr(k) for k in unknown)}; the fields are {', '.join(allowed)}"
        )
    return cast(Mapping[str, object], value)


def _number(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInput(f"'{where}' must be a number, not {value!r}")
    return float(value)


def _version(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidInput(f"'{where}' must be a model version (a non-negative integer), not {value!r}")
    return value


def _percent(value: object, where: str) -> float:
    percent = _number(value, where)
    if not 0 <= percent <= 100:
        raise InvalidInput(f"'{where}' must be a percent between 0 and 100, not {value!r}")
    return percent


def _arm(value: object, where: str, default_percent: float | None) -> Arm:
    fields = _fields(value, f"'{where}'", ("version", "percent"))
    if "version" not in fields:
        raise InvalidInput(f"'{where}' needs a 'version'")
    if "percent" not in fields and default_percent is None:
        raise InvalidInput(f"'{where}' needs a 'percent' (0 to 100)")
    percent = _percent(fields["percent"], f"{where}.percent") if "percent" in fields else default_percent
    assert percent is not None
    return Arm(_version(fields["version"], f"{where}.version"), percent)


def _steps(value: object) -> tuple[Step, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise InvalidInput(f"'steps' must be a list of '{SHADOW_STEP}' and percents, e.g. [shadow, 1, 10, 50, 100]")
    steps: list[Step] = []
    for i, item in enumerate(value):
        if item == SHADOW_STEP:
            steps.append(Step(100.0, shadow=True))
        elif isinstance(item, str):
            raise InvalidInput(f"'steps[{i}]' must be '{SHADOW_STEP}' or a percent, not {item!r}")
        else:
            steps.append(Step(_percent(item, f"steps[{i}]")))
    return tuple(steps)


def _optional_gate(
    fields: Mapping[str, object], name: str, default: float | None, low: float, high: float
) -> float | None:
    if name not in fields:
        return default
    value = fields[name]
    if value is None:
        return None
    number = _number(value, f"gates.{name}")
    if not low <= number <= high:
        raise InvalidInput(
            f"'gates.{name}' must be between {low:g} and {high:g} (or null to switch it off), not {value!r}"
        )
    return number


def _gates(value: object) -> Gates:
    if value is None:
        return Gates()
    fields = _fields(value, "'gates'", _GATE_FIELDS)
    default = Gates()

    def required(name: str, low: float, high: float, *, open_low: bool = False) -> float:
        if name not in fields:
            return float(getattr(default, name))
        raw = fields[name]
        if raw is None:
            raise InvalidInput(f"'gates.{name}' cannot be null: it has no off switch")
        number = _number(raw, f"gates.{name}")
        if number < low or number > high or (open_low and number == low):
            bound = f"above {low:g}" if open_low else f"at least {low:g}"
            raise InvalidInput(f"'gates.{name}' must be {bound} and at most {high:g}, not {raw!r}")
        return number

    min_requests = fields.get("min_requests", default.min_requests)
    if isinstance(min_requests, bool) or not isinstance(min_requests, int) or min_requests < 0:
        raise InvalidInput(f"'gates.min_requests' must be a non-negative integer, not {min_requests!r}")
    confidence = required("confidence", 0.0, 1.0, open_low=True)
    if confidence >= 1.0:
        raise InvalidInput(f"'gates.confidence' must be above 0 and below 1, not {fields['confidence']!r}")
    return Gates(
        interval_s=required("interval_s", 0.0, 86400.0, open_low=True),
        min_requests=min_requests,
        confidence=confidence,
        max_error_rate_increase=_optional_gate(
            fields, "max_error_rate_increase", default.max_error_rate_increase, 0, 1
        ),
        max_p99_ratio=_optional_gate(fields, "max_p99_ratio", default.max_p99_ratio, 0, 1e6),
        max_disagreement=_optional_gate(fields, "max_disagreement", default.max_disagreement, 0, 1),
        max_accuracy_drop=_optional_gate(fields, "max_accuracy_drop", default.max_accuracy_drop, 0, 1),
        bake_s=required("bake_s", 0.0, 86400.0 * 30),
    )


def _key(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise InvalidInput(f"'key' must be a non-empty string naming a request parameter or header, not {value!r}")
    return value


def _spec(fields: Mapping[str, object]) -> RolloutSpec:
    if "primary" not in fields:
        raise InvalidInput("a rollout needs 'primary': the version that answers what no candidate takes")
    primary = _version(fields["primary"], "primary")
    raw_candidates = fields.get("candidates") or []
    if not isinstance(raw_candidates, list):
        raise InvalidInput("'candidates' must be a list of {version, percent}")
    steps = _steps(fields.get("steps"))
    # With steps the step sets the candidate's weight: its own percent may be left out.
    candidates = tuple(_arm(c, f"candidates[{i}]", 0.0 if steps else None) for i, c in enumerate(raw_candidates))
    shadow = None if fields.get("shadow") is None else _arm(fields["shadow"], "shadow", 100.0)
    total = sum(a.percent for a in candidates)
    if total > 100:
        raise InvalidInput(f"the candidates' percents add up to {total:g}; they may add up to 100 at most")
    named = [primary, *(a.version for a in candidates), *([shadow.version] if shadow is not None else [])]
    repeated = sorted({v for v in named if named.count(v) > 1})
    if repeated:
        raise InvalidInput(
            f"version(s) {', '.join(map(str, repeated))} named more than once: primary, candidates and shadow "
            "must be distinct versions"
        )
    if steps and len(candidates) != 1:
        raise InvalidInput(f"'steps' need exactly one candidate, and this rollout names {len(candidates)}")
    return RolloutSpec(primary, candidates, shadow, _key(fields.get("key")), steps, _gates(fields.get("gates")))


def spec_from_json(value: object) -> RolloutSpec:
    """A spec as an API call sends it (the file's fields without ``status``); InvalidInput says what is wrong."""
    return _spec(_fields(value, "the rollout spec", _SPEC_FIELDS))


def _timestamp(value: object) -> str:
    if isinstance(value, datetime.datetime):  # YAML reads an unquoted timestamp as one
        return to_rfc3339(value)
    if not isinstance(value, str):
        raise InvalidInput(f"'status.updated_at' must be an RFC 3339 timestamp, not {value!r}")
    return value


def plan_from_json(value: object, *, actor: str = FILE_ACTOR) -> RolloutPlan:
    """A plan as the file holds it: a spec and, once serve wrote it, a status section."""
    fields = _fields(value, "the rollout", (*_SPEC_FIELDS, "status"))
    spec = _spec(fields)
    if fields.get("status") is None:
        return RolloutPlan(spec, actor=actor)
    status = _fields(fields["status"], "'status'", _STATUS_FIELDS)
    revision = status.get("revision", 1)
    if isinstance(revision, bool) or not isinstance(revision, int) or revision < 1:
        raise InvalidInput(f"'status.revision' must be a positive integer, not {revision!r}")
    step = status.get("step", 0)
    last_step = max(len(spec.steps) - 1, 0)
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= last_step:
        raise InvalidInput(
            f"'status.step' must be an integer from 0 to {last_step} (an index into 'steps'), not {step!r}"
        )
    phase = status.get("phase", "running")
    if phase not in PHASES:
        raise InvalidInput(f"'status.phase' must be one of {', '.join(PHASES)}, not {phase!r}")
    texts = {name: status.get(name, "") for name in ("reason", "actor")}
    for name, text in texts.items():
        if not isinstance(text, str):
            raise InvalidInput(f"'status.{name}' must be a string, not {text!r}")
    return RolloutPlan(
        spec,
        step=step,
        phase=phase,
        reason=str(texts["reason"]),
        actor=str(texts["actor"]),
        revision=revision,
        updated_at=_timestamp(status.get("updated_at", "")),
    )


def read_plan(model_dir: Path) -> RolloutPlan | None:
    """The plan in ``model_dir/rollout.yaml``; None without one; InvalidInput naming the file if it is not valid."""
    path = model_dir / FILE_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"{path} cannot be read: {exc}") from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InvalidInput(f"{path} is not valid YAML: {exc}") from None
    try:
        return plan_from_json(document)
    except InvalidInput as exc:
        raise InvalidInput(f"{path}: {exc.message}") from None


def write_plan(model_dir: Path, plan: RolloutPlan) -> None:
    """Replace ``model_dir/rollout.yaml`` with ``plan``, its status section included, atomically."""
    text = yaml.safe_dump(dict(plan_document(plan)), sort_keys=False, default_flow_style=None)
    write_atomic(model_dir / FILE_NAME, text.encode("utf-8"))


# ---- writing ---------------------------------------------------------------------------------------
def to_rfc3339(moment: datetime.datetime) -> str:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def utc_now() -> str:
    """Now, as a plan's and an evaluation's times are written: RFC 3339, UTC, to the second."""
    return to_rfc3339(datetime.datetime.now(datetime.UTC))


def _arm_document(arm: Arm) -> ArmDocument:
    return {"version": arm.version, "percent": arm.percent}


def spec_document(spec: RolloutSpec) -> SpecDocument:
    g = spec.gates
    return {
        "primary": spec.primary,
        "candidates": [_arm_document(a) for a in spec.candidates],
        "shadow": _arm_document(spec.shadow) if spec.shadow is not None else None,
        "key": spec.key,
        "steps": [SHADOW_STEP if s.shadow else s.percent for s in spec.steps],
        "gates": {
            "interval_s": g.interval_s,
            "min_requests": g.min_requests,
            "confidence": g.confidence,
            "max_error_rate_increase": g.max_error_rate_increase,
            "max_p99_ratio": g.max_p99_ratio,
            "max_disagreement": g.max_disagreement,
            "max_accuracy_drop": g.max_accuracy_drop,
            "bake_s": g.bake_s,
        },
    }


def plan_document(plan: RolloutPlan) -> PlanDocument:
    spec = spec_document(plan.spec)
    status: StatusSection = {
        "revision": plan.revision,
        "step": plan.step,
        "phase": plan.phase,
        "reason": plan.reason,
        "actor": plan.actor,
        "updated_at": plan.updated_at,
    }
    return {**spec, "status": status}


def routing_document(routing: Routing) -> RoutingDocument:
    return {
        "primary": routing.primary,
        "candidates": [_arm_document(a) for a in routing.candidates],
        "shadow": _arm_document(routing.shadow) if routing.shadow is not None else None,
        "key": routing.key,
    }


# ---- API bodies ------------------------------------------------------------------------------------
def parse_json(text: bytes | str, what: str) -> object:
    """An API call's JSON body; empty means None. InvalidInput for text that is not JSON."""
    if not text.strip():
        return None
    try:
        return json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"{what} is not valid JSON: {exc}") from None


def promoted_version(value: object) -> int | None:
    """The version a promote call names (``{"version": V}``), or None to promote the one candidate."""
    if value is None:
        return None
    fields = _fields(value, "the promote body", ("version",))
    return _version(fields["version"], "version") if "version" in fields else None
