"""Deterministic ONNX model builders for the demo repository, tests and benchmarks.

Everything is built with ``onnx.helper`` (no downloads, no torch). The same arguments always give the
same serialized bytes: weights come from ``np.random.default_rng(seed)`` and nothing depends on the
clock, the host or hash ordering.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Final

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from serve import __version__

# IR 8 / opset 17 load in every onnxruntime since 1.14, so older installations can serve these files.
IR_VERSION: Final = 8
OPSET: Final = 17

# Open Inference Protocol datatype -> ONNX tensor element type.
ONNX_ELEM_TYPE: Final[dict[str, int]] = {
    "BOOL": TensorProto.BOOL,
    "UINT8": TensorProto.UINT8,
    "UINT16": TensorProto.UINT16,
    "UINT32": TensorProto.UINT32,
    "UINT64": TensorProto.UINT64,
    "INT8": TensorProto.INT8,
    "INT16": TensorProto.INT16,
    "INT32": TensorProto.INT32,
    "INT64": TensorProto.INT64,
    "FP16": TensorProto.FLOAT16,
    "FP32": TensorProto.FLOAT,
    "FP64": TensorProto.DOUBLE,
    "BYTES": TensorProto.STRING,
}

Dim = int | str


def tensor(name: str, datatype: str, shape: Sequence[Dim]) -> onnx.ValueInfoProto:
    """A graph input/output; ``str`` dims are symbolic (e.g. ``"batch"``)."""
    return helper.make_tensor_value_info(name, ONNX_ELEM_TYPE[datatype], list(shape))


def constant(name: str, value: np.ndarray) -> TensorProto:
    return numpy_helper.from_array(np.ascontiguousarray(value), name=name)


def build(
    name: str,
    nodes: Sequence[onnx.NodeProto],
    inputs: Sequence[onnx.ValueInfoProto],
    outputs: Sequence[onnx.ValueInfoProto],
    initializers: Iterable[TensorProto] = (),
) -> onnx.ModelProto:
    """Wrap a graph into a checked model with the pinned IR version and opset."""
    graph = helper.make_graph(list(nodes), name, list(inputs), list(outputs), initializer=list(initializers))
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
        producer_name="serve.modelgen",
        producer_version=__version__,
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def dense_stack(
    x: str, dims: Sequence[int], rng: np.random.Generator, *, output: str, prefix: str = ""
) -> tuple[list[onnx.NodeProto], list[TensorProto]]:
    """MatMul+Add layers with Relu between them (not after the last) from ``x`` to ``output``.

    He initialisation (std sqrt(2 / fan_in)) keeps activations around unit scale through Relu layers, so
    even the wide benchmark model produces finite, non-degenerate outputs.
    """
    if len(dims) < 2:
        raise ValueError(f"an MLP needs at least two dims (input and output), got {list(dims)}")
    nodes: list[onnx.NodeProto] = []
    weights: list[TensorProto] = []
    last = len(dims) - 2
    for i, (fan_in, fan_out) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        w = (rng.standard_normal((fan_in, fan_out)) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        b = (rng.standard_normal(fan_out) * 0.01).astype(np.float32)
        weights += [constant(f"{prefix}w{i}", w), constant(f"{prefix}b{i}", b)]
        nodes.append(helper.make_node("MatMul", [x, f"{prefix}w{i}"], [f"{prefix}mm{i}"]))
        if i == last:
            nodes.append(helper.make_node("Add", [f"{prefix}mm{i}", f"{prefix}b{i}"], [output]))
        else:
            nodes.append(helper.make_node("Add", [f"{prefix}mm{i}", f"{prefix}b{i}"], [f"{prefix}z{i}"]))
            nodes.append(helper.make_node("Relu", [f"{prefix}z{i}"], [f"{prefix}h{i}"]))
            x = f"{prefix}h{i}"
    return nodes, weights


def mlp(
    dims: Sequence[int],
    *,
    seed: int = 0,
    input_name: str = "input",
    output_name: str = "output",
    batch_dim: str = "batch",
    softmax: bool = False,
) -> onnx.ModelProto:
    """FP32 MLP ``[batch, dims[0]] -> [batch, dims[-1]]``, optionally ending in a Softmax (last axis)."""
    rng = np.random.default_rng(seed)
    # Internal names carry a prefix so they cannot collide with caller-chosen input/output names.
    logits = "mlp/logits" if softmax else output_name
    nodes, weights = dense_stack(input_name, dims, rng, output=logits, prefix="mlp/")
    if softmax:
        nodes.append(helper.make_node("Softmax", [logits], [output_name], axis=-1))
    return build(
        "mlp_" + "x".join(str(d) for d in dims),
        nodes,
        [tensor(input_name, "FP32", [batch_dim, dims[0]])],
        [tensor(output_name, "FP32", [batch_dim, dims[-1]])],
        weights,
    )


def to_bytes(model: onnx.ModelProto) -> bytes:
    return bytes(model.SerializeToString())


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that readers see the old file or the new one, never a torn one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        # mkstemp creates 0600; model files are meant to be readable like any ordinarily written file.
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save(model: onnx.ModelProto, path: str | os.PathLike[str]) -> Path:
    """Write ``model`` to ``path`` (parent directories created, file replaced atomically)."""
    target = Path(path)
    write_atomic(target, to_bytes(model))
    return target
