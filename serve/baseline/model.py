"""The model a baseline belongs to: its tensors as the server sees them, its ONNX hash, where its baseline lives.

Tensor specs come from the same config completion the server runs at load
(``model_config.complete_config`` over the ONNX graph), so the baseline's features are
exactly those the server's statistics recorder will extract.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import onnxruntime as ort

from serve.datatypes import ORT_TO_OIP
from serve.errors import ServeError
from serve.protocol import model_config_pb2 as mc
from serve.repository import model_config as cfg
from serve.runtime.onnx_runner import GraphTensor
from serve.stats.baseline import BASELINE_FILENAME, Baseline, baseline_mismatches
from serve.types import TensorSpec

# config.pbtxt may declare categorical features (comma-separated feature or tensor names) in
# ``parameters { key: "categorical_features" value { string_value: "..." } }``; kinds are declared, never guessed.
CATEGORICAL_PARAMETER = "categorical_features"
_HASH_CHUNK = 1 << 20


class BaselineInputError(ValueError):
    """Bad command-line input to ``serve baseline``: a clear message, no traceback."""


@dataclass(slots=True)
class ModelInfo:
    name: str
    version: int
    model_dir: Path
    onnx_path: Path
    onnx_sha256: str
    inputs: list[TensorSpec]  # per row, as the server's statistics see them (wiring.StatsFactory)
    outputs: list[TensorSpec]
    max_batch_size: int
    first_dim: int | None = None  # a model without batching: its inputs' own first dimension (-1 = any)
    categorical: list[str] = field(default_factory=list)

    @property
    def version_str(self) -> str:
        return str(self.version)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


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
    chosen = cfg.version_policy(config).select(available)
    if not chosen:
        raise BaselineInputError(f"model '{model_dir.name}' has no version directory (found {available})")
    return max(chosen)


def load_model_info(repository: Path, name: str, version: int | None = None) -> ModelInfo:
    """Read a model's config and graph the way the server does (no batcher, one CPU session)."""
    model_dir = repository / name
    if not model_dir.is_dir():
        raise BaselineInputError(f"model '{name}' is not in the model repository {repository}")
    try:
        raw, from_file = cfg.read_config(model_dir)
        chosen = _choose_version(model_dir, raw, version)
        path = model_dir / str(chosen) / (raw.default_model_filename or cfg.DEFAULT_MODEL_FILENAME)
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


def baseline_path(model_dir: Path, version: int | str) -> Path:
    """Where ``serve baseline`` writes by default and the server reads: next to config.pbtxt.

    The file names the version and ONNX hash it was computed for; the server and the
    monitor refuse it for any other (``check_baseline``).
    """
    return model_dir / BASELINE_FILENAME


def find_baseline(model_dir: Path, version: int | str) -> Path | None:
    path = baseline_path(model_dir, version)
    return path if path.is_file() else None


def check_baseline(baseline: Baseline, info: ModelInfo) -> list[str]:
    """Why this baseline must not be used for this model version (empty = it fits).

    Stale: the ONNX file changed since the baseline was computed. Mismatched: another
    model or version, or features the model does not yield (``baseline_mismatches``,
    the server's own check).
    """
    problems: list[str] = []
    model = baseline.model
    if model.get("name") not in (None, info.name):
        problems.append(f"baseline is for model '{model.get('name')}', not '{info.name}'")
    if str(model.get("version", info.version)) != info.version_str:
        problems.append(f"baseline is for version {model.get('version')}, not {info.version}")
    recorded = model.get("onnx_sha256")
    if recorded and recorded != info.onnx_sha256:
        problems.append(
            f"stale baseline: {info.onnx_path.name} changed since the baseline was computed "
            f"(sha256 {info.onnx_sha256[:12]}…, baseline has {recorded[:12]}…); run `serve baseline` again"
        )
    problems += baseline_mismatches(baseline, info.inputs, info.outputs)
    tensors = {t.name for t in info.inputs}
    declared = {f.tensor for f in baseline.features if f.role == "input"}
    if tensors - declared:
        problems.append(f"baseline has no features for model inputs {sorted(tensors - declared)}")
    return problems
