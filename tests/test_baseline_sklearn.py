"""``serve baseline`` for scikit-learn classifiers exported the default way (``to_onnx(clf, X[:1])``, ZipMap
included) and for MLflow model directories holding them: the outputs are described as the server serves and
records them (probabilities per class, the classifier's views, the label), so the server bins against the baseline.

Issue 17: the baseline refused them with "output 'output_probability' has type seq(map(int64,tensor(float)))"."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow.onnx
import numpy as np
import onnx
import pandas as pd
import pytest
from mlflow.models import Model, infer_signature

from serve.baseline.model import check_baseline, load_model_info
from serve.cli import main
from serve.input_stats.baseline import Baseline
from tests.fixtures.inprocess import in_process
from tests.fixtures.sklearn_models import (
    LABEL,
    WEATHER_COLUMNS,
    late_classifier,
    pipeline,
    weather,
)

ROWS = 3000


def _baseline(repo: Path, model: str, data: Path, *extra: str) -> Baseline:
    args = ["baseline", "--model-repository", str(repo), "--model", model, "--data", str(data), "--no-progress"]
    # The calibration table is tested in test_drift_calibration.py and costs seconds here.
    assert main([*args, "--calibration-replicates", "0", *extra]) == 0
    return Baseline.load(repo / model / "baseline.json")


def _outputs(baseline: Baseline) -> dict[str, Any]:
    return {f.name: f for f in baseline.features if f.role == "output"}


@pytest.fixture(scope="module")
def train() -> pd.DataFrame:
    return weather(ROWS, seed=0)


@pytest.fixture(scope="module")
def csv(train: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "train.csv"
    train.to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def repo(train: pd.DataFrame, csv: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repo")
    (root / "late" / "1").mkdir(parents=True)
    onnx.save(late_classifier(train), str(root / "late" / "1" / "model.onnx"))
    _baseline(root, "late", csv, "--ignore-column", LABEL)
    return root


def test_default_export_gets_probabilities_per_class_classifier_views_and_the_label(repo: Path) -> None:
    outputs = _outputs(Baseline.load(repo / "late" / "baseline.json"))

    assert sorted(outputs) == sorted(
        [
            "output_label",
            "output_probability[0]",
            "output_probability[1]",
            "output_probability::predicted_class",
            "output_probability::confidence",
            "output_probability::margin",
            "output_probability::entropy",
        ]
    )
    assert outputs["output_probability::predicted_class"].kind == "categorical"
    assert list(outputs["output_probability::predicted_class"].vocabulary) == [0, 1]
    assert outputs["output_probability[1]"].kind == "numeric"
    assert outputs["output_probability[1]"].stats["count"] > 0.05 * ROWS  # the held-out sample ran through it


def test_baseline_of_the_default_export_fits_the_model_as_the_server_loads_it(repo: Path) -> None:
    assert check_baseline(Baseline.load(repo / "late" / "baseline.json"), load_model_info(repo, "late")) == []


async def test_the_server_records_the_baselines_features_with_its_kinds_and_edges(repo: Path) -> None:
    baseline = Baseline.load(repo / "late" / "baseline.json")

    async with in_process(repo) as server:
        version = server.service.repository.get("late", "")
        assert server.stats.baseline(version).baseline is not None  # used, not refused as misfit
        recorded = json.loads(server.stats.recorder(version).export_json(0))["features"]

    assert [(f["role"], f["name"], f["kind"]) for f in recorded] == [
        (f.role, f.name, f.kind) for f in baseline.features
    ]
    for served, declared in zip(recorded, baseline.features, strict=True):
        if declared.kind == "numeric":
            assert declared.edges is not None
            assert served["edges"] == declared.edges.tolist(), declared.name


def test_string_class_labels_are_described_as_the_server_returns_them(tmp_path: Path) -> None:
    # A pipeline over numeric and text columns, with class names as labels: the label output is text.
    exported = pipeline()
    (tmp_path / "repo" / "flowers" / "1").mkdir(parents=True)
    onnx.save(exported.onnx_model, str(tmp_path / "repo" / "flowers" / "1" / "model.onnx"))
    exported.frame.to_csv(tmp_path / "train.csv", index=False)

    outputs = _outputs(_baseline(tmp_path / "repo", "flowers", tmp_path / "train.csv", "--holdout", "1"))

    assert outputs["output_label"].kind == "bytes"
    assert outputs["output_label"].stats["count"] == len(exported.frame)
    assert list(outputs["output_probability::predicted_class"].vocabulary) == [0, 1, 2]


def _mlflow(exported_model: onnx.ModelProto, version_dir: Path, signature: Any) -> None:
    mlflow.onnx.save_model(
        exported_model,
        str(version_dir),
        signature=signature,
        mlflow_model=Model(run_id="4f1c2d3e5a6b7c8d9e0f1a2b3c4d5e6f"),
        pip_requirements=["onnx", "onnxruntime"],  # else MLflow infers them in a subprocess, seconds each
    )


def test_mlflow_model_directory_gets_the_outputs_its_signature_serves(
    train: pd.DataFrame, csv: Path, tmp_path: Path
) -> None:
    x = train[WEATHER_COLUMNS].to_numpy(np.float32)[:5]
    model = late_classifier(train)
    probabilities = np.full((5, 2), 0.5, dtype=np.float32)
    labels = np.zeros(5, dtype=np.int64)
    both = infer_signature(x, {"output_label": labels, "output_probability": probabilities})
    _mlflow(model, tmp_path / "late" / "1", both)
    # Named outputs are the ones served: here only the probabilities.
    _mlflow(model, tmp_path / "probabilities" / "1", infer_signature(x, {"output_probability": probabilities}))

    with_label = _outputs(_baseline(tmp_path, "late", csv, "--ignore-column", LABEL))
    without = _outputs(_baseline(tmp_path, "probabilities", csv, "--ignore-column", LABEL))

    assert "output_label" in with_label and "output_probability::predicted_class" in with_label
    assert "output_label" not in without and "output_probability::predicted_class" in without
    for name in ("late", "probabilities"):
        assert check_baseline(Baseline.load(tmp_path / name / "baseline.json"), load_model_info(tmp_path, name)) == []
