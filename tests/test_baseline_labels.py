"""``serve baseline --labels COLUMN`` as users run it: a scikit-learn model exported with skl2onnx's default options
(ZipMap), training data written by pandas (``to_csv(index=False)``) with the label among the columns, the CLI in
its own process. baseline.json then holds ``performance``: held-out metrics and the calibration of the
prediction's confidence, in the bins the server counts ``<output>::confidence`` in.

Last, issue 21's done-when: on statsmodels' randhie, the accuracy estimated from a covariate-shifted window's
binned confidence is within 0.02 of the window's realized accuracy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import pytest
from skl2onnx import to_onnx
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.metrics import accuracy_score, f1_score, log_loss, mean_absolute_error, roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import PolynomialFeatures, StandardScaler

from serve.ground_truth.estimate import EstimateJson, estimate_accuracy
from serve.input_stats.baseline import Baseline, BaselineError
from serve.input_stats.extracts import classifier_views
from serve.input_stats.numeric_group import NumericSpec

ROOT = Path(__file__).resolve().parents[1]


def serve_baseline(repo: Path, model: str, data: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """The CLI in its own process, every held-out row (``--holdout 1``), no no-drift table (seconds, tested
    elsewhere)."""
    args = ["--model-repository", str(repo), "--model", model, "--data", str(data), "--no-progress"]
    args += ["--holdout", "1", "--calibration-replicates", "0", *extra]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "serve", "baseline", *args], capture_output=True, text=True, env=env, timeout=300
    )


def export(repo: Path, name: str, model: Any, x: np.ndarray) -> None:
    (repo / name / "1").mkdir(parents=True)
    onnx.save(to_onnx(model, x[:1]), str(repo / name / "1" / "model.onnx"))  # default options: ZipMap


def table(x: np.ndarray, columns: list[str], label: str, y: Any) -> pd.DataFrame:
    frame = pd.DataFrame({label: y})  # the label first: it is no input, wherever it stands
    return pd.concat([frame, pd.DataFrame(x.astype(np.float64), columns=columns)], axis=1)


def performance(repo: Path, model: str) -> dict[str, Any]:
    section: dict[str, Any] = json.loads((repo / model / "baseline.json").read_bytes())["performance"]
    return section


def onnx_probabilities(repo: Path, model: str, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(repo / model / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    _, maps = session.run(None, {session.get_inputs()[0].name: x})
    return np.array([[row[k] for k in sorted(row)] for row in maps], dtype=np.float32)


# ---------------------------------------------------------------- a binary classifier


@dataclass
class Binary:
    repo: Path
    data: Path
    x: np.ndarray
    y: np.ndarray
    model: Any


@pytest.fixture(scope="module")
def binary(tmp_path_factory: pytest.TempPathFactory) -> Binary:
    root = tmp_path_factory.mktemp("labels")
    d = load_breast_cancer()
    x = d.data.astype(np.float32)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(x, d.target)
    export(root / "repo", "cancer", model, x)
    table(x, list(d.feature_names), "y", d.target).to_csv(root / "train.csv", index=False)
    done = serve_baseline(root / "repo", "cancer", root / "train.csv", "--labels", "y")
    assert done.returncode == 0, done.stderr
    return Binary(root / "repo", root / "train.csv", x, d.target, model)


def test_labels_add_a_performance_section_for_the_probability_output(binary: Binary) -> None:
    section = performance(binary.repo, "cancer")

    assert (section["output"], section["task"], section["label_column"]) == (
        "output_probability",
        "classification",
        "y",
    )
    assert section["classes"] == ["0", "1"]
    assert section["held_out"]["rows"] == len(binary.y)


def test_label_column_is_not_a_model_input(binary: Binary) -> None:
    baseline = Baseline.load(binary.repo / "cancer" / "baseline.json")

    assert not [f for f in baseline.features if f.role == "input" and f.name == "y"]
    assert len([f for f in baseline.features if f.role == "input"]) == binary.x.shape[1]


@pytest.mark.filterwarnings("ignore:The y_prob values do not sum to one")  # FP32 probabilities, as served
def test_held_out_metrics_equal_scikit_learns_on_the_same_rows(binary: Binary) -> None:
    held = performance(binary.repo, "cancer")["held_out"]
    proba = onnx_probabilities(binary.repo, "cancer", binary.x).astype(np.float64)
    accuracy = accuracy_score(binary.y, binary.model.predict(binary.x))

    assert held["accuracy"] == pytest.approx(accuracy, abs=1e-12)
    assert held["accuracy_se"] == pytest.approx(np.sqrt(accuracy * (1 - accuracy) / len(binary.y)))
    assert held["f1"] == pytest.approx(f1_score(binary.y, binary.model.predict(binary.x)), abs=1e-12)
    assert held["auc"] == pytest.approx(roc_auc_score(binary.y, proba[:, 1]), abs=1e-12)
    assert held["log_loss"] == pytest.approx(log_loss(binary.y, proba), rel=1e-9)


def test_calibration_bins_are_the_servers_confidence_bins(binary: Binary) -> None:
    calibration = performance(binary.repo, "cancer")["calibration"]
    baseline = Baseline.load(binary.repo / "cancer" / "baseline.json")
    feature = next(f for f in baseline.features if f.name == "output_probability::confidence")

    assert calibration["feature"] == "output_probability::confidence"
    assert calibration["edges"] == feature.edges.tolist()
    assert calibration["count"] == feature.stats["bins"]["counts"]
    assert sum(calibration["count"]) == len(binary.y)


def test_calibration_is_a_monotone_share_of_correct_predictions(binary: Binary) -> None:
    calibration = performance(binary.repo, "cancer")["calibration"]
    p = np.asarray(calibration["p_correct"])
    count = np.asarray(calibration["count"])

    assert (np.diff(p) >= 0).all()
    assert count @ p == pytest.approx(sum(calibration["correct"]))  # pooling keeps each block's total


def test_labels_from_parquet_and_npz_give_the_same_performance(binary: Binary, tmp_path: Path) -> None:
    d = load_breast_cancer()
    table(binary.x, list(d.feature_names), "y", binary.y).to_parquet(tmp_path / "train.parquet", index=False)
    np.savez(tmp_path / "train.npz", X=binary.x, y=binary.y)
    expected = performance(binary.repo, "cancer")

    for data in ("train.parquet", "train.npz"):
        out = tmp_path / f"{data}.json"
        done = serve_baseline(binary.repo, "cancer", tmp_path / data, "--labels", "y", "--out", str(out))

        assert done.returncode == 0, done.stderr
        assert json.loads(out.read_bytes())["performance"] == expected


def test_a_baseline_whose_calibration_does_not_fit_its_bins_is_refused(binary: Binary) -> None:
    document = json.loads((binary.repo / "cancer" / "baseline.json").read_bytes())
    document["performance"]["calibration"]["p_correct"].pop()

    with pytest.raises(BaselineError, match="calibration has"):
        Baseline.from_dict(document)


def test_missing_label_column_is_a_one_line_error(binary: Binary) -> None:
    done = serve_baseline(binary.repo, "cancer", binary.data, "--labels", "outcome", "--out", os.devnull)

    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1
    assert done.stderr.startswith("serve baseline: --labels outcome: no such column in train.csv (columns: ['y', ")


# ---------------------------------------------------------------- classes named by text, and a regressor


@pytest.fixture(scope="module")
def iris(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    root = tmp_path_factory.mktemp("iris")
    d = load_iris()
    x = d.data.astype(np.float32)
    names = d.target_names[d.target]  # "setosa", "versicolor", "virginica": ZipMap's string class labels
    export(root / "repo", "iris", LogisticRegression(max_iter=1000).fit(x, names), x)
    return root / "repo", table(x, ["sl", "sw", "pl", "pw"], "species", names)


def test_labels_that_are_class_names_map_to_the_outputs_class_labels(
    iris: tuple[Path, pd.DataFrame], tmp_path: Path
) -> None:
    repo, frame = iris
    frame.to_csv(tmp_path / "iris.csv", index=False)

    done = serve_baseline(repo, "iris", tmp_path / "iris.csv", "--labels", "species")

    assert done.returncode == 0, done.stderr
    section = performance(repo, "iris")
    assert section["classes"] == ["setosa", "versicolor", "virginica"]
    assert section["held_out"]["accuracy"] > 0.9


def test_a_label_that_is_no_class_is_an_error_naming_it_and_the_classes(
    iris: tuple[Path, pd.DataFrame], tmp_path: Path
) -> None:
    repo, frame = iris
    frame.loc[7, "species"] = "daisy"
    frame.to_csv(tmp_path / "iris.csv", index=False)

    done = serve_baseline(repo, "iris", tmp_path / "iris.csv", "--labels", "species", "--out", os.devnull)

    assert done.returncode == 2
    assert "label 'daisy' (1 held-out rows) is not a class of output 'output_probability'" in done.stderr
    assert "['setosa', 'versicolor', 'virginica']" in done.stderr


def test_a_regressor_gets_mae_rmse_and_bias(tmp_path: Path) -> None:
    d = load_diabetes()
    x = d.data.astype(np.float32)
    model = LinearRegression().fit(x, d.target)
    export(tmp_path / "repo", "diabetes", model, x)
    table(x, list(d.feature_names), "progression", d.target).to_csv(tmp_path / "train.csv", index=False)

    done = serve_baseline(tmp_path / "repo", "diabetes", tmp_path / "train.csv", "--labels", "progression")

    assert done.returncode == 0, done.stderr
    section = performance(tmp_path / "repo", "diabetes")
    assert (section["task"], section["output"]) == ("regression", "variable")
    assert "calibration" not in section
    assert section["held_out"]["mae"] == pytest.approx(mean_absolute_error(d.target, model.predict(x)), rel=1e-5)


# ---------------------------------------------------------------- issue 21's done-when: the estimate


@dataclass
class Shifted:
    """A classifier's reference rows (through ``serve baseline --labels``) and a covariate-shifted window."""

    calibration: dict[str, Any]
    reference_proba: np.ndarray  # class 1's probability per reference row (onnxruntime)
    reference_predicted: np.ndarray
    reference_y: np.ndarray
    window_proba: np.ndarray
    window_predicted: np.ndarray  # the argmax of the probabilities, as the server's predicted_class
    window_y: np.ndarray
    window_counts: list[int]  # the window's confidence, counted as the server counts it

    @property
    def realized(self) -> float:
        return float(np.mean(self.window_predicted == self.window_y))

    def estimate(self) -> EstimateJson:
        result = estimate_accuracy(self.calibration, self.window_counts)  # type: ignore[arg-type]
        assert result is not None
        return result


