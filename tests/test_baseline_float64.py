"""A baseline from a training file as pandas writes it (float64) sees the values the server will see: clients send
FP32, so the rows of the training file itself, sent to the server, fall into exactly the baseline's bins.

Issue 17: values on bin edges (26.96 → 26.9599991 in FP32) landed in the next bin, and clean traffic read as drift."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest

from serve.baseline.builder import BaselineOptions, build_baseline
from serve.baseline.model import load_model_info
from serve.baseline.sources import open_source
from serve.input_stats.baseline import Baseline
from serve.input_stats.binning import assign_bins, edges_from_quantiles, quantile_levels
from serve.input_stats.views import build_extractors
from tests.fixtures.sklearn_models import LABEL, WEATHER_COLUMNS, late_classifier, weather

MODEL = "late"
ROWS = 5000


@pytest.fixture(scope="module")
def train() -> pd.DataFrame:
    return weather(ROWS, seed=0)


@pytest.fixture(scope="module")
def repo(train: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repo")
    (root / MODEL / "1").mkdir(parents=True)
    onnx.save(late_classifier(train, zipmap=False), str(root / MODEL / "1" / "model.onnx"))
    return root


def _baseline(repo: Path, data: Path, **options: object) -> Baseline:
    info = load_model_info(repo, MODEL)
    opts = BaselineOptions(progress=False, calibration_replicates=0, **options)  # type: ignore[arg-type]
    source = open_source(str(data), info.inputs, ignore=[LABEL])
    return Baseline.from_dict(build_baseline(info, [source], opts))


def _served_bins(repo: Path, baseline: Baseline, rows: np.ndarray) -> dict[str, list[int]]:
    """Bin counts of ``rows`` as the server counts what clients send: FP32, through its own extractors."""
    info = load_model_info(repo, MODEL)
    out: dict[str, list[int]] = {}
    for extractor in build_extractors(info.inputs, "input", baseline):
        group = extractor.spec.new_group()
        group.update(extractor.extract(rows.astype(np.float32)))
        for feature, block in zip(extractor.features, group.to_json(), strict=True):
            out[feature.name] = block["bins"]["counts"]
    return out


def _written(train: pd.DataFrame, path: Path) -> Path:
    if path.suffix == ".csv":
        train.to_csv(path, index=False)
    else:
        train.to_parquet(path, index=False)
    return path


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_training_rows_sent_as_fp32_fill_the_baselines_bins_exactly(
    repo: Path, train: pd.DataFrame, tmp_path: Path, suffix: str
) -> None:
    baseline = _baseline(repo, _written(train, tmp_path / f"train{suffix}"))

    served = _served_bins(repo, baseline, train[WEATHER_COLUMNS].to_numpy())

    for feature in baseline.features:
        if feature.role == "input":
            assert feature.stats is not None
            assert served[feature.name] == feature.stats["bins"]["counts"], feature.name


def test_streamed_baseline_bins_fp32_rows_like_the_server(repo: Path, train: pd.DataFrame, tmp_path: Path) -> None:
    # Beyond the memory limit the edges come from quantile sketches and a second pass counts the bins.
    baseline = _baseline(repo, _written(train, tmp_path / "train.csv"), memory_limit_bytes=10_000, chunk_rows=500)

    served = _served_bins(repo, baseline, train[WEATHER_COLUMNS].to_numpy())

    for feature in baseline.features:
        if feature.role == "input":
            assert feature.stats is not None
            assert served[feature.name] == feature.stats["bins"]["counts"], feature.name


def test_baseline_edges_are_values_an_fp32_input_can_hold(repo: Path, train: pd.DataFrame, tmp_path: Path) -> None:
    baseline = _baseline(repo, _written(train, tmp_path / "train.csv"))

    for feature in baseline.features:
        if feature.role == "input":
            assert feature.edges is not None
            inner = feature.edges[:-1]  # the last edge is just above the maximum, to close the range
            assert np.array_equal(inner.astype(np.float32).astype(np.float64), inner), feature.name


def test_moments_and_range_are_those_of_the_fp32_values(repo: Path, train: pd.DataFrame, tmp_path: Path) -> None:
    baseline = _baseline(repo, _written(train, tmp_path / "train.csv"))

    features = {f.name: f for f in baseline.features if f.role == "input"}
    for name in WEATHER_COLUMNS:
        sent = train[name].to_numpy().astype(np.float32).astype(np.float64)
        stats = features[name].stats
        assert stats is not None
        assert (stats["min"], stats["max"]) == (sent.min(), sent.max())
        assert stats["mean"] == pytest.approx(sent.mean(), rel=1e-12)


def test_edges_from_float64_quantiles_put_fp32_values_in_the_bins_of_the_float64_values_they_come_from() -> None:
    # Two decimals, many repeated values: nearly every edge is one of them, and almost none is an FP32 value.
    rng = np.random.default_rng(3)
    values = np.round((np.round(rng.normal(60.0, 18.0, 5000)) - 32.0) * 5.0 / 9.0, 2)
    quantiles = np.quantile(values, quantile_levels(), method="inverted_cdf")
    in_float64 = edges_from_quantiles(values.min(), quantiles, values.max())

    edges = edges_from_quantiles(values.min(), quantiles, values.max(), np.float32)

    sent = values.astype(np.float32).astype(np.float64)
    assert np.array_equal(edges.astype(np.float32).astype(np.float64), edges)
    assert np.array_equal(assign_bins(edges, sent), assign_bins(in_float64, values))


def test_a_value_equal_to_an_edge_stays_on_it_when_sent_as_fp32() -> None:
    # The reported case: 26.96 is an edge; sent as FP32 it is 26.9599991, which must not fall below the edge.
    edges = edges_from_quantiles(20.0, [26.96], 30.0, np.float32)

    sent = np.array([26.96], dtype=np.float32).astype(np.float64)

    assert assign_bins(edges, sent).tolist() == [2]
