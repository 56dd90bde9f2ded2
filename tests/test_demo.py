from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from google.protobuf import text_format
from onnx import numpy_helper

from serve import __version__
from serve.demo import (
    FIXED_SHAPE_OFFSET,
    IDENTITY_DATATYPES,
    default_demo_path,
    demo_files,
    ensure_demo_repository,
    write_demo_repository,
)
from serve.modelgen import IR_VERSION, OPSET, mlp, save

MODEL_NAMES = ["tabular", "multi_io", "identity_all", "fixed_shape"]
REPO_ROOT = Path(__file__).resolve().parents[1]


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _digest(files: dict[str, bytes]) -> str:
    h = hashlib.sha256()
    for rel in sorted(files):
        h.update(rel.encode() + b"\0" + files[rel])
    return h.hexdigest()


def _weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("demo")
    write_demo_repository(root)
    return root


def _model_path(repo: Path, name: str) -> Path:
    return repo / name / "1" / "model.onnx"


# --- repository layout and determinism ---


def test_write_returns_model_names_in_triton_layout(tmp_path: Path) -> None:
    names = write_demo_repository(tmp_path)
    assert names == MODEL_NAMES
    assert sorted(_snapshot(tmp_path)) == sorted([f"{n}/1/model.onnx" for n in MODEL_NAMES] + ["tabular/config.pbtxt"])


def test_repository_is_byte_identical_across_writes(tmp_path: Path) -> None:
    write_demo_repository(tmp_path / "a")
    write_demo_repository(tmp_path / "b")
    assert _snapshot(tmp_path / "a") == _snapshot(tmp_path / "b")


def test_repository_bytes_do_not_depend_on_the_process_hash_seed() -> None:
    code = "import hashlib, sys; from serve.demo import demo_files; f = demo_files(); h = hashlib.sha256()\n"
    code += "for r in sorted(f): h.update(r.encode() + b'\\0' + f[r])\nprint(h.hexdigest())"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == _digest(demo_files())


def test_write_overwrites_an_altered_file(tmp_path: Path) -> None:
    write_demo_repository(tmp_path)
    original = _snapshot(tmp_path)
    (tmp_path / "tabular" / "1" / "model.onnx").write_bytes(b"garbage")
    write_demo_repository(tmp_path)
    assert _snapshot(tmp_path) == original


def test_write_leaves_no_temporary_files(tmp_path: Path) -> None:
    write_demo_repository(tmp_path)
    write_demo_repository(tmp_path)
    assert len(_snapshot(tmp_path)) == len(MODEL_NAMES) + 1


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_model_is_valid_onnx_with_pinned_ir_version_and_opset(repo: Path, name: str) -> None:
    model = onnx.load(_model_path(repo, name))
    onnx.checker.check_model(model, full_check=True)
    assert model.ir_version == IR_VERSION == 8
    assert [(o.domain, o.version) for o in model.opset_import] == [("", OPSET)]
    assert OPSET == 17


@pytest.mark.parametrize("name", ["tabular", "multi_io", "identity_all"])
def test_batching_model_has_symbolic_batch_dim_on_every_input_and_output(repo: Path, name: str) -> None:
    sess = _session(_model_path(repo, name))
    for arg in [*sess.get_inputs(), *sess.get_outputs()]:
        assert isinstance(arg.shape[0], str), arg
        assert all(isinstance(d, int) for d in arg.shape[1:]), arg


# --- tabular ---


