"""An ONNX input or output with no shape at all (unknown rank, as Triton's own test-model generator
writes them for `test_scalar_io`) is not a scalar: its config.pbtxt dims are taken as given, and
without them the model fails to load saying that they must be given. A declared rank-0 tensor
stays a scalar."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from serve.modelgen import IR_VERSION, OPSET, write_atomic
from serve.repository.repository import READY
from tests.fixtures.inprocess import in_process

NAME = "scalar_io"


def _doubler(root: Path, shape: list[int] | None) -> Path:
    """y = x * 2, with x and y declared with ``shape`` (None: no shape field, rank unknown)."""
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["y"])],
        NAME,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
        [numpy_helper.from_array(np.array(2.0, dtype=np.float32), "two")],
    )
    # Not modelgen.build: onnx.checker refuses a graph input without a shape; onnxruntime loads it.
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    write_atomic(root / NAME / "1" / "model.onnx", model.SerializeToString())
    return root / NAME


def _config(max_batch_size: int, dims: list[int]) -> str:
    return (
        f'name: "{NAME}"\nmax_batch_size: {max_batch_size}\n'
        f'input [ {{ name: "x" data_type: TYPE_FP32 dims: {dims} }} ]\n'
        f'output [ {{ name: "y" data_type: TYPE_FP32 dims: {dims} }} ]\n'
    )


def _json_infer(x: np.ndarray) -> dict[str, object]:
    return {"inputs": [{"name": "x", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]}


async def test_input_of_unknown_rank_is_served_with_the_dims_its_config_gives(tmp_path: Path) -> None:
    (_doubler(tmp_path, None) / "config.pbtxt").write_text(_config(0, [1, 1]))
    async with in_process(tmp_path) as server:
        metadata = (await server.http.get(f"/v2/models/{NAME}")).json()
        response = await server.http.post(f"/v2/models/{NAME}/infer", json=_json_infer(np.array([[3.5]])))
    assert metadata["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [1, 1]}]
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["shape"] == [1, 1]
    assert response.json()["outputs"][0]["data"] == [7.0]


async def test_input_of_unknown_rank_batches_with_the_dims_its_config_gives(tmp_path: Path) -> None:
    (_doubler(tmp_path, None) / "config.pbtxt").write_text(_config(8, [1]))
    x = np.array([[1.0], [2.5], [-4.0]])
    async with in_process(tmp_path) as server:
        response = await server.http.post(f"/v2/models/{NAME}/infer", json=_json_infer(x))
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["shape"] == [3, 1]
    assert response.json()["outputs"][0]["data"] == [2.0, 5.0, -8.0]


async def test_input_of_unknown_rank_without_a_config_fails_saying_its_dims_must_be_given(tmp_path: Path) -> None:
    _doubler(tmp_path, None)
    async with in_process(tmp_path) as server:
        [row] = server.service.repository.index()
    assert row["state"] != READY
    assert "input 'x' has no shape in the ONNX graph (its rank is unknown, not 0)" in row["reason"]
    assert "give its dims in config.pbtxt" in row["reason"]


@pytest.mark.parametrize("dims", [[1, 1], [2]])
async def test_declared_scalar_input_is_still_refused_dims_of_another_rank(tmp_path: Path, dims: list[int]) -> None:
    (_doubler(tmp_path, []) / "config.pbtxt").write_text(_config(0, dims))
    async with in_process(tmp_path) as server:
        [row] = server.service.repository.index()
    assert row["state"] != READY
    assert f"config input 'x' has dims {dims} but the ONNX graph gives []" in row["reason"]
