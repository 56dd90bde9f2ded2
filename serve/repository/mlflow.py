"""MLflow model directories as model versions: ``<model>/<n>/MLmodel`` with an ``onnx`` flavor.

``MLmodel`` is YAML (MLflow's documented format): ``flavors.onnx.data`` names the ONNX file,
relative to the directory; ``signature.inputs`` and ``signature.outputs``, where present, are JSON
lists of tensor specs (``{"type": "tensor", "tensor-spec": {"dtype", "shape"}, "name"}``) or of
columns (``{"type": "double", "name"}``); ``run_id``, ``model_uuid`` and ``utc_time_created`` say
which training run made it. The signature is checked against the graph; the lineage is shown in
model metadata ``parameters``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from serve.datatypes import oip_datatype
from serve.errors import InvalidInput, ModelLoadError
from serve.paths import VERSION_DIRECTORY, confined
from serve.types import GraphTensor

MLMODEL_FILENAME = "MLmodel"

# MLflow column types (mlflow.types.DataType) that have a tensor datatype.
_COLUMN_TYPES = {
    "boolean": "BOOL",
    "integer": "INT32",
    "long": "INT64",
    "float": "FP32",
    "double": "FP64",
    "string": "BYTES",
    "binary": "BYTES",
}
# Top-level MLmodel fields shown as lineage, and the metadata parameter each is shown as.
_LINEAGE_FIELDS = {
    "run_id": "mlflow_run_id",
    "model_uuid": "mlflow_model_uuid",
    "model_id": "mlflow_model_id",
    "utc_time_created": "mlflow_utc_time_created",
    "artifact_path": "mlflow_artifact_path",
    "mlflow_version": "mlflow_version",
}


@dataclass(frozen=True, slots=True)
class SignatureTensor:
    name: str | None  # None: an unnamed tensor, matched to the graph by position
    datatype: str
    shape: tuple[int, ...] | None  # None: a column, which says nothing about shape


@dataclass(frozen=True, slots=True)
class MlflowModel:
    model_file: str  # the ONNX file, relative to the version directory
    inputs: list[SignatureTensor] | None  # None: no signature
    outputs: list[SignatureTensor] | None
    lineage: dict[str, str]  # shown as model metadata parameters


def read_mlmodel(version_dir: Path) -> MlflowModel | None:
    """The version's MLmodel, or None when the directory is not an MLflow model."""
    path = confined(version_dir, MLMODEL_FILENAME, what="MLflow file", place=VERSION_DIRECTORY)
    if not path.is_file():
        return None
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{MLMODEL_FILENAME} is not valid YAML: {exc}") from None
    if not isinstance(document, dict):
        raise ModelLoadError(f"{MLMODEL_FILENAME} is not a YAML mapping")
    model_file = _onnx_file(document, version_dir)
    signature = document.get("signature") or {}
    if not isinstance(signature, dict):
        raise ModelLoadError(f"{MLMODEL_FILENAME}: 'signature' is not a mapping")
    parts = {part: _signature_json(signature, part) for part in ("inputs", "outputs")}
    lineage = {shown: str(document[field]) for field, shown in _LINEAGE_FIELDS.items() if document.get(field)}
    if any(entries is not None for entries in parts.values()):
        shown = {part: entries for part, entries in parts.items() if entries is not None}
        lineage["mlflow_signature"] = json.dumps(shown, separators=(",", ":"))
    inputs, outputs = (_signature_tensors(parts[part], part) for part in ("inputs", "outputs"))
    return MlflowModel(model_file, inputs, outputs, lineage)


def _onnx_file(document: Mapping[str, object], version_dir: Path) -> str:
    flavors = document.get("flavors")
    if not isinstance(flavors, dict) or not isinstance(flavors.get("onnx"), dict):
        found = sorted(flavors) if isinstance(flavors, dict) else []
        raise ModelLoadError(f"{MLMODEL_FILENAME} has no onnx flavor (flavors: {found}); only ONNX models are served")
    data = flavors["onnx"].get("data")
    if not isinstance(data, str) or not data:
        raise ModelLoadError(f"{MLMODEL_FILENAME}: flavors.onnx.data does not name the ONNX file")
    confined(version_dir, data, what=f"{MLMODEL_FILENAME}: flavors.onnx.data", place=VERSION_DIRECTORY)
    return data