@pytest.fixture(scope="module")
def tabular_run(repo: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    features = np.random.default_rng(1).normal(size=(16, 8)).astype(np.float32) * 3
    probabilities, label = _session(_model_path(repo, "tabular")).run(None, {"features": features})
    return features, probabilities, label


def test_tabular_probabilities_equal_numpy_mlp(repo: Path, tabular_run: tuple[np.ndarray, ...]) -> None:
    features, probabilities, _ = tabular_run
    w = _weights(onnx.load(_model_path(repo, "tabular")))
    logits = np.maximum(features @ w["w0"] + w["b0"], 0) @ w["w1"] + w["b1"]
    expected = np.exp(logits - logits.max(axis=1, keepdims=True))
    expected /= expected.sum(axis=1, keepdims=True)
    assert probabilities.dtype == np.float32 and probabilities.shape == (16, 3)
    np.testing.assert_allclose(probabilities, expected, rtol=1e-5, atol=1e-6)


def test_tabular_probability_rows_sum_to_one(tabular_run: tuple[np.ndarray, ...]) -> None:
    np.testing.assert_allclose(tabular_run[1].sum(axis=1), 1.0, rtol=1e-6)


def test_tabular_label_is_argmax_of_probabilities(tabular_run: tuple[np.ndarray, ...]) -> None:
    _, probabilities, label = tabular_run
    assert label.dtype == np.int64 and label.shape == (16, 1)
    np.testing.assert_array_equal(label[:, 0], probabilities.argmax(axis=1))


def test_tabular_labels_are_not_all_the_same_class(tabular_run: tuple[np.ndarray, ...]) -> None:
    # A demo classifier that always answers the same class would hide batching/splitting bugs.
    assert len(np.unique(tabular_run[2])) > 1


@pytest.mark.parametrize("module_name", ["serve.protocol.model_config_pb2", "tritonclient.grpc.model_config_pb2"])
def test_tabular_config_parses_as_triton_model_config(repo: Path, module_name: str) -> None:
    pb = pytest.importorskip(module_name)
    config = text_format.Parse((repo / "tabular" / "config.pbtxt").read_text(), pb.ModelConfig())
    assert (config.name, config.platform, config.max_batch_size) == ("tabular", "onnxruntime_onnx", 64)
    assert [(i.name, i.data_type, list(i.dims)) for i in config.input] == [("features", pb.TYPE_FP32, [8])]
    assert [(o.name, o.data_type, list(o.dims)) for o in config.output] == [
        ("probabilities", pb.TYPE_FP32, [3]),
        ("label", pb.TYPE_INT64, [1]),
    ]
    assert config.HasField("dynamic_batching")
    assert config.dynamic_batching.max_queue_delay_microseconds == 0
    assert [(g.count, g.kind) for g in config.instance_group] == [(1, pb.ModelInstanceGroup.KIND_CPU)]
    (warmup,) = config.model_warmup
    assert warmup.batch_size == 1
    features = warmup.inputs["features"]
    assert (features.data_type, list(features.dims), features.zero_data) == (pb.TYPE_FP32, [8], True)


def test_tabular_config_names_and_shapes_agree_with_the_graph(repo: Path) -> None:
    sess = _session(_model_path(repo, "tabular"))
    io = {a.name: (a.type, a.shape[1:]) for a in [*sess.get_inputs(), *sess.get_outputs()]}
    assert io == {
        "features": ("tensor(float)", [8]),
        "probabilities": ("tensor(float)", [3]),
        "label": ("tensor(int64)", [1]),
    }


# --- multi_io ---

MULTI_IO_INPUTS = {
    "text": np.array([["hello"], ["héllo wörld"], [""]], dtype=object),
    "counts": np.array([[1, -2, 3, 2**30 - 1], [0, 0, 0, 0], [-(2**30), 5, 6, 7]], dtype=np.int32),
    "flag": np.array([[True], [False], [True]]),
    "values": np.array([[0.5, 1.25, -3.0, 1e-3], [1000.5, -2.5, 2.0, 0.0], [65504.0, 1e-9, 0.1, 0.2]]),
}
MULTI_IO_EXPECTED = {
    "text_out": MULTI_IO_INPUTS["text"],
    "counts_doubled": MULTI_IO_INPUTS["counts"] + MULTI_IO_INPUTS["counts"],
    "flag_not": ~MULTI_IO_INPUTS["flag"],
    "values_sum": MULTI_IO_INPUTS["values"].sum(axis=1, keepdims=True),
    "values_half": MULTI_IO_INPUTS["values"].astype(np.float16),
}


@pytest.fixture(scope="module")
def multi_io_outputs(repo: Path) -> dict[str, np.ndarray]:
    sess = _session(_model_path(repo, "multi_io"))
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, MULTI_IO_INPUTS), strict=True))


def test_multi_io_has_the_documented_inputs_and_outputs(repo: Path) -> None:
    sess = _session(_model_path(repo, "multi_io"))
    assert {a.name: a.type for a in sess.get_inputs()} == {
        "text": "tensor(string)",
        "counts": "tensor(int32)",
        "flag": "tensor(bool)",
        "values": "tensor(double)",
    }
    assert {a.name: a.type for a in sess.get_outputs()} == {
        "text_out": "tensor(string)",
        "counts_doubled": "tensor(int32)",
        "flag_not": "tensor(bool)",
        "values_sum": "tensor(double)",
        "values_half": "tensor(float16)",
    }


