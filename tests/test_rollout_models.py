"""The rollout tests' models (tests/fixtures/rollout_models.py) do what those tests count on: each version
says who answered, the failing candidate fails on a known fifth of the inputs and nowhere else, the slow
candidate is slow, and the classifier pair disagrees on some rows, as onnxruntime alone computes it."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

from tests.fixtures.inprocess import in_process
from tests.fixtures.rollout_models import (
    CLASSIFIER_LABEL,
    FAILS_ABOVE,
    INPUT,
    ClassifierPair,
    answering_version,
    classifier_pair,
    failing_candidate,
    offline_comparison,
    predicted_labels,
    quiet_session,
    random_rows,
    slow_candidate,
    two_versions,
)


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    (y,) = quiet_session(path).run(None, {INPUT: x})
    return np.asarray(y)


def test_each_of_two_versions_answers_with_its_own_version(tmp_path: Path) -> None:
    model = two_versions(tmp_path)
    x = random_rows(3, seed=1)

    answers = {v: _run(model / str(v) / "model.onnx", x) for v in (1, 2)}

    assert [answering_version(x, answers[v]) for v in (1, 2)] == [1, 2]
    assert not np.allclose(answers[1], answers[2])


async def test_the_server_loads_both_versions_and_each_answers_as_itself(tmp_path: Path) -> None:
    two_versions(tmp_path, "ab")
    x = random_rows(1, seed=2)
    body = {"inputs": [{"name": INPUT, "shape": [1, 2], "datatype": "FP32", "data": x.reshape(-1).tolist()}]}

    async with in_process(tmp_path) as server:
        answers = [(await server.http.post(f"/v2/models/ab/versions/{v}/infer", json=body)).json() for v in (1, 2)]

    for version, answer in zip((1, 2), answers, strict=True):
        assert answer["model_version"] == str(version)
        y = np.asarray(answer["outputs"][0]["data"], dtype=np.float32)
        assert answering_version(x, y) == version


def test_failing_candidate_fails_on_a_fifth_of_random_inputs_and_only_where_the_first_feature_is_high(
    tmp_path: Path,
) -> None:
    session = quiet_session(failing_candidate(tmp_path) / "2" / "model.onnx")
    rows = random_rows(2000, seed=3)

    failed = []
    for row in rows:
        try:
            session.run(None, {INPUT: row[None]})
        except InvalidArgument:
            failed.append(True)
        else:
            failed.append(False)

    assert np.array_equal(np.asarray(failed), rows[:, 0] > FAILS_ABOVE)
    assert 0.17 < np.mean(failed) < 0.23


def test_failing_candidates_primary_answers_every_input(tmp_path: Path) -> None:
    rows = random_rows(500, seed=4)

    y = _run(failing_candidate(tmp_path) / "1" / "model.onnx", rows)

    np.testing.assert_allclose(y, rows + 1)


def test_failing_candidate_answers_like_a_version_2_where_it_runs(tmp_path: Path) -> None:
    rows = random_rows(500, seed=5)
    fine = rows[rows[:, 0] <= FAILS_ABOVE]

    y = _run(failing_candidate(tmp_path) / "2" / "model.onnx", fine)

    np.testing.assert_allclose(y, fine + 2)


def test_failing_candidate_is_served_unbatched_so_a_failure_stays_in_its_own_request(tmp_path: Path) -> None:
    config = (failing_candidate(tmp_path) / "config.pbtxt").read_text()

    assert "dynamic_batching" not in config and "version_policy: { all: {} }" in config


def test_slow_candidates_median_execution_takes_at_least_50_ms(tmp_path: Path) -> None:
    session = quiet_session(slow_candidate(tmp_path) / "2" / "model.onnx", threads=1)
    x = random_rows(1, seed=6)
    session.run(None, {INPUT: x})

    took = []
    for _ in range(5):
        started = time.perf_counter()
        (y,) = session.run(None, {INPUT: x})
        took.append(time.perf_counter() - started)

    assert statistics.median(took) >= 0.050
    assert answering_version(x, np.asarray(y)) == 2


def test_slow_candidates_primary_answers_as_version_1(tmp_path: Path) -> None:
    x = random_rows(4, seed=7)

    y = _run(slow_candidate(tmp_path, matmuls=8) / "1" / "model.onnx", x)

    assert answering_version(x, y) == 1


@pytest.fixture(scope="module")
def cancer(tmp_path_factory: pytest.TempPathFactory) -> ClassifierPair:
    return classifier_pair(tmp_path_factory.mktemp("cancer"))


def test_classifier_pair_is_exported_with_skl2onnx_defaults_zipmap_included(cancer: ClassifierPair) -> None:
    for version in (1, 2):
        graph = onnx.load(str(cancer.model_path(version))).graph

        assert "ZipMap" in {node.op_type for node in graph.node}
        assert [o.name for o in graph.output] == [CLASSIFIER_LABEL, "output_probability"]


def test_offline_comparison_counts_the_rows_whose_predicted_class_differs(cancer: ClassifierPair) -> None:
    inputs = cancer.inputs[:100]
    first, second = (predicted_labels(cancer.model_path(v), inputs) for v in (1, 2))

    comparison = offline_comparison(cancer, inputs)

    assert comparison.rows == 100
    assert comparison.disagreements == int(np.count_nonzero(first != second))


def test_classifier_pair_disagrees_on_some_rows_but_not_most(cancer: ClassifierPair) -> None:
    comparison = offline_comparison(cancer, cancer.inputs)

    assert 0 < comparison.disagreements < comparison.rows // 4