def _signature_json(signature: Mapping[str, object], part: str) -> list[Any] | None:
    text = signature.get(part)
    if not text:
        return None
    try:
        entries = json.loads(text) if isinstance(text, str) else text
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"{MLMODEL_FILENAME}: signature {part} is not valid JSON: {exc}") from None
    if not isinstance(entries, list):
        raise ModelLoadError(f"{MLMODEL_FILENAME}: signature {part} is not a list")
    return entries


def _signature_tensors(entries: list[Any] | None, part: str) -> list[SignatureTensor] | None:
    return None if entries is None else [_signature_tensor(entry, part, i) for i, entry in enumerate(entries)]


def _signature_tensor(entry: Any, part: str, index: int) -> SignatureTensor:
    if not isinstance(entry, dict):
        raise ModelLoadError(f"{MLMODEL_FILENAME}: signature {part}[{index}] is not an object")
    name = entry.get("name") or None
    what = f"MLflow signature {part[:-1]} {f'{name!r}' if name else f'#{index}'}"
    kind = entry.get("type")
    if kind == "tensor":
        spec = entry.get("tensor-spec") or {}
        dtype = spec.get("dtype")
        try:
            datatype = oip_datatype(np.dtype(dtype)) if isinstance(dtype, str) else ""
        except (TypeError, InvalidInput):
            datatype = ""
        if not datatype:
            raise ModelLoadError(f"{what} has dtype {dtype!r}, which has no tensor datatype")
        shape = spec.get("shape")
        if not isinstance(shape, list) or not all(isinstance(d, int) for d in shape):
            raise ModelLoadError(f"{what} has no valid shape")
        return SignatureTensor(name, datatype, tuple(d if d >= 0 else -1 for d in shape))
    if kind in _COLUMN_TYPES:
        return SignatureTensor(name, _COLUMN_TYPES[kind], None)
    raise ModelLoadError(f"{what} has type {kind!r}, which has no tensor form")


def check_signature(model: MlflowModel, inputs: list[GraphTensor], outputs: list[GraphTensor]) -> None:
    """Raise ModelLoadError saying what differs where the signature does not describe the graph."""
    if model.inputs is not None:
        _check_part(model.inputs, inputs, "input", every=True)
    if model.outputs is not None:
        _check_part(model.outputs, outputs, "output", every=False)


def signature_outputs(model: MlflowModel) -> list[str] | None:
    """The outputs to serve, in signature order, where the signature names them."""
    if model.outputs is None or any(t.name is None for t in model.outputs):
        return None
    return [t.name for t in model.outputs if t.name is not None]


def _check_part(signature: list[SignatureTensor], graph: list[GraphTensor], what: str, *, every: bool) -> None:
    by_name = {t.name: t for t in graph}
    named = [t for t in signature if t.name is not None]
    if named and len(named) != len(signature):
        raise ModelLoadError(f"MLflow signature names some of its {what}s but not all")
    if not named:
        # Unnamed tensors go by position. Inputs must all be there; outputs may be the first few,
        # as in the common infer_signature(X, model.predict(X)), which describes only the label.
        if len(signature) > len(graph) or (every and len(signature) != len(graph)):
            raise ModelLoadError(
                f"MLflow signature lists {len(signature)} unnamed {what}(s) but the ONNX graph has {len(graph)}: "
                f"{[t.name for t in graph]}"
            )
        pairs = list(zip(signature, graph[: len(signature)], strict=True))
    else:
        pairs = []
        for entry in signature:
            found = by_name.get(entry.name or "")
            if found is None:
                raise ModelLoadError(
                    f"MLflow signature names {what} '{entry.name}', which the ONNX graph does not have "
                    f"(graph {what}s: {sorted(by_name)})"
                )
            pairs.append((entry, found))
        missing = sorted(set(by_name) - {t.name for t in signature})
        if every and missing:
            raise ModelLoadError(f"the ONNX graph has {what}(s) {missing} that the MLflow signature does not list")
    for entry, tensor in pairs:
        label = f"MLflow signature {what} '{entry.name or tensor.name}'"
        if entry.datatype != tensor.datatype:
            raise ModelLoadError(f"{label} has datatype {entry.datatype} but the ONNX graph says {tensor.datatype}")
        # A graph tensor of unknown rank agrees with any shape the signature gives.
        if entry.shape is not None and tensor.rank_known and not _shapes_agree(entry.shape, tensor.shape):
            raise ModelLoadError(f"{label} has shape {list(entry.shape)} but the ONNX graph gives {list(tensor.shape)}")


def _shapes_agree(signature: tuple[int, ...], graph: tuple[int, ...]) -> bool:
    return len(signature) == len(graph) and all(s == g or -1 in (s, g) for s, g in zip(signature, graph, strict=True))
