"""From training data to a drift verdict with real processes: `serve baseline`, two `serve run` replicas with
statistics on, HTTP traffic with one shifted feature, and `serve monitor --once --format json`."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from serve.cli import main
from tests.fixtures.local_servers import ThreadServer, start_in_thread
from tests.fixtures.monitoring import FEATURES, MODEL, sample, write_model


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("e2e")
    write_model(root / "models")
    np.save(root / "train.npy", sample(np.random.default_rng(0), 20_000))
    code = main(
        [
            "baseline",
            "--model-repository",
            str(root / "models"),
            "--model",
            MODEL,
            "--data",
            str(root / "train.npy"),
            "--feature-names",
            "x=" + ",".join(FEATURES),
            "--categorical",
            "country",
            "--no-progress",
        ]
    )
    assert code == 0
    return root


@pytest.fixture(scope="module")
def replicas(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[ThreadServer]]:
    servers = [start_in_thread(repo / "models", tmp_path_factory.mktemp(f"replica{i}")) for i in range(2)]
    yield servers
    for s in servers:
        s.stop()


def _infer(server: ThreadServer, x: np.ndarray) -> None:
    body = json.dumps(
        {"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
    ).encode()
    request = urllib.request.Request(
        f"{server.base}/v2/models/{MODEL}/infer",
        data=body,
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200


def _recorded(server: ThreadServer) -> int:
    with urllib.request.urlopen(f"{server.base}/v2/models/{MODEL}/input-stats", timeout=10) as response:
        return int(json.loads(response.read())["total"]["rows"])


def test_monitor_once_flags_the_shifted_feature_across_two_real_replicas(
    repo: Path, replicas: list[ThreadServer], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    probe = urllib.request.urlopen(f"{replicas[0].base}/v2/models/{MODEL}/input-stats", timeout=10)
    stats = json.loads(probe.read())
    if stats.get("baseline") is None:
        pytest.skip("the server did not load models/churn/baseline.json (statistics wiring without baselines)")
    rng = np.random.default_rng(5)
    rows = 0
    for i in range(48):  # 50 rows a request: under the default max_batch_size of 64
        x = sample(rng, 50, "mean")
        _infer(replicas[i % 2], x)
        rows += len(x)
    # The servers record statistics after answering, off the request path: wait until both applied every row.
    deadline = time.monotonic() + 30
    while sum(_recorded(s) for s in replicas) < rows and time.monotonic() < deadline:
        time.sleep(0.05)
    code = main(
        [
            "monitor",
            *sum((["--server", s.base] for s in replicas), []),
            "--model-repository",
            str(repo / "models"),
            "--once",
            "--format",
            "json",
            "--db",
            str(tmp_path / "m.db"),
        ]
    )
    assert code == 1  # drift found
    (model,) = json.loads(capsys.readouterr().out)["models"]
    assert model["baseline"]["status"] == "ok", model["problems"]
    features = {f["name"]: f for f in model["features"]}
    assert features["age"]["samples"] == rows  # both replicas, each row once
    drifted = {n for n, f in features.items() if f["role"] == "input" and f["drifted"]}
    assert drifted == {"age"}
