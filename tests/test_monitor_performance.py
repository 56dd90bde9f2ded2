"""The monitor's model performance (issue 21): realized from the labels the servers joined, estimated from the
output's confidence bins and the baseline's calibration, against the held-out values; and its verdicts and alerts.

The first tests judge documents made here; the last runs it as a user does: `serve baseline --labels` on a pandas
CSV, a server, traffic, labels that are wrong for one region of the inputs (concept drift: the inputs did not move,
so the estimate cannot see it), and the monitor's cycle.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import pytest

from serve.cli import main
from serve.ground_truth.performance import WindowPerformance
from serve.ground_truth.targets import TargetJson
from serve.input_stats.baseline_file import HeldOutJson, PerformanceJson
from serve.monitor.alerts import Alerter
from serve.monitor.config import MonitorSettings
from serve.monitor.performance import PerformancePolicy, evaluate_performance
from serve.monitor.policy import Policy
from serve.monitor.service import Monitor
from tests.fixtures.ground_truth_models import CLASSIFIER, INPUT, cancer_data, write_ground_truth_repository
from tests.fixtures.local_servers import ThreadServer, start_in_thread

TARGET: TargetJson = {"output": "p", "task": "classification", "classes": 2, "class_labels": ["0", "1"]}
REGRESSION_TARGET: TargetJson = {"output": "v", "task": "regression", "classes": 0, "class_labels": []}
POLICY = PerformancePolicy(accuracy_drop=0.05, divergence=0.05, min_labels=100, min_estimate_rows=100)


def classified(correct: int, wrong: int, start: float = 0.0) -> WindowPerformance:
    """A binary window of ``correct + wrong`` labelled rows, all predicted class 1 with P 0.9."""
    window = WindowPerformance(start, "classification", 2)
    truth = np.asarray([1] * correct + [0] * wrong)
    window.predicted_rows = len(truth)
    window.add_classified(truth, np.tile([0.1, 0.9], (len(truth), 1)), np.ones(len(truth)))
    return window


def baseline(accuracy: float, calibrated: float | None = None) -> PerformanceJson:
    held_out: HeldOutJson = {"rows": 1000, "accuracy": accuracy, "accuracy_se": 0.01}
    doc: PerformanceJson = {"output": "p", "task": "classification", "label_column": "y", "held_out": held_out}
    if calibrated is not None:  # one bin holding every confidence, right this often
        doc["calibration"] = {
            "feature": "p::confidence",
            "edges": [0.5],
            "count": [0, 1000],
            "correct": [0, round(calibrated * 1000)],
            "p_correct": [calibrated, calibrated],
        }
    return doc


def stats_window(rows: int, start: float = 0.0) -> Any:
    return {"start": start, "end": start + 60, "features": {"p::confidence": {"bins": {"counts": [0, rows]}}}}


def test_realized_accuracy_far_below_the_held_out_one_is_an_accuracy_drop() -> None:
    report = evaluate_performance("m", "1", TARGET, [classified(160, 40)], [], baseline(0.95), POLICY)
    assert report["realized"] is not None and report["realized"]["accuracy"] == 0.8
    assert report["verdicts"]["accuracy_drop"] is True
    assert report["verdicts"]["accuracy_drop_source"] == "realized"


def test_realized_accuracy_near_the_held_out_one_is_no_drop() -> None:
    report = evaluate_performance("m", "1", TARGET, [classified(185, 15)], [], baseline(0.95), POLICY)
    assert report["verdicts"]["accuracy_drop"] is False


def test_too_few_labels_leave_realized_unjudged_and_the_estimate_decides() -> None:
    report = evaluate_performance(
        "m",
        "1",
        TARGET,
        [classified(8, 2)],
        [stats_window(500)],
        baseline(0.95, calibrated=0.8),
        POLICY,
    )
    assert report["estimated"] is not None and report["estimated"]["accuracy"] == pytest.approx(0.8)
    assert report["verdicts"]["accuracy_drop"] is True
    assert report["verdicts"]["accuracy_drop_source"] == "estimated"
    assert report["verdicts"]["divergence"] is None


def test_realized_far_from_the_estimate_is_a_divergence() -> None:
    report = evaluate_performance(
        "m",
        "1",
        TARGET,
        [classified(120, 80)],
        [stats_window(200)],
        baseline(0.95, calibrated=0.95),
        POLICY,
    )
    assert report["verdicts"]["divergence"] is True


def test_nothing_to_judge_without_labels_or_an_estimate() -> None:
    report = evaluate_performance("m", "1", TARGET, [], [], None, POLICY)
    assert report["verdicts"]["accuracy_drop"] is None
    assert report["verdicts"]["divergence"] is None
    assert report["label_coverage"] is None


def test_label_coverage_is_labelled_over_predicted_rows() -> None:
    window = classified(60, 0)
    window.predicted_rows = 100
    report = evaluate_performance("m", "1", TARGET, [window], [], None, POLICY)
    assert report["label_coverage"] == 0.6


def test_a_regressors_mae_above_its_held_out_one_is_an_accuracy_drop() -> None:
    window = WindowPerformance(0.0, "regression")
    truth = np.zeros(200)
    window.predicted_rows = 200
    window.add_regressed(truth, truth + 2.0, np.ones(200))
    held_out: HeldOutJson = {"rows": 100, "mae": 1.0, "mae_se": 0.1, "rmse": 1.2, "bias": 0.0}
    held: PerformanceJson = {"output": "v", "task": "regression", "label_column": "y", "held_out": held_out}
    report = evaluate_performance("m", "1", REGRESSION_TARGET, [window], [], held, POLICY)
    assert report["realized"] is not None and report["realized"]["mae"] == 2.0
    assert report["verdicts"]["accuracy_drop"] is True


def test_windows_before_the_horizon_are_listed_but_not_judged() -> None:
    old, recent = classified(10, 90, start=0.0), classified(170, 30, start=3600.0)
    report = evaluate_performance("m", "1", TARGET, [old, recent], [], baseline(0.95), POLICY, horizon_start=3000.0)
    assert [w["start"] for w in report["windows"]] == [0.0, 3600.0]
    assert report["realized"] is not None and report["realized"]["accuracy"] == 0.85
    assert report["verdicts"]["accuracy_drop"] is True


# ---- as a user runs it -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def labelled_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadServer]:
    root = tmp_path_factory.mktemp("performance")
    models = write_ground_truth_repository(root / "models")
    data = cancer_data()
    frame = pd.DataFrame(data.x.astype(np.float64), columns=[f"f{i}" for i in range(data.x.shape[1])])
    frame.insert(0, "diagnosis", data.y)
    frame.to_csv(root / "reference.csv", index=False)
    code = main([
        "baseline", "--model-repository", str(models), "--model", CLASSIFIER, "--version", "2",
        "--data", str(root / "reference.csv"), "--labels", "diagnosis", "--holdout", "1", "--no-progress",
        "--calibration-replicates", "0",
    ])  # fmt: skip
    assert code == 0
    server = start_in_thread(models, tmp_path_factory.mktemp("server"))
    yield server
    server.stop()


def _post(url: str, document: Any) -> Any:
    request = urllib.request.Request(url, data=json.dumps(document).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})  # fmt: skip
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


class Alerts(Alerter):
    def __init__(self) -> None:
        super().__init__(None)
        self.sent: list[Any] = []

    def emit(self, alert: Any) -> bool:
        self.sent.append(alert)
        return True


async def test_labels_wrong_for_one_region_diverge_from_the_estimate_and_alert(labelled_server: ThreadServer) -> None:
    data = cancer_data()
    base = f"{labelled_server.base}/v2/models/{CLASSIFIER}/versions/2"
    region = data.x[:, 0] > np.quantile(data.x[:, 0], 0.6)  # the largest tumours: their labels come back flipped
    labels = []
    for start in range(0, len(data.x), 8):
        rows = np.arange(start, min(start + 8, len(data.x)))
        x = data.x[rows]
        answer = _post(f"{base}/infer", {"inputs": [{"name": INPUT, "shape": list(x.shape), "datatype": "FP32",
                                                     "data": x.ravel().tolist()}]})  # fmt: skip
        for r, row in enumerate(rows):
            truth = int(data.y[row]) ^ int(region[row])
            labels.append({"id": answer["id"], "row": r, "label": truth})
    assert _post(f"{base}/feedback", labels)["joined"] == len(labels)

    settings = MonitorSettings(servers=[labelled_server.base], db_path=":memory:",
                               policy=Policy(thresholds={}, persistence=1))  # fmt: skip
    alerts = Alerts()
    monitor = Monitor(settings, alerter=alerts)
    try:
        for _ in range(50):  # until the server's statistics worker has counted every row's confidence
            await monitor.cycle(include_open=True)
            report = monitor.performance[(CLASSIFIER, "2")]
            if report["estimated"] is not None and report["estimated"]["rows"] >= len(data.x):
                break
    finally:
        monitor.close()
    assert report["estimated"] is not None and report["realized"] is not None and report["baseline"] is not None
    assert report["estimated"]["accuracy"] == pytest.approx(report["baseline"]["accuracy"], abs=0.05)
    assert report["realized"]["accuracy"] < report["estimated"]["accuracy"] - 0.2
    assert report["label_coverage"] == 1.0
    assert report["verdicts"]["divergence"] is True
    assert report["verdicts"]["accuracy_drop"] is True
    fired = {(a["kind"], a["state"]) for a in alerts.sent}
    assert ("performance_divergence", "firing") in fired
    assert ("accuracy_drop", "firing") in fired
