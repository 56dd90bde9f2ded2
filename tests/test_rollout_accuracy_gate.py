"""A rollout gated on accuracy (issues 20 and 21): the candidate is judged on the rows labelled through the
feedback API, against the primary, and rolled back when it is worse by more than ``max_accuracy_drop``."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from serve.rollout.evidence import ArmEvidence, ArmKey, Labelled, RolloutEvidence
from serve.rollout.gates import ACCURACY_DROP, accuracy_gate, judge
from serve.rollout.plan_file import parse_json, spec_from_json
from serve.rollout.spec import Gates
from tests.fixtures.ground_truth_models import CLASSIFIER, INPUT, cancer_data, write_ground_truth_repository
from tests.fixtures.inprocess import InProcess, in_process

GATES = Gates(min_requests=200, confidence=0.95, max_error_rate_increase=None, max_p99_ratio=None,
              max_accuracy_drop=0.05)  # fmt: skip


def test_a_candidate_wrong_twice_as_often_fails_the_accuracy_gate() -> None:
    result = accuracy_gate(Labelled(1000, 50), Labelled(1000, 200), GATES, 0.05)
    assert (result.name, result.verdict) == (ACCURACY_DROP, "failing")
    assert result.value == pytest.approx(0.15)


def test_equally_accurate_versions_are_healthy() -> None:
    assert accuracy_gate(Labelled(5000, 250), Labelled(5000, 250), GATES, 0.05).verdict == "healthy"


def test_too_few_labels_are_inconclusive_however_wrong() -> None:
    assert accuracy_gate(Labelled(100, 0), Labelled(100, 100), GATES, 0.05).verdict == "inconclusive"


def test_no_labels_leave_the_gate_without_a_value() -> None:
    result = accuracy_gate(Labelled(), Labelled(500, 10), GATES, 0.05)
    assert (result.value, result.verdict) == (None, "inconclusive")


def test_the_gate_is_judged_only_when_switched_on() -> None:
    arm = ArmEvidence(1000, 0)
    labels = (Labelled(1000, 50), Labelled(1000, 200))
    assert [g.name for g in judge(arm, arm, None, GATES, labels)] == [ACCURACY_DROP]
    off = Gates(max_error_rate_increase=None, max_p99_ratio=None)
    assert judge(arm, arm, None, off, labels) == ()


def test_labels_in_the_evidence_merge_subtract_and_survive_json() -> None:
    earlier = RolloutEvidence({ArmKey(1, "primary"): ArmEvidence(10, 0)}, {}, {1: Labelled(10, 1)})
    now = RolloutEvidence({ArmKey(1, "primary"): ArmEvidence(30, 0)}, {}, {1: Labelled(40, 5), 2: Labelled(8, 2)})
    assert RolloutEvidence.from_json(now.to_json()).labels == now.labels
    assert now.minus(earlier).labels == {1: Labelled(30, 4), 2: Labelled(8, 2)}
    merged = RolloutEvidence()
    merged.merge(earlier)
    merged.merge(now)
    assert merged.labels == {1: Labelled(50, 6), 2: Labelled(8, 2)}


def test_the_gate_is_read_from_and_written_to_the_plan() -> None:
    spec = spec_from_json(parse_json(b'{"primary": 1, "candidates": [{"version": 2, "percent": 50}], '
                                     b'"gates": {"max_accuracy_drop": 0.03}}', "the spec"))  # fmt: skip
    assert spec.gates.max_accuracy_drop == 0.03


# ---- as a user runs it: labels make the analyser roll the candidate back -----------------------------------


PLAN = {
    "primary": 1,
    "candidates": [{"version": 2, "percent": 50}],
    "gates": {"interval_s": 0.2, "min_requests": 60, "max_error_rate_increase": None, "max_p99_ratio": None,
              "max_accuracy_drop": 0.05, "bake_s": 3600},
}  # fmt: skip


@pytest.fixture
async def split(tmp_path: Path) -> AsyncIterator[InProcess]:
    root = write_ground_truth_repository(tmp_path)
    async with in_process(root) as server:
        response = await server.http.put(f"/v2/models/{CLASSIFIER}/rollout", content=json.dumps(PLAN))
        assert response.status_code == 200, response.text
        yield server


async def test_a_candidate_whose_labels_say_it_is_wrong_is_rolled_back(split: InProcess) -> None:
    # The analyser judges what happened since it first saw the plan: let it see the plan first.
    for _ in range(100):
        if (await split.http.get(f"/v2/models/{CLASSIFIER}/rollout")).json().get("evaluation"):
            break
        await asyncio.sleep(0.1)
    data = cancer_data()
    labels: list[dict[str, Any]] = []
    for start in range(0, len(data.x), 4):
        rows = np.arange(start, min(start + 4, len(data.x)))
        body = {"inputs": [{"name": INPUT, "shape": [len(rows), data.x.shape[1]], "datatype": "FP32",
                            "data": data.x[rows].ravel().tolist()}]}  # fmt: skip
        answer = (await split.http.post(f"/v2/models/{CLASSIFIER}/infer", content=json.dumps(body))).json()
        # The truth for version 1's predictions; for version 2's, the opposite of what it predicted.
        predicted = next(o for o in answer["outputs"] if o["name"] == "output_label")["data"]
        for r, row in enumerate(rows):
            truth = 1 - int(predicted[r]) if answer["model_version"] == "2" else int(data.y[row])
            labels.append({"id": answer["id"], "row": r, "label": truth})
    joined = (await split.http.post(f"/v2/models/{CLASSIFIER}/feedback", content=json.dumps(labels))).json()
    assert joined["joined"] == len(labels)
    for _ in range(100):
        document = (await split.http.get(f"/v2/models/{CLASSIFIER}/rollout")).json()
        if document["plan"]["status"]["phase"] != "running":
            break
        await asyncio.sleep(0.1)
    status = document["plan"]["status"]
    assert status["phase"] == "rolled_back", document
    assert ACCURACY_DROP in status["reason"]
