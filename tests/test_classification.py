"""The classification extension's top-k formatting, as Triton writes it."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from serve.core.classification import classify, top_k
from serve.errors import InvalidInput
from serve.types import OutputTensor, RequestedOutput

PROBABILITIES = np.array([[0.1, 0.7, 0.2], [0.5, 0.25, 0.25]], dtype=np.float32)


def strings(output: OutputTensor) -> list[Any]:
    return np.vectorize(lambda b: b.decode(), otypes=[object])(output.data).tolist()


def test_top_k_per_row_is_score_index_label() -> None:
    output = top_k(OutputTensor("p", "FP32", PROBABILITIES), 2, ["cat", "dog", "eel"], batching=True)

    assert output.datatype == "BYTES"
    assert output.shape == (2, 2)
    assert strings(output) == [
        ["0.700000:1:dog", "0.200000:2:eel"],
        ["0.500000:0:cat", "0.250000:1:dog"],  # ties in index order
    ]


def test_label_is_left_out_where_the_class_has_none() -> None:
    output = top_k(OutputTensor("p", "FP32", PROBABILITIES[:1]), 3, ["cat", ""], batching=True)

    assert strings(output) == [["0.700000:1", "0.200000:2", "0.100000:0:cat"]]


def test_k_larger_than_the_classes_gives_every_class() -> None:
    output = top_k(OutputTensor("p", "FP32", PROBABILITIES), 10, [], batching=True)

    assert output.shape == (2, 3)


def test_model_without_batching_gives_one_list_of_k() -> None:
    output = top_k(OutputTensor("p", "FP64", PROBABILITIES[0].astype(np.float64)), 1, [], batching=False)

    assert output.shape == (1,)
    assert strings(output) == ["0.700000:1"]


def test_row_is_everything_after_the_batch_dimension() -> None:
    scores = np.arange(12, dtype=np.float32).reshape(2, 2, 3)

    output = top_k(OutputTensor("p", "FP32", scores), 2, [], batching=True)

    assert strings(output) == [["5.000000:5", "4.000000:4"], ["11.000000:5", "10.000000:4"]]


def test_integer_scores_are_printed_as_integers() -> None:
    output = top_k(OutputTensor("votes", "UINT8", np.array([[3, 250, 7]], dtype=np.uint8)), 2, [], batching=True)

    assert strings(output) == [["250:1", "7:2"]]


def test_bytes_output_cannot_be_classified() -> None:
    texts = np.array([[b"a"]], dtype=object)

    with pytest.raises(InvalidInput, match="class result not available for output 't'.*'BYTES'"):
        top_k(OutputTensor("t", "BYTES", texts), 1, [], batching=True)


@pytest.mark.parametrize("value", [-1, True, "2", 1.5])
def test_class_count_must_be_a_non_negative_integer(value: object) -> None:
    requested = [RequestedOutput("p", parameters={"classification": value})]

    with pytest.raises(InvalidInput, match="'classification' must be a non-negative integer"):
        classify([OutputTensor("p", "FP32", PROBABILITIES)], requested, {}, batching=True)


def test_only_outputs_asking_for_classes_are_replaced() -> None:
    outputs = [OutputTensor("p", "FP32", PROBABILITIES), OutputTensor("q", "FP32", PROBABILITIES)]
    requested = [RequestedOutput("p", parameters={"classification": 1}), RequestedOutput("q")]

    result = classify(outputs, requested, {"p": ["cat", "dog", "eel"]}, batching=True)

    assert strings(result[0]) == [["0.700000:1:dog"], ["0.500000:0:cat"]]
    assert result[1] is outputs[1]


def test_class_count_zero_means_no_classification() -> None:
    outputs = [OutputTensor("p", "FP32", PROBABILITIES)]

    assert classify(outputs, [RequestedOutput("p", parameters={"classification": 0})], {}, batching=True) == outputs
