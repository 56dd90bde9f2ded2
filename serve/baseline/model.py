"""The model a baseline belongs to: its tensors as the server sees them, its ONNX hash, where its baseline lives.

The model is read the way the server loads it: an MLflow model directory's ``MLmodel`` names
the ONNX file and its signature picks the outputs; scikit-learn's ZipMap outputs (a sequence of
maps per row, which the protocol cannot carry) are rewritten to the FP32 [N, classes]
probabilities they are made from (``serve.runtime.model_file.prepare_model``); tensor specs come
from the same config completion (``model_config.complete_config``) over that graph. So the
baseline's features are exactly those the server's statistics recorder will extract, and the
held-out sample runs through the graph the server runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort

from serve.datatypes import ORT_TO_OIP
from serve.errors import ServeError
from serve.input_stats.baseline_fit import ModelInfo, baseline_path, check_baseline, file_sha256, find_baseline
from serve.protocol import model_config_pb2 as mc
from serve.repository import config_file
from serve.repository import model_config as cfg
from serve.repository.labels import read_labels
from serve.repository.layout import is_version_number
from serve.repository.mlflow import MlflowModel, check_signature, read_mlmodel, signature_outputs
from serve.runtime.model_file import prepare_model
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
            raise BaselineInputError(
                f"{what} '{arg.name}' has type {arg.type}; only tensors are supported (the server refuses it too)"
            )
        shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in (arg.shape or []))
        out.append(GraphTensor(arg.name, datatype, shape))
    return out


def _choose_version(model_dir: Path, config: mc.ModelConfig, version: int | None) -> int:
    available = sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and is_version_number(p.name))
    if version is not None:
        if version not in available:
            raise BaselineInputError(f"model '{model_dir.name}' has no version {version} (found {available})")
        return version
    chosen = config_file.version_policy(config).select(available)
    if not chosen:
        raise BaselineInputError(f"model '{model_dir.name}' has no version directory (found {available})")
    return max(chosen)


@dataclass(frozen=True, slots=True)
class LoadedModel:
    info: ModelInfo
    # Class labels by output, as the server serves them: a ZipMap's labels, then config.pbtxt's label_filename.
    class_labels: dict[str, list[str]]


def load_model_info(repository: Path, name: str, version: int | None = None) -> ModelInfo:
    """Read a model's config and graph the way the server does (no batcher, one CPU session)."""
    return load_model(repository, name, version).info


def load_model(repository: Path, name: str, version: int | None = None) -> LoadedModel:
    """``load_model_info``, with the outputs' class labels."""
    model_dir = repository / name
    if not model_dir.is_dir():
        raise BaselineInputError(f"model '{name}' is not in the model repository {repository}")
    try:
        raw, from_file = config_file.read_config(model_dir)
        chosen = _choose_version(model_dir, raw, version)
        version_dir = model_dir / str(chosen)
        mlmodel = read_mlmodel(version_dir)  # an MLflow model directory names its ONNX file
        filename = mlmodel.model_file if mlmodel else raw.default_model_filename or config_file.DEFAULT_MODEL_FILENAME
        path = version_dir / filename
        if not path.is_file():
            raise BaselineInputError(f"{path} not found")
        prepared = prepare_model(path, version_dir, rewrite_zipmap=cfg.rewrites_zipmap(raw))
        session = open_session(prepared.graph, path)
        graph_inputs = _graph_tensors(session.get_inputs(), "input")
        graph_outputs = _graph_tensors(session.get_outputs(), "output")
        if mlmodel is not None:
            check_signature(mlmodel, graph_inputs, graph_outputs)
        config = cfg.complete_config(
            raw, name=name, from_file=from_file, inputs=graph_inputs, outputs=graph_outputs,
            default_max_batch_size=64, cuda_available=False,
        )  # fmt: skip
        if mlmodel is not None:
            _signature_outputs(mlmodel, raw, config)
        class_labels = {z.output: list(z.labels) for z in prepared.zipmaps}
        class_labels.update(read_labels(config, model_dir))
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
    info = ModelInfo(
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
        graph=prepared.graph,
    )
    return LoadedModel(info, class_labels)


def open_session(graph: bytes, path: Path) -> ort.InferenceSession:
    """One CPU session on ``graph``, the model as the server serves it (read from ``path``)."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    # A model given as bytes has no directory of its own for relative external-data paths.
    options.add_session_config_entry("session.model_external_initializers_file_folder_path", str(path.parent))
    return ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])


def _signature_outputs(mlmodel: MlflowModel, raw: mc.ModelConfig, config: mc.ModelConfig) -> None:
    """The outputs the server serves for an MLflow model: those its signature names, in its order,
    unless config.pbtxt lists outputs (as the repository does at load)."""
    served = signature_outputs(mlmodel)
    if served is None or raw.output:
        return
    by_name = {o.name: o for o in config.output}
    kept = [by_name[name] for name in served]
    copies = [mc.ModelOutput() for _ in kept]
    for copy, output in zip(copies, kept, strict=True):
        copy.CopyFrom(output)
    del config.output[:]
    config.output.extend(copies)


__all__ = [
    "BaselineInputError",
    "LoadedModel",
    "ModelInfo",
    "baseline_path",
    "check_baseline",
    "file_sha256",
    "find_baseline",
    "load_model",
    "load_model_info",
]
