"""Which output of a model labels join to (serve/ground_truth/targets.py)."""

from __future__ import annotations

import numpy as np
import pytest

from serve.ground_truth.targets import Target, target_of
from serve.types import TensorSpec


def test_an_sklearn_export_joins_to_its_probabilities_with_the_zipmap_classes() -> None:
    outputs = [TensorSpec("label", "INT64", ()), TensorSpec("probabilities", "FP32", (3,))]
    target = target_of(outputs, {"probabilities": ["setosa", "versicolor", "virginica"]})
    assert target == Target("probabilities", "classification", 3, ("setosa", "versicolor", "virginica"))


def test_the_first_float_output_with_a_class_axis_is_the_classification_target() -> None:
    outputs = [
        TensorSpec("embedding", "FP32", (2000,)),
        TensorSpec("logits", "FP16", (10,)),
        TensorSpec("scores", "FP64", (4,)),
    ]
    assert target_of(outputs, {}) == Target("logits", "classification", 10, ())


def test_a_classifier_output_is_chosen_before_an_earlier_regression_like_output() -> None:
    outputs = [TensorSpec("score", "FP32", (1,)), TensorSpec("probs", "FP32", (2,))]
    target = target_of(outputs, {})
    assert target is not None and target.output == "probs"


@pytest.mark.parametrize("dims", [(), (1,)])
def test_a_float_output_of_one_value_per_row_is_a_regression_target(dims: tuple[int, ...]) -> None:
    outputs = [TensorSpec("ids", "INT64", (1,)), TensorSpec("price", "FP32", dims)]
    assert target_of(outputs, {}) == Target("price", "regression", 0, ())


@pytest.mark.parametrize(
    "spec",
    [
        TensorSpec("k", "INT64", (3,)),
        TensorSpec("k", "FP32", (1001,)),
        TensorSpec("k", "FP32", (-1,)),
        TensorSpec("k", "FP32", (3, 3)),
        TensorSpec("k", "BYTES", ()),
    ],
)
def test_a_model_without_a_float_class_axis_or_scalar_has_no_target(spec: TensorSpec) -> None:
    assert target_of([spec], {}) is None


def test_labels_of_another_length_than_the_classes_are_not_used() -> None:
    target = target_of([TensorSpec("p", "FP32", (3,))], {"p": ["a", "b"]})
    assert target is not None and target.class_labels == ()


def test_probability_rows_are_kept_as_they_are() -> None:
    target = Target("p", "classification", 3, ())
    rows = np.array([[0.2, 0.3, 0.5], [1.0, 0.0, 0.0]], np.float32)
    np.testing.assert_array_equal(target.predictions(rows), rows.astype(np.float64))


def test_logit_rows_are_softmaxed_and_distribution_rows_beside_them_are_not() -> None:
    target = Target("p", "classification", 2, ())
    rows = np.array([[2.0, -1.0], [0.25, 0.75]])
    got = target.predictions(rows)
    np.testing.assert_allclose(got[0], np.exp([2.0, -1.0]) / np.exp([2.0, -1.0]).sum(), rtol=1e-15)
    np.testing.assert_array_equal(got[1], [0.25, 0.75])


@pytest.mark.parametrize("shape", [(4,), (4, 1)])
def test_regression_predictions_are_one_float64_per_row(shape: tuple[int, ...]) -> None:
    target = Target("y", "regression", 0, ())
    got = target.predictions(np.arange(4, dtype=np.float32).reshape(shape))
    assert got.dtype == np.float64 and got.tolist() == [0.0, 1.0, 2.0, 3.0]


def test_a_target_survives_its_json() -> None:
    target = Target("p", "classification", 2, ("no", "yes"))
    assert Target.from_json(target.to_json()) == target
