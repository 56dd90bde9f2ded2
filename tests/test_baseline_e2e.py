"""The data scientist's path, with real processes and files as users write them: a pandas DataFrame of float64
(two decimals, many repeated values) written with ``to_csv`` / ``to_parquet``, the label still in it; a classifier
exported with ``to_onnx(clf, X[:1])``; ``serve baseline --ignore-column``; ``serve run``; FP32 traffic through
tritonclient; ``serve monitor --once --format json``. Clean traffic, whether rows of the training file itself or
held-out rows of the same distribution, must flag no feature (issue 17, items 2 and 3)."""

from __future__ import annotations

import contextlib
import io
import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pandas as pd
import pytest
import tritonclient.http as httpclient

from serve.cli import main
from tests.fixtures.local_servers import ThreadServer, serving_in_thread
from tests.fixtures.sklearn_models import LABEL, WEATHER_COLUMNS, late_classifier, weather

TRAIN_ROWS = 10_000
SENT_ROWS = 1000
REQUEST_ROWS = 50  # under the default max_batch_size of 64

# model name → (what the baseline is built from, which rows are sent, whether the export keeps its ZipMap)
MODELS = {
    "csv_training_rows": ("train.csv", "training", False),
    "csv_held_out": ("train.csv", "held_out", False),
    "parquet_training_rows": ("train.parquet", "training", False),
    "parquet_held_out": ("train.parquet", "held_out", False),
    "sklearn_default": ("train.csv", "training", True),
    "sklearn_default_held_out": ("train.csv", "held_out", True),
}


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("flights")
    train = weather(TRAIN_ROWS, seed=0)
    train.to_csv(root / "train.csv", index=False)
    train.to_parquet(root / "train.parquet", index=False)
    exports = {zipmap: late_classifier(train, zipmap=zipmap) for zipmap in (False, True)}
    for name, (data, _, zipmap) in MODELS.items():
        (root / "models" / name / "1").mkdir(parents=True)
        onnx.save(exports[zipmap], str(root / "models" / name / "1" / "model.onnx"))
        args = ["baseline", "--model-repository", str(root / "models"), "--model", name]
        assert main([*args, "--data", str(root / data), "--ignore-column", LABEL, "--no-progress"]) == 0
    return root


@pytest.fixture(scope="module")
def server(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadServer]:
    with serving_in_thread(repo / "models", tmp_path_factory.mktemp("server")) as running:
        yield running


def _rows(repo: Path, which: str) -> np.ndarray:
    """What a client sends: rows read back from the training file, or new rows of the same distribution, as FP32."""
    if which == "training":
        frame = pd.read_csv(repo / "train.csv").sample(SENT_ROWS, random_state=1)
    else:
        frame = weather(SENT_ROWS, seed=1)
    return frame[WEATHER_COLUMNS].to_numpy().astype(np.float32)


def _send(server: ThreadServer, model: str, rows: np.ndarray) -> None:
    client = httpclient.InferenceServerClient(server.http_url)
    for start in range(0, len(rows), REQUEST_ROWS):
        batch = rows[start : start + REQUEST_ROWS]
        x = httpclient.InferInput("X", list(batch.shape), "FP32")
        x.set_data_from_numpy(batch)
        client.infer(model, [x])
    client.close()


def _recorded(server: ThreadServer, model: str) -> int:
    with urllib.request.urlopen(f"{server.base}/v2/models/{model}/input-stats", timeout=10) as response:
        return int(json.loads(response.read())["total"]["rows"])


@pytest.fixture(scope="module")
def verdicts(repo: Path, server: ThreadServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """``serve monitor --once --format json`` after clean traffic to every model, by model name."""
    for name, (_, which, _) in MODELS.items():
        _send(server, name, _rows(repo, which))
    # The server records statistics after answering, off the request path: wait until every row is in.
    deadline = time.monotonic() + 30
    while any(_recorded(server, name) < SENT_ROWS for name in MODELS) and time.monotonic() < deadline:
        time.sleep(0.05)
    out = tmp_path_factory.mktemp("monitor") / "verdicts.json"
    args = ["monitor", "--server", server.base, "--model-repository", str(repo / "models"), "--once"]
    args += ["--format", "json", "--db", str(out.with_suffix(".db"))]
    # The exit status is left aside: drift or not is read from the verdicts on stdout.
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        main(args)
    document = json.loads(printed.getvalue())
    return {model["model"]: model for model in document["models"]}


@pytest.mark.parametrize("name", list(MODELS))
def test_clean_traffic_flags_no_feature(verdicts: dict[str, Any], name: str) -> None:
    model = verdicts[name]

    assert model["baseline"]["status"] == "ok", model["problems"]
    assert {f["name"]: f["samples"] for f in model["features"] if f["role"] == "input"} == dict.fromkeys(
        WEATHER_COLUMNS, SENT_ROWS
    )
    # Flagged drifted: True. Stable (False) or still undecided at this many rows (None) is not an alarm.
    drifted = {f["name"]: f["measures"] for f in model["features"] if f["drifted"] is True}
    assert drifted == {}
    assert model["dataset_drift"] is not True
