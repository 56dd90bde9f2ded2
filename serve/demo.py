"""The bundled demo model repository (Triton layout), generated on demand and byte-for-byte reproducible.

- ``tabular``: credit-risk-style classifier with an explicit Triton ``config.pbtxt``.
- ``multi_io``: BYTES, INT32, BOOL and FP64 inputs; FP16 among the outputs; configuration from the graph.
- ``identity_all``: one Identity per datatype, for exact round trips.
- ``fixed_shape``: fixed ``[2, 3]`` shapes, a model that does not batch.

Layout: ``<root>/<model>/1/model.onnx`` plus ``<root>/tabular/config.pbtxt``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Final

import numpy as np
import onnx
from onnx import TensorProto, helper

from serve import __version__
from serve.modelgen import build, constant, dense_stack, tensor, to_bytes, write_atomic

VERSION: Final = "1"
BATCH: Final = "batch"

TABULAR_CONFIG: Final = """\
name: "tabular"
platform: "onnxruntime_onnx"
max_batch_size: 64
input [
  {
    name: "features"
    data_type: TYPE_FP32
    dims: [ 8 ]
  }
]
output [
  {
    name: "probabilities"
    data_type: TYPE_FP32
    dims: [ 3 ]
  },
  {
    name: "label"
    data_type: TYPE_INT64
    dims: [ 1 ]
  }
]
dynamic_batching {
  max_queue_delay_microseconds: 0
}
instance_group [
  {
    count: 1
    kind: KIND_CPU
  }
]
model_warmup [
  {
    name: "zeros"
    batch_size: 1
    inputs {
      key: "features"
      value {
        data_type: TYPE_FP32
        dims: [ 8 ]
        zero_data: true
      }
    }
  }
]
"""

# Datatypes covered by identity_all, in Open Inference Protocol spelling.
IDENTITY_DATATYPES: Final = (
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
    "FP16", "FP32", "FP64", "BYTES",
)  # fmt: skip


def tabular_model() -> onnx.ModelProto:
    nodes, weights = dense_stack("features", [8, 16, 3], np.random.default_rng(7), output="logits")
    nodes.append(helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1))
    # ArgMax over the probabilities (not the logits) so that label is exactly argmax of what is returned.
    nodes.append(helper.make_node("ArgMax", ["probabilities"], ["label"], axis=1, keepdims=1))
    return build(
        "tabular",
        nodes,
        [tensor("features", "FP32", [BATCH, 8])],
        [tensor("probabilities", "FP32", [BATCH, 3]), tensor("label", "INT64", [BATCH, 1])],
        weights,
    )


def multi_io_model() -> onnx.ModelProto:
    nodes = [
        helper.make_node("Identity", ["text"], ["text_out"]),
        helper.make_node("Add", ["counts", "counts"], ["counts_doubled"]),
        helper.make_node("Not", ["flag"], ["flag_not"]),
        # Opset 13+ takes ReduceSum's axes as an input, not an attribute.
        helper.make_node("ReduceSum", ["values", "sum_axes"], ["values_sum"], keepdims=1),
        helper.make_node("Cast", ["values"], ["values_half"], to=TensorProto.FLOAT16),
    ]
    return build(
        "multi_io",
        nodes,
        [
            tensor("text", "BYTES", [BATCH, 1]),
            tensor("counts", "INT32", [BATCH, 4]),
            tensor("flag", "BOOL", [BATCH, 1]),
            tensor("values", "FP64", [BATCH, 4]),
        ],
        [
            tensor("text_out", "BYTES", [BATCH, 1]),
            tensor("counts_doubled", "INT32", [BATCH, 4]),
            tensor("flag_not", "BOOL", [BATCH, 1]),
            tensor("values_sum", "FP64", [BATCH, 1]),
            tensor("values_half", "FP16", [BATCH, 4]),
        ],
        [constant("sum_axes", np.array([1], dtype=np.int64))],
    )


def identity_all_model() -> onnx.ModelProto:
    names = [dt.lower() for dt in IDENTITY_DATATYPES]
    return build(
        "identity_all",
        [helper.make_node("Identity", [f"in_{n}"], [f"out_{n}"]) for n in names],
        [tensor(f"in_{n}", dt, [BATCH, 3]) for n, dt in zip(names, IDENTITY_DATATYPES, strict=True)],
        [tensor(f"out_{n}", dt, [BATCH, 3]) for n, dt in zip(names, IDENTITY_DATATYPES, strict=True)],
    )


FIXED_SHAPE_OFFSET: Final = np.arange(6, dtype=np.float32).reshape(2, 3) / 2


def fixed_shape_model() -> onnx.ModelProto:
    """y = x * 2 + FIXED_SHAPE_OFFSET with x, y FP32 [2, 3]."""
    return build(
        "fixed_shape",
        [
            helper.make_node("Mul", ["x", "two"], ["doubled"]),
            helper.make_node("Add", ["doubled", "offset"], ["y"]),
        ],
        [tensor("x", "FP32", [2, 3])],
        [tensor("y", "FP32", [2, 3])],
        [constant("two", np.array(2.0, dtype=np.float32)), constant("offset", FIXED_SHAPE_OFFSET)],
    )


MODELS: Final[dict[str, Callable[[], onnx.ModelProto]]] = {
    "tabular": tabular_model,
    "multi_io": multi_io_model,
    "identity_all": identity_all_model,
    "fixed_shape": fixed_shape_model,
}
CONFIGS: Final[dict[str, str]] = {"tabular": TABULAR_CONFIG}


def demo_files() -> dict[str, bytes]:
    """Every file of the demo repository: POSIX relative path -> contents."""
    files: dict[str, bytes] = {}
    for name, make in MODELS.items():
        if name in CONFIGS:
            files[f"{name}/config.pbtxt"] = CONFIGS[name].encode()
        files[f"{name}/{VERSION}/model.onnx"] = to_bytes(make())
    return files


def _write_files(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        write_atomic(root.joinpath(*rel.split("/")), data)


def _is_complete(root: Path, files: dict[str, bytes]) -> bool:
    try:
        return all(root.joinpath(*rel.split("/")).read_bytes() == data for rel, data in files.items())
    except OSError:
        return False


def write_demo_repository(root: Path) -> list[str]:
    """Write (or overwrite) the demo models under ``root``; other files there are left alone."""
    _write_files(Path(root), demo_files())
    return list(MODELS)


def default_demo_path() -> Path:
    """``$XDG_CACHE_HOME/serve/demo-repo-<version>`` (default ``~/.cache``), or a temp dir if unwritable."""
    leaf = f"demo-repo-{__version__}"
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    # The XDG base directory spec says a relative value is invalid and must be ignored.
    cache = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    candidate = cache / "serve" / leaf
    if _can_create(candidate):
        return candidate
    # Per-user name so that users sharing /tmp do not trip over each other's directories.
    user = str(os.getuid()) if hasattr(os, "getuid") else os.environ.get("USERNAME", "user")
    return Path(tempfile.gettempdir()) / f"serve-{user}" / leaf


def _can_create(path: Path) -> bool:
    """Whether ``path`` exists writable, or could be created under its nearest existing ancestor."""
    for p in (path, *path.parents):
        if p.exists():
            return p.is_dir() and os.access(p, os.W_OK | os.X_OK)
    return False


def ensure_demo_repository(path: Path | None = None) -> Path:
    """Make sure a complete demo repository exists at ``path`` (default: ``default_demo_path()``).

    A fresh repository is written to a sibling temp dir and renamed into place, so a process starting
    concurrently sees either nothing or the whole repository. An existing but incomplete or altered one
    is repaired in place, file by atomic file, rather than removed: the path may hold the user's files.
    """
    root = Path(path) if path is not None else default_demo_path()
    files = demo_files()
    if _is_complete(root, files):
        return root
    if not root.exists():
        root.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", suffix=".tmp", dir=root.parent))
        try:
            _write_files(tmp, files)
            # mkdtemp makes it 0700; a server running as another user may need to read the repository.
            tmp.chmod(0o755)
            try:
                tmp.rename(root)
            except OSError:
                pass  # another process renamed its copy first (rename onto a non-empty dir fails)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        if _is_complete(root, files):
            return root
    _write_files(root, files)
    return root
