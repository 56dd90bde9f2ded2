"""Serve scikit-learn's ZipMap outputs as the probability tensors they are made from.

skl2onnx ends every classifier exported with default options in a ``ZipMap`` node (domain
``ai.onnx.ml``): it turns the probabilities, a float tensor [N, classes], into a sequence of maps
``{class label: probability}``, one per row. The Open Inference Protocol carries tensors only, so at
load each such ZipMap becomes an ``Identity`` of its input: the graph output keeps its name and is
FP32 [N, classes], and the ZipMap's class labels become that output's labels.

Only the onnx package is used here (no onnxruntime): the rewrite works on the parsed model.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import onnx
from onnx import TensorProto, helper

ML_DOMAIN = "ai.onnx.ml"


@dataclass(frozen=True, slots=True)
class ZipMapRewrite:
    output: str  # the graph output, named the same before and after
    source: str  # the ZipMap's tensor input, which the output now passes on
    labels: tuple[str, ...]  # class labels in column order

    @property
    def classes(self) -> int:
        return len(self.labels)


def rewrite_zipmaps(model: onnx.ModelProto) -> list[ZipMapRewrite]:
    """Replace, in ``model`` itself, each ZipMap whose output is a graph output read by no node.

    Returns what was rewritten (empty when nothing was). Other non-tensor outputs are left alone,
    so that loading still refuses them with the usual reason.
    """
    graph = model.graph
    read = {name for node in _all_nodes(graph) for name in node.input}
    producers = {name: node for node in graph.node for name in node.output}
    rewrites: list[ZipMapRewrite] = []
    for output in graph.output:
        node = producers.get(output.name)
        if node is None or not _is_zipmap(node) or output.name in read or not output.type.HasField("sequence_type"):
            continue
        labels = _class_labels(node)
        if not labels or len(node.input) != 1:
            continue
        source = node.input[0]
        node.op_type, node.domain = "Identity", ""
        del node.attribute[:]
        batch = _batch_dim(graph, source)
        output.type.CopyFrom(helper.make_tensor_type_proto(TensorProto.FLOAT, [batch, len(labels)]))
        rewrites.append(ZipMapRewrite(output.name, source, labels))
    if rewrites and not any(op.domain in ("", "ai.onnx") for op in model.opset_import):
        model.opset_import.append(helper.make_opsetid("", 13))  # Identity needs the default domain
    return rewrites


def _is_zipmap(node: onnx.NodeProto) -> bool:
    return node.op_type == "ZipMap" and node.domain == ML_DOMAIN


def _class_labels(node: onnx.NodeProto) -> tuple[str, ...]:
    for attribute in node.attribute:
        if attribute.name == "classlabels_int64s" and attribute.ints:
            return tuple(str(label) for label in attribute.ints)
        if attribute.name == "classlabels_strings" and attribute.strings:
            return tuple(label.decode("utf-8", errors="replace") for label in attribute.strings)
    return ()


def _batch_dim(graph: onnx.GraphProto, source: str) -> str | int | None:
    """The first dimension of ``source`` where the graph declares it, else that of the first input.

    skl2onnx declares neither for the probabilities, and their rows are the input's rows."""
    for info in [*graph.value_info, *graph.input, *graph.output]:
        if info.name == source and info.type.tensor_type.shape.dim:
            return _dim(info.type.tensor_type.shape.dim[0])
    for info in graph.input:
        if info.type.HasField("tensor_type") and info.type.tensor_type.shape.dim:
            return _dim(info.type.tensor_type.shape.dim[0])
    return None


def _dim(dim: onnx.TensorShapeProto.Dimension) -> str | int | None:
    if dim.HasField("dim_value"):
        return dim.dim_value
    if dim.HasField("dim_param"):
        return dim.dim_param
    return None


def _all_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """Every node, subgraphs (If, Loop, Scan bodies) included: they may read outer names."""
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                yield from _all_nodes(attribute.g)
            elif attribute.type == onnx.AttributeProto.GRAPHS:
                for subgraph in attribute.graphs:
                    yield from _all_nodes(subgraph)
