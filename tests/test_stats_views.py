"""Which features each tensor yields (serve.input_stats.views) and what their values are."""

from __future__ import annotations

import numpy as np
import pytest

from serve.input_stats.baseline import Baseline, BaselineFeature, BaselineTensor
from serve.input_stats.blocks import CategoricalSpec, NumericSpec
from serve.input_stats.views import build_extractors
from serve.types import TensorSpec

RNG = np.random.default_rng(3)


def _names(extractors) -> list[str]:
    return [f.name for ex in extractors for f in ex.features]


def _values(extractors, array: np.ndarray) -> dict[str, np.ndarray]:
    out = {}
    for ex in extractors:
        for f, row in zip(ex.features, ex.extract(array), strict=True):
            out[f.name] = row
    return out


def test_a_2d_input_yields_one_feature_per_column() -> None:
    extractors = build_extractors([TensorSpec("x", "FP32", (3,))], "input")
    assert _names(extractors) == ["x[0]", "x[1]", "x[2]"]
    x = RNG.normal(size=(5, 3)).astype(np.float32)
    assert np.array_equal(_values(extractors, x)["x[2]"], x[:, 2].astype(np.float64))


def test_a_scalar_per_row_input_is_one_feature_named_after_the_tensor() -> None:
    assert _names(build_extractors([TensorSpec("age", "INT64", ())], "input")) == ["age"]


def test_the_baseline_names_columns_and_declares_categorical_ones() -> None:
    baseline = Baseline(
        model={},
        tensors=[BaselineTensor("x", "input", feature_names=("age", "country"))],
        features=[BaselineFeature("country", "input", "x", 1, None, "categorical", vocabulary=(3, 7))],
    )
    extractors = build_extractors([TensorSpec("x", "FP32", (2,))], "input", baseline)
    kinds = {f.name: f.kind for ex in extractors for f in ex.features}
    assert kinds == {"age": "numeric", "country": "categorical"}
    cat = next(ex for ex in extractors if isinstance(ex.spec, CategoricalSpec))
    assert isinstance(cat.spec, CategoricalSpec) and cat.spec.vocabularies == [[3, 7]]
    x = np.array([[30.0, 7.0], [40.0, 3.0]])
    assert _values(extractors, x)["country"].tolist() == [7.0, 3.0]


def test_a_baseline_can_switch_a_tensor_off() -> None:
    baseline = Baseline(model={}, features=[], tensors=[BaselineTensor("x", "input", view="none")])
    assert build_extractors([TensorSpec("x", "FP32", (4,))], "input", baseline) == []


def test_a_wide_float_row_is_an_embedding_with_norm_mean_and_std() -> None:
    extractors = build_extractors([TensorSpec("e", "FP32", (512,))], "input")
    assert _names(extractors) == ["e::l2_norm", "e::mean", "e::std"]
    e = RNG.normal(size=(4, 512)).astype(np.float32)
    values = _values(extractors, e)
    assert values["e::l2_norm"] == pytest.approx(np.linalg.norm(e.astype(np.float64), axis=1))
    assert values["e::std"] == pytest.approx(e.astype(np.float64).std(axis=1))


def test_variable_length_token_ids_yield_length_and_nonzero_count() -> None:
    extractors = build_extractors([TensorSpec("ids", "INT64", (-1,))], "input")
    ids = np.array([[5, 9, 0, 0], [1, 2, 3, 0]])
    values = _values(extractors, ids)
    assert values["ids::length"].tolist() == [4, 4]
    assert values["ids::nonzero"].tolist() == [2, 3]


def test_an_image_yields_per_channel_mean_and_std() -> None:
    extractors = build_extractors([TensorSpec("img", "FP32", (3, 8, 8))], "input")
    names = _names(extractors)
    assert names[:3] == ["img::mean[0]", "img::mean[1]", "img::mean[2]"]
    assert "img::zero_fraction" in names
    img = RNG.uniform(size=(2, 3, 8, 8)).astype(np.float32)
    img[1, 2] = 0
    values = _values(extractors, img)
    assert values["img::mean[1]"] == pytest.approx(img[:, 1].reshape(2, -1).mean(axis=1), rel=1e-6)
    assert values["img::std[0]"] == pytest.approx(img[:, 0].reshape(2, -1).std(axis=1), rel=1e-5)
    assert values["img::zero_fraction"].tolist() == pytest.approx([0.0, 1 / 3])


def test_a_channels_last_image_is_recognised() -> None:
    extractors = build_extractors([TensorSpec("img", "UINT8", (-1, -1, 3))], "input")
    names = _names(extractors)
    assert "img::mean[2]" in names and "img::height" in names and "img::width" in names
    img = RNG.integers(0, 255, size=(2, 4, 6, 3), dtype=np.uint8)
    values = _values(extractors, img)
    assert values["img::mean[2]"] == pytest.approx(img[..., 2].reshape(2, -1).mean(axis=1))
    assert values["img::width"].tolist() == [6, 6]


def test_a_probability_output_yields_classifier_views() -> None:
    extractors = build_extractors([TensorSpec("probs", "FP32", (3,))], "output")
    names = _names(extractors)
    assert names == [
        "probs[0]", "probs[1]", "probs[2]",
        "probs::predicted_class", "probs::confidence", "probs::margin", "probs::entropy",
    ]  # fmt: skip
    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]], dtype=np.float32)
    values = _values(extractors, p)
    p64 = p.astype(np.float64)
    assert values["probs::predicted_class"].tolist() == [0, 2]
    assert values["probs::confidence"] == pytest.approx([0.7, 0.8])
    assert values["probs::margin"] == pytest.approx([0.5, 0.7])
    assert values["probs::entropy"] == pytest.approx(-(p64 * np.log(p64)).sum(axis=1))
    cat = next(ex for ex in extractors if isinstance(ex.spec, CategoricalSpec))
    assert isinstance(cat.spec, CategoricalSpec) and cat.spec.vocabularies == [[0, 1, 2]]


def test_logits_pass_through_softmax_before_confidence() -> None:
    extractors = build_extractors([TensorSpec("logits", "FP32", (2,))], "output")
    logits = np.array([[2.0, 0.0]])
    confidence = _values(extractors, logits)["logits::confidence"]
    assert confidence == pytest.approx([np.exp(2) / (np.exp(2) + 1)])


def test_an_input_is_never_read_as_a_classifier() -> None:
    names = _names(build_extractors([TensorSpec("x", "FP32", (3,))], "input"))
    assert not any("::" in n for n in names)


def test_bytes_columns_are_bytes_features_and_other_datatypes_are_skipped() -> None:
    extractors = build_extractors([TensorSpec("s", "BYTES", (2,)), TensorSpec("h", "BF16", (2,))], "input")
    assert [(f.name, f.kind) for ex in extractors for f in ex.features] == [
        ("s[0]", "bytes"),
        ("s[1]", "bytes"),
    ]


def test_an_extractor_rejects_arrays_of_another_row_shape() -> None:
    (ex,) = build_extractors([TensorSpec("x", "FP32", (3,))], "input")
    assert ex.accepts(np.zeros((4, 3)))
    assert not ex.accepts(np.zeros((4, 2)))
    assert not ex.accepts(np.zeros(4))
    assert isinstance(ex.spec, NumericSpec)