@pytest.mark.parametrize("output", sorted(MULTI_IO_EXPECTED))
def test_multi_io_output_equals_numpy(multi_io_outputs: dict[str, np.ndarray], output: str) -> None:
    got, expected = multi_io_outputs[output], MULTI_IO_EXPECTED[output]
    assert got.dtype == expected.dtype and got.shape == expected.shape
    if output == "values_sum":
        np.testing.assert_allclose(got, expected, rtol=1e-15)
    else:
        np.testing.assert_array_equal(got, expected)


# --- identity_all ---


def _identity_sample(datatype: str) -> np.ndarray:
    if datatype == "BOOL":
        return np.array([[True, False, True], [False, False, True]])
    if datatype == "BYTES":
        # onnxruntime string tensors take and return Python str; non-ASCII and embedded NUL survive.
        return np.array([["", "héllo", "日本語"], ["a\x00b", "🙂 emoji", "plain"]], dtype=object)
    dtype = np.dtype(datatype.lower().replace("fp", "float"))
    if dtype.kind == "f":
        fi = np.finfo(dtype)
        subnormal = fi.smallest_subnormal
        return np.array([[-0.0, np.inf, -np.inf], [np.nan, subnormal, fi.max]], dtype=dtype)
    ii = np.iinfo(dtype)
    return np.array([[ii.min, ii.max, 0], [1, ii.max - 1, ii.min + 1]], dtype=dtype)


@pytest.fixture(scope="module")
def identity_all_outputs(repo: Path) -> dict[str, np.ndarray]:
    # onnxruntime insists on every graph input being fed, so one run carries all thirteen.
    sess = _session(_model_path(repo, "identity_all"))
    feeds = {f"in_{dt.lower()}": _identity_sample(dt) for dt in IDENTITY_DATATYPES}
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds), strict=True))


@pytest.mark.parametrize("datatype", IDENTITY_DATATYPES)
def test_identity_all_round_trips_every_datatype_exactly(
    identity_all_outputs: dict[str, np.ndarray], datatype: str
) -> None:
    sample, out = _identity_sample(datatype), identity_all_outputs[f"out_{datatype.lower()}"]
    assert out.dtype == sample.dtype and out.shape == sample.shape
    if datatype == "BYTES":
        assert out.tolist() == sample.tolist()
        assert all(type(v) is str for v in out.ravel())
    else:
        assert out.tobytes() == sample.tobytes()  # bit-exact: NaN, -0.0 and subnormals included


def test_identity_all_covers_every_datatype_with_a_numpy_dtype() -> None:
    from serve.datatypes import OIP_TO_NUMPY

    assert set(IDENTITY_DATATYPES) == set(OIP_TO_NUMPY)


def test_onnxruntime_stringifies_bytes_elements_instead_of_passing_them_through(repo: Path) -> None:
    # Pins the quirk the runtime works around: BYTES must be decoded to str before session.run.
    sess = _session(_model_path(repo, "multi_io"))
    feeds = {**MULTI_IO_INPUTS, "text": np.array([[b"ab"], [b"c"], [b""]], dtype=object)}
    (out,) = sess.run(["text_out"], feeds)
    assert out.tolist() == [["b'ab'"], ["b'c'"], ["b''"]]


# --- fixed_shape ---


def test_fixed_shape_has_literal_shapes(repo: Path) -> None:
    sess = _session(_model_path(repo, "fixed_shape"))
    assert [(a.name, a.shape) for a in sess.get_inputs()] == [("x", [2, 3])]
    assert [(a.name, a.shape) for a in sess.get_outputs()] == [("y", [2, 3])]


def test_fixed_shape_output_is_twice_input_plus_offset(repo: Path) -> None:
    x = np.array([[1.0, -2.0, 3.5], [0.0, 10.0, -0.25]], dtype=np.float32)
    (y,) = _session(_model_path(repo, "fixed_shape")).run(None, {"x": x})
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, x * 2 + FIXED_SHAPE_OFFSET)


# --- mlp ---


def test_mlp_is_deterministic_for_the_same_seed() -> None:
    assert mlp([32, 256, 256, 8]).SerializeToString() == mlp([32, 256, 256, 8]).SerializeToString()


def test_mlp_weights_differ_between_seeds() -> None:
    assert mlp([4, 8, 2], seed=1).SerializeToString() != mlp([4, 8, 2], seed=2).SerializeToString()


def test_mlp_uses_given_names_and_symbolic_batch_dim() -> None:
    model = mlp([4, 8, 2], input_name="x", output_name="y", batch_dim="n")
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert [(a.name, a.type, a.shape) for a in sess.get_inputs()] == [("x", "tensor(float)", ["n", 4])]
    assert [(a.name, a.type, a.shape) for a in sess.get_outputs()] == [("y", "tensor(float)", ["n", 2])]


