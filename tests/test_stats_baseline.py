"""baseline.json: building from training data, writing, reading, validating (serve.input_stats.baseline)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest

from serve.input_stats.baseline import (
    Baseline,
    BaselineDocument,
    BaselineError,
    baseline_mismatches,
    build_baseline_features,
    make_baseline_document,
    write_baseline,
)
from serve.input_stats.recorder import StatsOptions, StatsRecorder
from serve.input_stats.windows import ServerInstance
from serve.types import TensorSpec

RNG = np.random.default_rng(11)
SPECS = [TensorSpec("x", "FP32", (3,)), TensorSpec("city", "BYTES", ())]


def _training(rows: int = 5000) -> dict[str, np.ndarray]:
    x = np.stack(
        [RNG.normal(50, 10, rows), RNG.lognormal(size=rows), RNG.integers(0, 4, rows).astype(float)], axis=1
    ).astype(np.float32)
    x[:7, 0] = -1  # a declared missing sentinel
    city = RNG.choice(np.array([b"berlin", b"paris", b"rome"], dtype=object), size=rows, p=[0.5, 0.3, 0.2])
    return {"x": x, "city": city}


def _build(data: dict[str, np.ndarray]) -> BaselineDocument:
    features, tensors = build_baseline_features(
        data,
        SPECS,
        categorical={"kind", "city"},
        feature_names={"x": ["age", "income", "kind"]},
        missing_values={"age": [-1]},
        n_quantiles=20,
    )
    return make_baseline_document({"name": "m", "version": "1"}, features, tensors, source={"rows": 5000})


def test_built_features_are_named_declared_and_binned() -> None:
    document = _build(_training())
    by_name = {f["name"]: f for f in document["features"]}
    assert list(by_name) == ["age", "income", "kind", "city"]
    assert [by_name[n]["kind"] for n in by_name] == ["numeric", "numeric", "categorical", "categorical"]
    assert by_name["age"]["stats"]["missing"] == 7
    assert len(by_name["income"]["stats"]["bins"]["counts"]) == len(by_name["income"]["edges"]) + 1
    assert by_name["income"]["stats"]["bins"]["counts"][0] == 0  # nothing below the training minimum
    assert set(by_name["kind"]["vocabulary"]) == {0, 1, 2, 3}
    assert by_name["city"]["vocabulary"] == ["berlin", "paris", "rome"]
    assert by_name["age"]["std"] == pytest.approx(10, rel=0.05)


def test_the_server_bins_training_data_exactly_as_the_baseline_did(tmp_path: Path) -> None:
    data = _training()
    path = tmp_path / "baseline.json"
    sha = write_baseline(_build(data), path)
    baseline = Baseline.load(path)
    assert baseline.sha256 == sha
    options = StatsOptions(queue_size=100)  # 79 batches submitted faster than any worker drains them
    rec = StatsRecorder("m", 1, SPECS, [], instance=ServerInstance("i", "r", 0.0), baseline=baseline, options=options)
    try:
        for i in range(0, 5000, 64):
            rec.submit({"x": data["x"][i : i + 64], "city": data["city"][i : i + 64]}, {})
        assert rec.flush(10)
        live = rec.export()["total"]["features"]
    finally:
        rec.close()
    for f in baseline.features:
        expected, got = f.stats, live[f.name]
        assert got["count"] == expected["count"] and got["missing"] == expected["missing"]
        if f.kind == "numeric":
            assert got["bins"]["counts"] == expected["bins"]["counts"]
            assert got["mean"] == pytest.approx(expected["mean"], rel=1e-9)
        else:
            assert got["counts"] == expected["counts"] and got["other"] == expected["other"] == 0


def test_the_document_round_trips_through_the_file(tmp_path: Path) -> None:
    document = _build(_training(500))
    write_baseline(document, tmp_path / "b.json")
    assert orjson.loads((tmp_path / "b.json").read_bytes()) == document
    baseline = Baseline.load(tmp_path / "b.json")
    assert baseline.tensor("input", "x").feature_names == ("age", "income", "kind")
    assert baseline.feature("input", "x", 1, None).name == "income"
    assert baseline.feature("input", "x", 9, None) is None


def _minimal(**feature: object) -> dict:
    base = {"name": "a", "role": "input", "tensor": "a", "column": None, "view": None, "kind": "numeric"}
    return {"format": "serve.baseline", "format_version": 1, "model": {}, "features": [{**base, **feature}]}


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"format": "other"}, "not a baseline"),
        ({**_minimal(), "format_version": 99}, "format_version"),
        (_minimal(edges=[1.0, 1.0]), "strictly increasing"),
        (_minimal(edges=[0.0, float("nan")]), "finite"),
        (_minimal(kind="categorical"), "vocabulary"),
        (_minimal(kind="ordinal"), "kind"),
        (_minimal(edges=[0.0], stats={"bins": {"counts": [1, 2, 3]}}), "bin counts"),
    ],
    ids=["format", "version", "unsorted", "nan-edge", "no-vocabulary", "bad-kind", "count-mismatch"],
)
def test_an_invalid_baseline_is_rejected_with_a_reason(document: dict, message: str) -> None:
    with pytest.raises(BaselineError, match=message):
        Baseline.from_dict(document)


def test_a_file_that_is_not_json_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "b.json").write_text("{nope")
    with pytest.raises(BaselineError, match="not valid JSON"):
        Baseline.load(tmp_path / "b.json")


def test_training_data_of_the_wrong_shape_is_a_clear_error() -> None:
    with pytest.raises(BaselineError, match="does not match"):
        build_baseline_features({"x": np.zeros((4, 2)), "city": np.array([b"a"] * 4, dtype=object)}, SPECS)


def test_a_baseline_that_fits_the_model_has_no_mismatches() -> None:
    baseline = Baseline.from_dict(_build(_training(300)))
    assert baseline_mismatches(baseline, SPECS, []) == []


def test_a_stale_baseline_reports_each_mismatch() -> None:
    baseline = Baseline.from_dict(_build(_training(300)))
    # The model now has a 2-column x and no city input.
    problems = baseline_mismatches(baseline, [TensorSpec("x", "FP32", (2,))], [])
    assert any("3 feature names for 2 columns" in p for p in problems)
    fewer = Baseline.from_dict({**_build(_training(300)), "tensors": []})
    problems = baseline_mismatches(fewer, [TensorSpec("x", "FP32", (2,))], [])
    assert sorted(p.split("'")[1] for p in problems) == ["city", "kind"]
