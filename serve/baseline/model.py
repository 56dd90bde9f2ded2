"""The model a baseline belongs to: its tensors as the server sees them, its ONNX hash, where its baseline lives.

Tensor specs come from the same config completion the server runs at load
(``model_config.complete_config`` over the ONNX graph), so the baseline's features are
exactly those the server's statistics recorder will extract.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import onnxruntime as ort

from serve.datatypes import ORT_TO_OIP
from serve.errors import ServeError
from serve.protocol import model_config_pb2 as mc
from serve.repository import config_file
from serve.repository import model_config as cfg
from serve.stats.baseline_fit import ModelInfo, baseline_path, check_baseline, file_sha256, find_baseline
from serve.types import GraphTensor, TensorSpec

# config.pbtxt may declare categorical features (comma-separated feature or tensor names) in
# ``parameters { key: "categorical_features" value { string_value: "..." } }``; kinds are declared, never guessed.
CATEGORICAL_PARAMETER = "categorical_features"


class BaselineInputError(ValueError):
    """Bad command-line input to ``serve baseline``: a clear message, no traceback."""


def _graph_tensors(args: Sequence[ort.NodeArg], what: str) -> list[GraphTensor]:
    out = []
    for arg in args:
        datatype = ORT_TO_OIP.get(arg.type)
        if datatype is None:
            raise BaselineInputError(f"{what} '{arg.name}' has type {arg.type}; only tensors are supported")
        shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in (arg.shape or []))
        out.append(GraphTensor(arg.name, datatype, shape))
    return out


def _choose_version(model_dir: Path, config: mc.ModelConfig, version: int | None) -> int:
    available = sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())
    if version is not None:
        if version not in available:
            raise BaselineInputError(f"model '{model_dir.name}' has no version {version} (found {available})")
        return version
    chosen = config_file.version_policy(config).select(available)
    if not chosen:
        raise BaselineInputError(f"model '{model_dir.name}' has no version directory (found {available})")
    return max(chosen)


def load_model_info(repository: Path, name: str, version: int | None = None) -> ModelInfo:
    """Read a model's config and graph the way the server does (no batcher, one CPU session)."""
    model_dir = repository / name
    if not model_dir.is_dir():
        raise BaselineInputError(f"model '{name}' is not in the model repository {repository}")
    try:
        raw, from_file = config_file.read_config(model_dir)
        chosen = _choose_version(model_dir, raw, version)
        path = model_dir / str(chosen) / (raw.default_model_filename or config_file.DEFAULT_MODEL_FILENAME)
        if not path.is_file():
            raise BaselineInputError(f"{path} not found")
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        config = cfg.complete_config(
            raw, name=name, from_file=from_file,
            inputs=_graph_tensors(session.get_inputs(), "input"),
            outputs=_graph_tensors(session.get_outputs(), "output"),
            default_max_batch_size=64, cuda_available=False,
        )  # fmt: skip
    except ServeError as exc:
        raise BaselineInputError(f"model '{name}': {exc.message}") from None
    categorical: list[str] = []
    if CATEGORICAL_PARAMETER in raw.parameters:
        text = raw.parameters[CATEGORICAL_PARAMETER].string_value
        categorical = [c.strip() for c in text.split(",") if c.strip()]
    inputs, outputs = cfg.tensor_specs(config.input), cfg.tensor_specs(config.output)
    first_dim = None
    if config.max_batch_size == 0:
        # Without batching the server records the first axis of each tensor as rows.
        firsts = {s.dims[0] for s in inputs if s.dims}
        first_dim = firsts.pop() if len(firsts) == 1 else -1
        inputs = [TensorSpec(s.name, s.datatype, tuple(s.dims[1:])) for s in inputs]
        outputs = [TensorSpec(s.name, s.datatype, tuple(s.dims[1:])) for s in outputs]
    return ModelInfo(
        name=name,
        version=chosen,
        model_dir=model_dir,
        onnx_path=path,
        onnx_sha256=file_sha256(path),
        inputs=inputs,
        outputs=outputs,
        max_batch_size=config.max_batch_size,
        first_dim=first_dim,
        categorical=categorical,
    )


__all__ = [
    "BaselineInputError",
    "ModelInfo",
    "baseline_path",
    "check_baseline",
    "file_sha256",
    "find_baseline",
    "load_model_info",
]
