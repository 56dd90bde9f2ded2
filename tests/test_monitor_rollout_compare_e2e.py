"""The rollout comparison with real processes: `serve run` serving two versions of a model under a 50 % rollout,
and `serve monitor --once --format json` comparing them (the in-process tests are test_monitor_rollout_compare.py)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from serve.cli import main
from serve.drift import measures as ms
from serve.input_stats.blocks import merge_feature_blocks
from tests.fixtures.rollout_models import random_rows, two_versions
from tests.fixtures.servers import RunningServer, serving

MODEL = "ab"
REQUESTS = 200
ROWS_PER_REQUEST = 4


def _shared_baseline(models: Path, tmp_path: Path) -> None:
    """`serve baseline` of version 1, its model section stripped of the version and the ONNX hash, so that
    both versions load it and bin on the same edges (what makes the comparison exact)."""
    np.save(tmp_path / "train.npy", random_rows(5000, seed=1))
    args = ["baseline", "--model-repository", str(models), "--model", MODEL, "--version", "1",
            "--data", f"x={tmp_path / 'train.npy'}", "--no-progress", "--calibration-replicates", "200"]  # fmt: skip
    assert main(args) == 0
    path = models / MODEL / "baseline.json"
    document = json.loads(path.read_text())
    document["model"] = {"name": MODEL}
    path.write_text(json.dumps(document))


def _get(server: RunningServer, path: str) -> Any:
    with urllib.request.urlopen(server.base + path, timeout=30) as response:
        return json.loads(response.read())


def _infer(server: RunningServer, x: np.ndarray) -> None:
    body = json.dumps({"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32",
                                   "data": x.ravel().tolist()}]}).encode()  # fmt: skip
    request = urllib.request.Request(f"{server.base}/v2/models/{MODEL}/infer", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})  # fmt: skip
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200


def _recorded(server: RunningServer) -> int:
    return sum(_get(server, f"/v2/models/{MODEL}/versions/{v}/input-stats")["total"]["rows"] for v in (1, 2))


def _blocks(document: dict[str, Any]) -> dict[str, Any]:
    return merge_feature_blocks([w["features"] for w in document["windows"]])


def test_serve_monitor_once_compares_the_candidate_with_the_primary_as_the_drift_measures_do(tmp_path: Path) -> None:
    models = tmp_path / "models"
    two_versions(models, MODEL)
    _shared_baseline(models, tmp_path)
    (models / MODEL / "rollout.yaml").write_text("primary: 1\ncandidates:\n  - {version: 2, percent: 50}\n")
    with serving(models, tmp_path) as server:
        rows = random_rows(REQUESTS * ROWS_PER_REQUEST, seed=2)
        for batch in np.split(rows, REQUESTS):
            _infer(server, batch)
        deadline = time.monotonic() + 20
        while _recorded(server) < len(rows) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _recorded(server) == len(rows)
        monitor = subprocess.run(
            [sys.executable, "-m", "serve", "monitor", "--server", server.base, "--once", "--format", "json"],
            capture_output=True, timeout=120,
        )  # fmt: skip
        documents = {v: _get(server, f"/v2/models/{MODEL}/versions/{v}/input-stats?since=0") for v in (1, 2)}
    assert monitor.returncode in (0, 1, 3), monitor.stderr.decode()  # drift or not; never unreadable
    [comparison] = json.loads(monitor.stdout)["rollouts"]
    assert (comparison["model"], comparison["primary"], comparison["version"]) == (MODEL, "1", "2")
    assert (comparison["role"], comparison["percent"]) == ("candidate", 50.0)
    rows_seen = comparison["window"]["rows"]
    assert rows_seen["primary"] > 0 and rows_seen["other"] > 0
    assert rows_seen["primary"] + rows_seen["other"] == len(rows)
    assert comparison["baselines"]["primary"] == comparison["baselines"]["other"] is not None
    primary, other = _blocks(documents[1]), _blocks(documents[2])
    edges = {f["name"]: f["edges"] for f in documents[1]["features"] if f["kind"] == "numeric"}
    features = {f["name"]: f for f in comparison["features"]}
    assert set(features) == {f["name"] for f in documents[1]["features"]} >= {"x[0]", "x[1]", "y[0]", "y[1]"}
    for name, f in features.items():
        if f["kind"] == "categorical":  # y's predicted class: over the baseline's classes
            expected = ms.categorical_measures(ms.Categories.from_block(primary[name]),
                                               ms.Categories.from_block(other[name]))  # fmt: skip
            assert f["basis"] == "categories" and f["measures"]["js"] == pytest.approx(expected["js"])
            continue
        p, q = ms.Binned.from_block(primary[name]), ms.Binned.from_block(other[name])
        expected = ms.numeric_measures(p, q, np.asarray(edges[name]))
        assert f["basis"] == "bins" and f["samples"] == {"primary": p.n, "other": q.n}
        for measure in ("psi", "js", "ks", "wasserstein", "out_of_range"):
            assert f["measures"][measure] == pytest.approx(expected[measure], rel=1e-9, abs=1e-12), (name, measure)
    # y = x + version: the outputs are one apart, the inputs drawn alike.
    assert features["y[0]"]["measures"]["ks"] > 0.9 > 0.2 > features["x[0]"]["measures"]["ks"]