def shifted_randhie(root: Path) -> Shifted:
    """statsmodels' randhie (RAND health insurance experiment, 20,190 people): whether a person saw a doctor
        (``mdvis > 0``) from their plan and health. A logistic regression on the features and their pairwise
    products (calibrated by its loss) is trained on a random 30 %,
        the reference is another random 35 % (all of it held out), and the window is those of the other 35 % whose
        log coinsurance rate is above its 40th percentile: people with dearer plans, who see a doctor less."""
    import statsmodels.api as sm

    data = sm.datasets.randhie.load_pandas().data
    y = (data["mdvis"] > 0).astype(int).to_numpy()
    features = data.drop(columns="mdvis")
    x = features.to_numpy(np.float32)
    u = np.random.default_rng(0).random(len(y))
    train, reference, rest = u < 0.3, (u >= 0.3) & (u < 0.65), u >= 0.65
    model = make_pipeline(StandardScaler(), PolynomialFeatures(2), LogisticRegression(C=0.1, max_iter=3000))
    model.fit(x[train], y[train])
    export(root / "repo", "visits", model, x)
    table(x[reference], list(features.columns), "visited", y[reference]).to_csv(root / "reference.csv", index=False)
    done = serve_baseline(root / "repo", "visits", root / "reference.csv", "--labels", "visited")
    assert done.returncode == 0, done.stderr
    coinsurance = features["lncoins"].to_numpy()
    window = rest & (coinsurance > np.quantile(coinsurance[rest], 0.4))
    window_proba = onnx_probabilities(root / "repo", "visits", x[window])
    reference_proba = onnx_probabilities(root / "repo", "visits", x[reference])
    calibration = performance(root / "repo", "visits")["calibration"]
    group = NumericSpec(["confidence"], [np.asarray(calibration["edges"])], kll_k=0).new_group()
    group.update(classifier_views(window_proba)[:1])  # the server's view and accumulator
    return Shifted(
        calibration=calibration,
        reference_proba=reference_proba[:, 1].astype(np.float64),
        reference_predicted=reference_proba.argmax(axis=1),
        reference_y=y[reference],
        window_proba=window_proba[:, 1].astype(np.float64),
        window_predicted=window_proba.argmax(axis=1),
        window_y=y[window],
        window_counts=group.bin_counts.tolist(),
    )


@pytest.fixture(scope="module")
def randhie(tmp_path_factory: pytest.TempPathFactory) -> Shifted:
    return shifted_randhie(tmp_path_factory.mktemp("randhie"))


def test_window_is_covariate_shifted(randhie: Shifted) -> None:
    assert len(randhie.window_y) > 3000
    assert abs(randhie.window_y.mean() - randhie.reference_y.mean()) > 0.02  # fewer visits with dearer plans


def test_estimate_from_binned_confidence_is_within_002_of_realized_accuracy(randhie: Shifted) -> None:
    result = randhie.estimate()

    assert result["rows"] == len(randhie.window_y)
    assert abs(result["accuracy"] - randhie.realized) <= 0.02
    assert result["accuracy_se"] < 0.015  # the bound is about two of its standard errors
