"""The core's request rules on shapes, directly: inputs whose only variable dimension is the batch
take a faster comparison than the rest, and both must judge alike."""

from __future__ import annotations

import numpy as np
import pytest

from serve.core.validation import ModelSignature, validate
from serve.errors import InvalidInput
from serve.types import InferRequest, InputTensor, TensorSpec


def _signature(max_batch_size: int, dims: tuple[int, ...]) -> ModelSignature:
    return ModelSignature.of("m", max_batch_size, [TensorSpec("x", "FP32", dims)], [TensorSpec("y", "FP32", (1,))])


def _request(shape: tuple[int, ...]) -> InferRequest:
    return InferRequest("m", inputs=[InputTensor("x", "FP32", np.zeros(shape, np.float32))])


@pytest.mark.parametrize(
    ("max_batch_size", "dims", "shape"),
    [
        (8, (3,), (2, 3)),  # only the batch varies
        (8, (-1, 3), (2, 5, 3)),  # an inner dimension varies too
        (0, (2, 3), (2, 3)),  # the model does not batch: the shape is taken literally
        (0, (-1, 3), (7, 3)),
    ],
)
def test_a_shape_that_fits_the_declared_dims_is_accepted(
    max_batch_size: int, dims: tuple[int, ...], shape: tuple[int, ...]
) -> None:
    valid = validate(_signature(max_batch_size, dims), _request(shape))

    assert valid.feeds["x"].shape == shape


@pytest.mark.parametrize(
    ("max_batch_size", "dims", "shape"),
    [
        (8, (3,), (2, 4)),  # wrong inner size
        (8, (3,), (3,)),  # no batch dimension
        (8, (3,), (2, 3, 1)),  # one dimension too many
        (8, (-1, 3), (2, 5, 4)),  # the fixed dimension after a variable one
        (8, (-1, 3), (2, 3)),  # rank
        (0, (2, 3), (3, 2)),
    ],
)
def test_a_shape_that_does_not_fit_is_refused_naming_both(
    max_batch_size: int, dims: tuple[int, ...], shape: tuple[int, ...]
) -> None:
    with pytest.raises(InvalidInput, match=r"unexpected shape for input 'x' for model 'm'\. Expected"):
        validate(_signature(max_batch_size, dims), _request(shape))


def test_without_requested_outputs_every_output_is_returned_in_the_models_order() -> None:
    signature = ModelSignature.of(
        "m", 8, [TensorSpec("x", "FP32", (3,))], [TensorSpec("b", "FP32", (1,)), TensorSpec("a", "INT64", (1,))]
    )

    valid = validate(signature, _request((1, 3)))

    assert list(valid.outputs) == [("b", "FP32"), ("a", "INT64")]
