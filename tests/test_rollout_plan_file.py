"""rollout.yaml and the API's spec documents: what is accepted, what is refused and how the refusal reads."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from serve.errors import InvalidInput
from serve.rollout.plan_file import (
    FILE_NAME,
    parse_json,
    plan_document,
    plan_from_json,
    promoted_version,
    read_plan,
    spec_from_json,
    write_plan,
)
from serve.rollout.spec import Arm, Gates, RolloutPlan, RolloutSpec, Step

FULL = """\
primary: 1
candidates:
  - {version: 2, percent: 10}
shadow: {version: 3, percent: 50}
key: user
gates:
  interval_s: 5
  min_requests: 200
  confidence: 0.95
  max_error_rate_increase: 0.02
  max_p99_ratio: 1.5
  max_disagreement: null
  bake_s: 60
"""


def _refused(document: object) -> str:
    with pytest.raises(InvalidInput) as refused:
        spec_from_json(document)
    return refused.value.message


def test_a_hand_written_file_is_revision_1_running(tmp_path: Path) -> None:
    (tmp_path / FILE_NAME).write_text(FULL)
    plan = read_plan(tmp_path)
    assert plan == RolloutPlan(
        RolloutSpec(1, (Arm(2, 10.0),), Arm(3, 50.0), "user", (), Gates(max_disagreement=None)),
        actor="file",
    )
    assert (plan.revision, plan.phase, plan.step) == (1, "running", 0)


def test_no_file_is_no_plan(tmp_path: Path) -> None:
    assert read_plan(tmp_path) is None


def test_a_written_plan_reads_back_the_same_with_its_status(tmp_path: Path) -> None:
    spec = RolloutSpec(1, (Arm(2, 0.0),), None, None, (Step(100.0, shadow=True), Step(10.0), Step(100.0)))
    plan = RolloutPlan(spec, step=2, phase="promoted", reason="healthy", actor="analyser", revision=7,
                       updated_at="2026-12-07T19:40:00Z")  # fmt: skip
    write_plan(tmp_path, plan)
    assert read_plan(tmp_path) == plan
    written = yaml.safe_load((tmp_path / FILE_NAME).read_text())
    assert written["steps"] == ["shadow", 10.0, 100.0]
    assert written["status"]["revision"] == 7


def test_the_write_leaves_no_temporary_file_behind(tmp_path: Path) -> None:
    write_plan(tmp_path, RolloutPlan(RolloutSpec(1)))
    assert [p.name for p in tmp_path.iterdir()] == [FILE_NAME]


def test_an_unquoted_timestamp_reads_as_rfc_3339(tmp_path: Path) -> None:
    (tmp_path / FILE_NAME).write_text("primary: 1\nstatus: {revision: 2, updated_at: 2026-12-07T19:40:00Z}\n")
    plan = read_plan(tmp_path)
    assert plan is not None and plan.updated_at == "2026-12-07T19:40:00Z"


def test_the_plan_document_has_every_field_of_the_file() -> None:
    document = plan_document(RolloutPlan(RolloutSpec(1, (Arm(2, 10.0),))))
    assert list(document) == ["primary", "candidates", "shadow", "key", "steps", "gates", "status"]
    assert plan_from_json(document) == RolloutPlan(RolloutSpec(1, (Arm(2, 10.0),)))


def test_an_invalid_file_names_the_file_and_the_field(tmp_path: Path) -> None:
    (tmp_path / FILE_NAME).write_text("primary: 1\ncandidates: [{version: 2, percent: 150}]\n")
    with pytest.raises(InvalidInput, match=r"rollout.yaml: 'candidates\[0\].percent' must be a percent"):
        read_plan(tmp_path)


def test_a_file_that_is_not_yaml_is_refused(tmp_path: Path) -> None:
    (tmp_path / FILE_NAME).write_text("primary: [1\n")
    with pytest.raises(InvalidInput, match="is not valid YAML"):
        read_plan(tmp_path)


def test_a_percent_above_100_is_refused() -> None:
    assert "'candidates[0].percent' must be a percent between 0 and 100, not 101" in _refused(
        {"primary": 1, "candidates": [{"version": 2, "percent": 101}]}
    )


def test_a_negative_shadow_percent_is_refused() -> None:
    assert "'shadow.percent' must be a percent" in _refused({"primary": 1, "shadow": {"version": 2, "percent": -1}})


def test_candidates_adding_up_to_more_than_100_are_refused() -> None:
    message = _refused({"primary": 1, "candidates": [{"version": 2, "percent": 60}, {"version": 3, "percent": 50}]})
    assert message == "the candidates' percents add up to 110; they may add up to 100 at most"


def test_a_version_named_twice_is_refused() -> None:
    message = _refused({"primary": 1, "candidates": [{"version": 1, "percent": 5}]})
    assert message.startswith("version(s) 1 named more than once")


def test_steps_need_exactly_one_candidate() -> None:
    message = _refused({"primary": 1, "steps": [10, 100]})
    assert message == "'steps' need exactly one candidate, and this rollout names 0"


def test_a_step_keyword_other_than_shadow_is_refused() -> None:
    message = _refused({"primary": 1, "candidates": [{"version": 2}], "steps": ["mirror", 10]})
    assert message == "'steps[0]' must be 'shadow' or a percent, not 'mirror'"


def test_with_steps_a_candidate_needs_no_percent() -> None:
    spec = spec_from_json({"primary": 1, "candidates": [{"version": 2}], "steps": ["shadow", 10]})
    assert spec.candidates == (Arm(2, 0.0),) and spec.steps == (Step(100.0, shadow=True), Step(10.0))


def test_without_steps_a_candidate_needs_a_percent() -> None:
    assert _refused({"primary": 1, "candidates": [{"version": 2}]}) == "'candidates[0]' needs a 'percent' (0 to 100)"


def test_an_unknown_field_is_named() -> None:
    message = _refused({"primary": 1, "canary": 5})
    assert message.startswith("the rollout spec has unknown field(s) 'canary'; the fields are primary, candidates")


def test_an_unknown_gate_is_named() -> None:
    assert "'gates' has unknown field(s) 'max_latency'" in _refused({"primary": 1, "gates": {"max_latency": 2}})


def test_the_api_spec_has_no_status_section() -> None:
    assert "unknown field(s) 'status'" in _refused({"primary": 1, "status": {"revision": 3}})


def test_a_missing_primary_is_refused() -> None:
    assert _refused({"candidates": []}).startswith("a rollout needs 'primary'")


def test_a_version_must_be_a_non_negative_integer() -> None:
    assert _refused({"primary": "1"}) == "'primary' must be a model version (a non-negative integer), not '1'"
    assert "'primary' must be a model version" in _refused({"primary": True})


@pytest.mark.parametrize(
    ("gates", "words"),
    [
        ({"confidence": 1.0}, "'gates.confidence' must be above 0 and below 1"),
        ({"confidence": 0}, "'gates.confidence' must be above 0"),
        ({"interval_s": 0}, "'gates.interval_s' must be above 0"),
        ({"min_requests": 1.5}, "'gates.min_requests' must be a non-negative integer"),
        ({"max_error_rate_increase": 2}, "'gates.max_error_rate_increase' must be between 0 and 1"),
        ({"max_p99_ratio": "high"}, "'gates.max_p99_ratio' must be a number"),
        ({"bake_s": None}, "'gates.bake_s' cannot be null"),
    ],
)
def test_a_gate_out_of_its_range_is_refused(gates: dict[str, object], words: str) -> None:
    assert words in _refused({"primary": 1, "gates": gates})


def test_null_switches_a_gate_off() -> None:
    spec = spec_from_json({"primary": 1, "gates": {"max_p99_ratio": None}})
    assert spec.gates.max_p99_ratio is None and spec.gates.max_error_rate_increase == 0.02


def test_a_status_step_outside_the_steps_is_refused() -> None:
    with pytest.raises(InvalidInput, match=r"'status.step' must be an integer from 0 to 1"):
        plan_from_json({"primary": 1, "candidates": [{"version": 2}], "steps": [1, 10], "status": {"step": 2}})


def test_an_unknown_phase_is_refused() -> None:
    with pytest.raises(InvalidInput, match="'status.phase' must be one of running, promoted, rolled_back, aborted"):
        plan_from_json({"primary": 1, "status": {"phase": "paused"}})


def test_a_body_that_is_not_json_is_refused() -> None:
    with pytest.raises(InvalidInput, match="the rollout spec is not valid JSON"):
        parse_json(b"{primary: 1", "the rollout spec")


def test_an_empty_promote_body_promotes_the_candidate() -> None:
    assert promoted_version(parse_json(b"", "the promote body")) is None
    assert promoted_version({"version": 3}) == 3
