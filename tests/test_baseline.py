"""``serve baseline``: training data from .npy, .npz, CSV and Parquet → baseline.json, the column mapping rule,
declared kinds, streaming larger-than-memory data, the output distribution, and staleness."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from serve.baseline.builder import BaselineOptions, build_baseline
from serve.baseline.columns import map_columns
from serve.baseline.model import BaselineInputError, check_baseline, load_model_info
from serve.baseline.sources import open_source
from serve.cli import main
from serve.input_stats.baseline import Baseline, BaselineDocument, BaselineFeatureJson
from serve.types import TensorSpec
from tests.fixtures.monitoring import FEATURES, INPUTS, MODEL, sample, write_model

ROWS = 6000


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repo")
    write_model(root)
    return root


@pytest.fixture(scope="module")
def train() -> np.ndarray:
    return sample(np.random.default_rng(1), ROWS)


def _write_csv(path: Path, x: np.ndarray, header: list[str]) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for row in x.tolist():
            w.writerow(["" if np.isnan(v) else repr(v) for v in row])
    return path


def _build(repo: Path, data: str, **options: object) -> BaselineDocument:
    info = load_model_info(repo, MODEL)
    # No calibration table unless a test asks: it is tested in test_drift_calibration.py and costs seconds here.
    defaults = {"categorical": ["x[2]"], "calibration_replicates": 0}
    opts = BaselineOptions(progress=False, **{**defaults, **options})  # type: ignore[arg-type]
    return build_baseline(info, [open_source(data, info.inputs)], opts)


def _inputs(document: BaselineDocument) -> dict[str, BaselineFeatureJson]:
    return {f["name"]: f for f in document["features"] if f["role"] == "input"}


def test_npy_csv_and_parquet_give_the_same_baseline(repo: Path, train: np.ndarray, tmp_path: Path) -> None:
    np.save(tmp_path / "train.npy", train)
    _write_csv(tmp_path / "train.csv", train, FEATURES)
    pq.write_table(
        pa.table({n: train[:, i].astype(np.float64) for i, n in enumerate(FEATURES)}),
        tmp_path / "train.parquet",
        row_group_size=1000,
    )
    names = {"x": FEATURES}
    from_npy = _inputs(_build(repo, str(tmp_path / "train.npy"), feature_names=names))
    from_csv = _inputs(_build(repo, str(tmp_path / "train.csv"), categorical=["country"]))
    from_parquet = _inputs(_build(repo, str(tmp_path / "train.parquet"), categorical=["country"]))
    assert list(from_csv) == list(from_npy) == list(from_parquet)
    for name in FEATURES:
        for other in (from_csv, from_parquet):
            assert other[name]["stats"]["count"] == from_npy[name]["stats"]["count"] == ROWS
            assert other[name].get("edges") == pytest.approx(from_npy[name].get("edges"))
            if "bins" in from_npy[name]["stats"]:
                assert other[name]["stats"]["bins"]["counts"] == from_npy[name]["stats"]["bins"]["counts"]


def test_csv_header_names_the_features_when_mapped_by_order() -> None:
    mapping = map_columns(["a", "b", "c", "d"], INPUTS)
    assert mapping.by == "order" and mapping.feature_names == {"x": ["a", "b", "c", "d"]}


def test_csv_columns_map_by_input_index_names_in_any_order() -> None:
    mapping = map_columns(["x[3]", "x[0]", "x[2]", "x[1]", "label"], INPUTS, ignore=["label"])
    assert mapping.by == "name"
    assert [s.column for s in mapping.slots] == [3, 0, 2, 1]


def test_partial_name_match_is_an_error_naming_both_sides() -> None:
    with pytest.raises(
        BaselineInputError, match=r"columns \['label'\] match no input feature.*no column for \['x\[3\]'\]"
    ):
        map_columns(["x[0]", "x[1]", "x[2]", "label"], INPUTS)


def test_wrong_number_of_unnamed_columns_is_an_error() -> None:
    with pytest.raises(BaselineInputError, match="the data has 3 columns for the model.s 4 features"):
        map_columns(["a", "b", "c"], INPUTS)


def test_text_in_a_numeric_column_is_a_clear_error(repo: Path, tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("age,income,country,score\n1,2,3,4\n1,two,3,4\n")
    with pytest.raises(BaselineInputError, match="bad.csv"):
        _build(repo, str(path), categorical=["country"])


def test_npz_arrays_are_read_by_input_name_and_extras_must_be_ignored(
    repo: Path, train: np.ndarray, tmp_path: Path
) -> None:
    np.savez_compressed(tmp_path / "train.npz", x=train, label=np.zeros(ROWS))
    info = load_model_info(repo, MODEL)
    with pytest.raises(BaselineInputError, match=r"arrays \['label'\] are not model inputs"):
        open_source(str(tmp_path / "train.npz"), info.inputs)
    source = open_source(str(tmp_path / "train.npz"), info.inputs, ignore=["label"])
    chunks = list(source.chunks(1000))
    assert len(chunks) == 6 and np.array_equal(np.concatenate([c["x"] for c in chunks]), train)


def test_kinds_are_declared_never_guessed(repo: Path, train: np.ndarray, tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", train)
    undeclared = _inputs(_build(repo, str(tmp_path / "x.npy"), categorical=[]))
    declared = _inputs(_build(repo, str(tmp_path / "x.npy"), categorical=["x[2]"]))
    assert undeclared["x[2]"]["kind"] == "numeric"  # four distinct values, still numeric
    assert declared["x[2]"]["kind"] == "categorical"
    assert sorted(declared["x[2]"]["vocabulary"]) == [0, 1, 2, 3]


def test_unknown_categorical_name_is_an_error(repo: Path, train: np.ndarray, tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", train)
    with pytest.raises(BaselineInputError, match=r"--categorical names \['nope'\]"):
        _build(repo, str(tmp_path / "x.npy"), categorical=["nope"])


def test_streaming_beyond_the_memory_limit_counts_the_same_rows(repo: Path, train: np.ndarray, tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", train)
    exact = _inputs(_build(repo, str(tmp_path / "x.npy")))
    streamed = _inputs(_build(repo, str(tmp_path / "x.npy"), memory_limit_bytes=10_000, chunk_rows=500))
    for j, name in enumerate(exact):
        assert streamed[name]["stats"]["count"] == ROWS
        assert streamed[name]["stats"].get("counts") == exact[name]["stats"].get("counts")
        if exact[name]["kind"] == "numeric":
            assert sum(streamed[name]["stats"]["bins"]["counts"]) == exact[name]["stats"]["n"]
            # Edges from the KLL sketch sit within its rank error (≈ 0.15 % at k = 2000) of the exact quantiles.
            column = np.sort(train[:, [0, 1, 3][j]].astype(np.float64))
            ranks = [np.searchsorted(column, np.asarray(d[name]["edges"][1:-1])) / ROWS for d in (streamed, exact)]
            assert np.max(np.abs(ranks[0] - ranks[1])) < 0.005


def test_output_distribution_comes_from_the_held_out_sample(repo: Path, train: np.ndarray, tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", train)
    document = _build(repo, str(tmp_path / "x.npy"), holdout=0.25)
    outputs = {f["name"]: f for f in document["features"] if f["role"] == "output"}
    held = document["source"]["holdout"]["rows"]
    assert abs(held - 0.25 * ROWS) < 0.05 * ROWS
    assert "probabilities::predicted_class" in outputs
    assert outputs["probabilities[0]"]["stats"]["count"] == held


def test_cli_writes_baseline_next_to_the_config_with_the_onnx_hash(
    repo: Path, train: np.ndarray, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _write_csv(tmp_path / "train.csv", train, FEATURES)
    out = tmp_path / "baseline.json"
    code = main(
        [
            "baseline",
            "--model-repository",
            str(repo),
            "--model",
            MODEL,
            "--data",
            str(tmp_path / "train.csv"),
            "--categorical",
            "country",
            "--out",
            str(out),
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "rows" in captured.err or "reading" in captured.err  # the progress bar goes to stderr
    baseline = Baseline.load(out)
    info = load_model_info(repo, MODEL)
    assert baseline.model["onnx_sha256"] == info.onnx_sha256
    assert [f.name for f in baseline.features if f.role == "input"] == ["age", "income", "score", "country"]
    assert check_baseline(baseline, info) == []
    assert "calibrating" in captured.err and all(f.null_calibration for f in baseline.features)


def test_check_reports_a_stale_baseline_after_the_model_changes(
    train: np.ndarray, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = tmp_path / "repo"
    write_model(repo)
    np.save(tmp_path / "x.npy", train)
    args = ["baseline", "--model-repository", str(repo), "--model", MODEL, "--no-progress"]
    args += ["--calibration-replicates", "0"]  # staleness is the point here, not the table
    assert main([*args, "--data", str(tmp_path / "x.npy")]) == 0
    assert (repo / MODEL / "baseline.json").is_file()
    assert main([*args, "--check"]) == 0
    write_model(repo, seed=99)  # retrained: new weights, new hash
    capsys.readouterr()
    assert main([*args, "--check"]) == 1
    assert "stale baseline" in capsys.readouterr().err


def test_missing_data_for_an_input_is_a_clear_cli_error(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["baseline", "--model-repository", str(repo), "--model", MODEL, "--data", "nope.csv"]) == 2
    assert "no such file" in capsys.readouterr().err


def _served_baseline(repo: Path, tmp_path: Path) -> tuple[object, str]:
    import json
    import urllib.request

    from tests.fixtures.local_servers import serving_in_thread

    with (
        serving_in_thread(repo, tmp_path) as server,
        urllib.request.urlopen(f"{server.base}/v2/models/{MODEL}/input-stats", timeout=10) as response,
    ):
        document = json.load(response)
    return document["baseline"], server.log()


def test_server_bins_on_a_fitting_baseline_and_refuses_a_stale_one(train: np.ndarray, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write_model(repo)
    np.save(tmp_path / "x.npy", train)
    args = ["baseline", "--model-repository", str(repo), "--model", MODEL, "--no-progress"]
    assert main([*args, "--data", str(tmp_path / "x.npy")]) == 0
    (tmp_path / "fresh").mkdir()
    (tmp_path / "stale").mkdir()

    used, _ = _served_baseline(repo, tmp_path / "fresh")
    write_model(repo, seed=99)  # retrained after the baseline was computed
    refused, log = _served_baseline(repo, tmp_path / "stale")

    assert used is not None
    assert refused is None
    assert "baseline.json is not used" in log and "stale baseline" in log


def test_validate_fails_a_model_whose_baseline_is_stale(
    train: np.ndarray, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = tmp_path / "repo"
    write_model(repo)
    np.save(tmp_path / "x.npy", train)
    args = ["baseline", "--model-repository", str(repo), "--model", MODEL, "--no-progress"]
    args += ["--calibration-replicates", "0"]  # staleness is the point here, not the table
    assert main([*args, "--data", str(tmp_path / "x.npy")]) == 0
    capsys.readouterr()
    assert main(["validate", "--model-repository", str(repo)]) == 0
    assert "baseline.json fits" in capsys.readouterr().out

    write_model(repo, seed=99)

    assert main(["validate", "--model-repository", str(repo)]) == 1
    assert "stale baseline" in capsys.readouterr().out


def test_an_extra_column_mapped_by_order_lists_every_column_and_suggests_ignore_column(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # As a user meets it: 12 features and the label in one pandas-written CSV, a model of the 12 features.
    import onnx
    import pandas as pd
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    columns = [f"sensor_{i}" for i in range(12)]
    frame = pd.DataFrame(rng.normal(size=(200, 12)), columns=columns)
    frame["label"] = (frame["sensor_0"] > 0).astype(int)
    frame.to_csv(tmp_path / "train.csv", index=False)
    x = frame[columns].to_numpy(np.float32)
    (tmp_path / "repo" / "sensors" / "1").mkdir(parents=True)
    model = to_onnx(LogisticRegression().fit(x, frame["label"]), x[:1], options={"zipmap": False})
    onnx.save(model, str(tmp_path / "repo" / "sensors" / "1" / "model.onnx"))

    code = main(
        ["baseline", "--model-repository", str(tmp_path / "repo"), "--model", "sensors"]
        + ["--data", str(tmp_path / "train.csv"), "--no-progress"]
    )

    error = capsys.readouterr().err
    assert code == 2
    assert all(f"'{c}'" in error for c in [*columns, "label"]), error
    assert "--ignore-column NAME" in error and "13" in error and "12" in error


def test_missing_columns_mapped_by_order_are_counted_and_every_feature_named() -> None:
    specs = [TensorSpec("x", "FP32", (10,))]

    with pytest.raises(BaselineInputError) as error:
        map_columns([f"c{i}" for i in range(9)], specs)

    assert all(f"'x[{i}]'" in str(error.value) for i in range(10))
    assert all(f"'c{i}'" in str(error.value) for i in range(9))
    assert "1 fewer" in str(error.value)


def test_extra_columns_mapped_by_name_suggest_ignoring_each_one() -> None:
    with pytest.raises(BaselineInputError, match=r"--ignore-column label --ignore-column id"):
        map_columns(["x[0]", "x[1]", "x[2]", "x[3]", "label", "id"], INPUTS)


def test_a_directory_that_only_looks_like_a_version_is_not_one(tmp_path: Path) -> None:
    write_model(tmp_path)
    (tmp_path / MODEL / "²").mkdir()  # str.isdigit() says yes; int() says no
    assert load_model_info(tmp_path, MODEL).version == 1
