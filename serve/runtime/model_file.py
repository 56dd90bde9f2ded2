"""Read a model file and make what onnxruntime will load, before onnxruntime sees any of it.

The graph is parsed with the onnx package (external data is not read): external-data locations
are checked to stay inside the version directory, and ZipMap outputs are rewritten to tensors on
this in-memory copy. The file on disk is never changed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from serve.errors import ModelLoadError
from serve.runtime.external_data import check_external_data
from serve.runtime.zipmap import ZipMapRewrite, rewrite_zipmaps


@dataclass(frozen=True, slots=True)
class PreparedModel:
    graph: bytes  # the serialized model onnxruntime loads
    # Where onnxruntime finds external data (the model file's directory); None = the model has none.
    external_data_dir: Path | None = None
    zipmaps: list[ZipMapRewrite] = field(default_factory=list)
    # Inputs and outputs declared with no shape field (rank unknown): onnxruntime reports them as [],
    # the same as a scalar's, so only the graph itself tells them apart.
    unknown_rank: frozenset[str] = frozenset()


def prepare_model(path: Path, version_dir: Path, *, rewrite_zipmap: bool) -> PreparedModel:
    raw = path.read_bytes()
    try:
        model = onnx.load_model_from_string(raw)
    except (DecodeError, ValueError) as exc:
        raise ModelLoadError(f"{path.name} is not a valid ONNX model: {exc}") from None
    external = check_external_data(model, path.parent, version_dir)
    zipmaps = rewrite_zipmaps(model) if rewrite_zipmap else []
    # Unchanged models go to onnxruntime as read, without serializing them again.
    graph = model.SerializeToString() if zipmaps else raw
    return PreparedModel(graph, path.parent if external else None, zipmaps, _unknown_rank(model.graph))


def _unknown_rank(graph: onnx.GraphProto) -> frozenset[str]:
    return frozenset(
        value.name
        for value in [*graph.input, *graph.output]
        if value.type.HasField("tensor_type") and not value.type.tensor_type.HasField("shape")
    )
