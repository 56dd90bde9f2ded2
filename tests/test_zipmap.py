"""The ZipMap rewrite on hand-built graphs: which outputs change, into what, and which are left alone."""

from __future__ import annotations

import ast
import inspect

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

import serve.runtime.zipmap as zipmap_module
from serve.runtime.zipmap import ZipMapRewrite, rewrite_zipmaps
from tests.fixtures.model_formats import ONNX_OPSET, classifier


def test_zipmap_output_becomes_its_probability_tensor_under_the_same_name() -> None:
    model = classifier({"classlabels_int64s": [10, 20, 30]})

    rewrites = rewrite_zipmaps(model)

    assert rewrites == [ZipMapRewrite("scores", "probabilities", ("10", "20", "30"))]
    (output,) = model.graph.output
    assert output.name == "scores"
    assert output.type.tensor_type.elem_type == TensorProto.FLOAT
    dims = output.type.tensor_type.shape.dim
    assert (dims[0].dim_param, dims[1].dim_value) == ("N", 3)


def test_rewritten_graph_runs_and_returns_the_probabilities() -> None:
    model = classifier({"classlabels_int64s": [0, 1, 2]})
    rewrite_zipmaps(model)
    onnx.checker.check_model(model)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]], dtype=np.float32)

    (scores,) = session.run(None, {"x": x})

    expected = np.exp(x) / np.exp(x).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(scores, expected, rtol=1e-6)


def test_string_class_labels_become_the_labels() -> None:
    model = classifier({"classlabels_strings": ["setosa", "versicolor", "virginica"]})

    (rewrite,) = rewrite_zipmaps(model)

    assert rewrite.labels == ("setosa", "versicolor", "virginica")


def test_zipmap_output_read_by_another_node_is_left_alone() -> None:
    model = classifier({"classlabels_int64s": [0, 1, 2]}, extra_reader=True)

    assert rewrite_zipmaps(model) == []
    assert model.graph.output[0].type.HasField("sequence_type")


def test_sequence_output_not_made_by_a_zipmap_is_left_alone() -> None:
    graph = helper.make_graph(
        [helper.make_node("SequenceConstruct", ["x"], ["items"])],
        "sequence",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
        [helper.make_tensor_sequence_value_info("items", TensorProto.FLOAT, ["N", 2])],
    )
    model = helper.make_model(graph, opset_imports=[ONNX_OPSET], ir_version=8)

    assert rewrite_zipmaps(model) == []


def test_rewrite_module_does_not_import_onnxruntime() -> None:
    tree = ast.parse(inspect.getsource(zipmap_module))
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}

    assert not any(name.startswith("onnxruntime") for name in imported)
