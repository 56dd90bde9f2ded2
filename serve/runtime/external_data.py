"""ONNX external data: tensors whose bytes live in files beside the model, named by a relative
``location``. Before onnxruntime opens anything, every location must resolve (symlinks
included) to a file inside the model version's directory, so that a model cannot make the server
read files elsewhere. Errors name the tensor and the location as written, never the resolved
path, which would tell a client about the server's file system.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import onnx

from serve.errors import ModelLoadError
from serve.paths import VERSION_DIRECTORY, confined


def check_external_data(model: onnx.ModelProto, base_dir: Path, version_dir: Path) -> bool:
    """Check every external-data location of ``model``; True if it has any.

    ``base_dir`` is where locations are relative to (the model file's directory); all of them must
    stay inside ``version_dir``."""
    found = False
    for tensor in _all_tensors(model.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        found = True
        location = next((entry.value for entry in tensor.external_data if entry.key == "location"), "")
        if not location:
            raise ModelLoadError(f"tensor '{tensor.name}' is stored as external data but names no location")
        what = f"tensor '{tensor.name}': external data location"
        target = confined(base_dir, location, what=what, place=VERSION_DIRECTORY, within=version_dir)
        if not target.is_file():
            raise ModelLoadError(f"tensor '{tensor.name}': external data file '{location}' not found")
    return found


def _all_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Initializers and constant tensors, in subgraphs too: any of them may be external."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.TENSOR:
                yield attribute.t
            elif attribute.type == onnx.AttributeProto.TENSORS:
                yield from attribute.tensors
            elif attribute.type == onnx.AttributeProto.SPARSE_TENSOR:
                yield attribute.sparse_tensor.values
                yield attribute.sparse_tensor.indices
            elif attribute.type == onnx.AttributeProto.GRAPH:
                yield from _all_tensors(attribute.g)
            elif attribute.type == onnx.AttributeProto.GRAPHS:
                for subgraph in attribute.graphs:
                    yield from _all_tensors(subgraph)