def test_mlp_softmax_rows_sum_to_one() -> None:
    sess = ort.InferenceSession(mlp([4, 8, 3], softmax=True).SerializeToString())
    x = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    np.testing.assert_allclose(sess.run(None, {"input": x})[0].sum(axis=1), 1.0, rtol=1e-6)


def test_mlp_rejects_fewer_than_two_dims() -> None:
    with pytest.raises(ValueError, match="at least two dims"):
        mlp([8])


def _forward_is_finite_and_varied(model: onnx.ModelProto, batch: int) -> None:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    width = sess.get_inputs()[0].shape[1]
    x = np.random.default_rng(0).normal(size=(batch, width)).astype(np.float32)
    (y,) = sess.run(None, {"input": x})
    assert np.isfinite(y).all()
    assert 0.01 < float(y.std()) < 100.0  # He init keeps activations near unit scale


def test_mlp_small_benchmark_model_gives_finite_outputs() -> None:
    _forward_is_finite_and_varied(mlp([32, 256, 256, 8]), batch=64)


def test_mlp_large_benchmark_model_gives_finite_outputs() -> None:
    _forward_is_finite_and_varied(mlp([512, 2048, 2048, 512]), batch=4)


def test_save_creates_parent_dirs_and_writes_the_model(tmp_path: Path) -> None:
    model = mlp([2, 3])
    target = tmp_path / "a" / "b" / "model.onnx"
    assert save(model, target) == target
    assert target.read_bytes() == model.SerializeToString()


# --- default_demo_path / ensure_demo_repository ---


def test_default_demo_path_uses_xdg_cache_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_demo_path() == tmp_path / "serve" / f"demo-repo-{__version__}"


def test_default_demo_path_falls_back_to_home_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_demo_path() == tmp_path / ".cache" / "serve" / f"demo-repo-{__version__}"


def test_default_demo_path_ignores_relative_xdg_cache_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_demo_path() == tmp_path / ".cache" / "serve" / f"demo-repo-{__version__}"


def test_default_demo_path_uses_temp_dir_when_cache_is_unwritable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A cache "directory" below a regular file cannot be created, even by root.
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker / "cache"))
    path = default_demo_path()
    assert path.name == f"demo-repo-{__version__}"
    assert path.parent.parent == Path(tempfile.gettempdir())


def test_ensure_writes_a_complete_repository(tmp_path: Path) -> None:
    root = tmp_path / "cache" / "demo"
    assert ensure_demo_repository(root) == root
    assert _snapshot(root) == demo_files()


def test_ensure_leaves_no_temporary_siblings(tmp_path: Path) -> None:
    ensure_demo_repository(tmp_path / "demo")
    assert [p.name for p in tmp_path.iterdir()] == ["demo"]


def test_ensure_does_not_rewrite_a_complete_repository(tmp_path: Path) -> None:
    root = ensure_demo_repository(tmp_path / "demo")
    inodes = {p: p.stat().st_ino for p in root.rglob("*") if p.is_file()}
    ensure_demo_repository(root)
    assert {p: p.stat().st_ino for p in root.rglob("*") if p.is_file()} == inodes


def test_ensure_repairs_a_missing_file_without_touching_other_files(tmp_path: Path) -> None:
    root = ensure_demo_repository(tmp_path / "demo")
    (root / "multi_io" / "1" / "model.onnx").unlink()
    (root / "mine.txt").write_text("user file")
    ensure_demo_repository(root)
    assert (root / "mine.txt").read_text() == "user file"
    assert {k: v for k, v in _snapshot(root).items() if k != "mine.txt"} == demo_files()


def test_ensure_uses_default_demo_path_without_argument(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    root = ensure_demo_repository()
    assert root == tmp_path / "serve" / f"demo-repo-{__version__}"
    assert _snapshot(root) == demo_files()


def test_concurrent_ensures_both_return_a_complete_repository(tmp_path: Path) -> None:
    root = tmp_path / "demo"
    start = threading.Barrier(2)
    results: list[Path] = []
    errors: list[BaseException] = []

    def worker() -> None:
        start.wait()
        try:
            results.append(ensure_demo_repository(root))
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert results == [root, root]
    assert _snapshot(root) == demo_files()
    assert [p.name for p in tmp_path.iterdir()] == ["demo"]
