"""The no-drift calibration table: written by ``serve baseline``, seeded, bounded in time, optional for the server,
and read back by the monitor in place of the closed forms (serve/drift/calibration.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from serve.baseline.builder import BaselineOptions, build_baseline
from serve.baseline.model import load_model_info
from serve.baseline.sources import open_source
from serve.drift import calibration as cal
from serve.drift import measures as ms
from serve.input_stats.baseline import (
    Baseline,
    BaselineDocument,
    BaselineFeatureJson,
    build_baseline_features,
    make_baseline_document,
)
from serve.monitor.evaluate import evaluate_feature, noise_model
from serve.monitor.policy import Policy
from serve.types import TensorSpec
from tests.fixtures.monitoring import FEATURES, MODEL, Clock, live_block, recorder, sample, write_model

LEVEL = 1 - 0.01 / 6  # a numeric feature's measure level at the default budget


def _features(train: np.ndarray, categorical: tuple[str, ...] = ()) -> list[BaselineFeatureJson]:
    features, _ = build_baseline_features(
        {"x": train[:, None]}, [TensorSpec("x", "FP64", (1,))], categorical=categorical
    )
    return features


def _baseline(features: list[BaselineFeatureJson]) -> Baseline:
    return Baseline.from_dict(make_baseline_document({"name": "m", "version": "1"}, features, []))


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repo")
    write_model(root)
    np.save(root / "train.npy", sample(np.random.default_rng(1), 4000))
    return root


def _build(repo: Path, **options: object) -> BaselineDocument:
    info = load_model_info(repo, MODEL)
    opts = BaselineOptions(categorical=["x[2]"], feature_names={"x": FEATURES}, progress=False, **options)  # type: ignore[arg-type]
    return build_baseline(info, [open_source(str(repo / "train.npy"), info.inputs)], opts)


def test_serve_baseline_stores_a_table_per_numeric_and_categorical_feature(repo: Path) -> None:
    document = _build(repo, calibration_replicates=300)
    for f in document["features"]:
        table = f["null_calibration"]
        assert table["windows"] == list(cal.WINDOWS) and table["replicates"] == 300
        expected = cal.NUMERIC_MEASURES if f["kind"] == "numeric" else cal.CATEGORICAL_MEASURES
        assert set(table["measures"]) == set(expected)
        assert all(len(rows) == len(cal.WINDOWS) for rows in table["measures"].values())
    assert document["source"]["calibration"]["calibrated"] == len(document["features"])


def test_the_table_is_reproducible_from_its_seed(repo: Path) -> None:
    first = _build(repo, calibration_replicates=200, holdout=0.0)
    again = _build(repo, calibration_replicates=200, holdout=0.0)
    other = _build(repo, calibration_replicates=200, holdout=0.0, seed=1)
    assert [f["null_calibration"] for f in first["features"]] == [f["null_calibration"] for f in again["features"]]
    assert first["features"][0]["null_calibration"] != other["features"][0]["null_calibration"]


def test_features_beyond_the_time_budget_keep_the_closed_form(repo: Path) -> None:
    document = _build(repo, calibration_replicates=200, calibration_time_s=0.0, holdout=0.0)
    report = document["source"]["calibration"]
    assert report["calibrated"] == 0 and sorted(report["skipped"]) == sorted(FEATURES)
    baseline = Baseline.from_dict(document)
    model = noise_model(baseline.features[0])
    assert model is not None and model.source("ks") == "closed form"


def test_the_server_records_the_same_with_or_without_the_table(repo: Path) -> None:
    with_table = Baseline.from_dict(_build(repo, calibration_replicates=200, holdout=0.0))
    without = Baseline.from_dict(_build(repo, calibration_replicates=0, holdout=0.0))
    assert all("null_calibration" not in f for f in without.document["features"])
    x = sample(np.random.default_rng(2), 700)
    documents = []
    for baseline in (with_table, without):
        clock = Clock()
        rec = recorder(baseline, clock)
        rec.submit({"x": x}, {"probabilities": np.full((len(x), 3), 1 / 3, dtype=np.float32)})
        assert rec.flush(10.0)
        documents.append([w["features"] for w in rec.export(0)["windows"]])
        rec.close()
    assert documents[0] == documents[1]


def test_an_unknown_table_format_falls_back_to_the_closed_form() -> None:
    features = _features(np.random.default_rng(3).standard_normal(2000))
    features[0]["null_calibration"] = {"method": "something-else", "windows": [1, 2]}
    model = noise_model(_baseline(features).features[0])
    assert model is not None and model.source("psi") == "closed form"


def test_batch_measures_equal_the_monitors_measures_replicate_by_replicate() -> None:
    rng = np.random.default_rng(4)
    p = rng.multinomial(900, np.full(12, 1 / 12), size=5).astype(float)
    q = rng.multinomial(300, np.full(12, 1 / 12), size=5).astype(float)
    x = np.sort(rng.normal(size=12))
    for i in range(5):
        assert cal.batch_psi(p, q)[i] == pytest.approx(ms.psi(p[i], q[i]), abs=1e-12)
        assert cal.batch_js(p, q)[i] == pytest.approx(ms.js_distance(p[i], q[i]), abs=1e-12)
        assert cal.batch_ks(p, q)[i] == pytest.approx(ms.ks_binned(p[i], q[i])[0], abs=1e-12)
        w = ms.wasserstein_points(x, p[i] / p[i].sum(), x, q[i] / q[i].sum())
        assert cal.batch_wasserstein(p, q, x, 2.0)[i] == pytest.approx(w / 2.0, abs=1e-12)


def test_table_quantiles_agree_with_a_two_sample_simulation_from_the_population() -> None:
    """The bootstrap from a baseline of 20,000 values against fresh baselines and windows from the population."""
    rng = np.random.default_rng(5)
    features = _features(rng.poisson(3, 20_000).astype(float))
    cal.calibrate_features(features, replicates=2000, seed=5)
    baseline = _baseline(features)
    f = baseline.features[0]
    model = noise_model(f)
    assert model is not None and model.source("ks") == "calibrated"
    ks = [evaluate_feature(f, live_block(baseline, rng.poisson(3, 1000).astype(float)), Policy()).measures["ks"].value
          for _ in range(400)]  # fmt: skip
    for level in (0.5, 0.9):
        assert float(model.quantile("ks", 1000, level)) == pytest.approx(np.quantile(ks, level), rel=0.12)


def test_quantiles_interpolate_between_and_extend_beyond_the_ladder() -> None:
    features = _features(np.random.default_rng(6).standard_normal(5000))
    cal.calibrate_features(features, replicates=500, seed=6)
    table = cal.NullTable.parse(features[0]["null_calibration"])
    assert table is not None
    q = table.quantile("ks", np.array([1000, 1500, 2000, 10**7]), 0.95)
    assert q[0] == pytest.approx(features[0]["null_calibration"]["measures"]["ks"][3][2], rel=1e-4)
    assert q[0] > q[1] > q[2] > q[3] > 0  # shrinks with N, towards the baseline's own noise
    assert q[3] == pytest.approx(q[2] * np.sqrt((1e-7 + 1 / 5000) / (1 / 2000 + 1 / 5000)), rel=0.25)


def test_the_calibrated_ceiling_is_tighter_than_the_closed_form_for_near_constant_features() -> None:
    rng = np.random.default_rng(7)
    train = np.where(rng.random(10_000) < 0.98, 0.0, rng.integers(1, 6, 10_000).astype(float))
    features = _features(train)
    cal.calibrate_features(features, replicates=1000, seed=7)
    model = noise_model(_baseline(features).features[0])
    assert model is not None
    closed = model.ctx
    from serve.monitor.policy import closed_form_quantile

    assert float(model.quantile("ks", 500, LEVEL)) < 0.5 * float(closed_form_quantile("ks", 500, closed, LEVEL))
