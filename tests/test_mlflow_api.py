"""MLflow model directories (written by MLflow itself, mlflow-skinny) are served as model versions (in-process),
with their signature checked against the graph and their lineage in model metadata."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, TypedDict

import httpx
import mlflow.onnx
import numpy as np
import pytest
import pytest_asyncio
import tritonclient.http as httpclient
from mlflow.models import Model, infer_signature

from tests.fixtures import triton_http
from tests.fixtures.inprocess import InProcess, in_process
from tests.fixtures.sklearn_models import Exported, iris_logreg, pipeline

pytestmark = pytest.mark.asyncio(loop_scope="module")

RUN_ID = "4f1c2d3e5a6b7c8d9e0f1a2b3c4d5e6f"


def save(exported: Exported, version_dir: Path, signature: Any = None, run_id: str = RUN_ID) -> None:
    mlflow.onnx.save_model(
        exported.onnx_model,
        str(version_dir),
        signature=signature,
        mlflow_model=Model(run_id=run_id),
        pip_requirements=["onnx", "onnxruntime"],  # else MLflow infers them in a subprocess, seconds each
    )


def tensor_signature(exported: Exported, **overrides: np.ndarray) -> Any:
    inputs = {name: overrides.get(name, array) for name, array in exported.inputs.items()}
    proba = exported.predict_proba().astype(np.float32)
    return infer_signature(inputs, {"output_label": exported.predict(), "output_probability": proba})


@pytest.fixture(scope="module")
def iris() -> Exported:
    return iris_logreg()


@pytest.fixture(scope="module")
def repository(iris: Exported, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("mlflow-repo")
    save(iris, root / "iris" / "1", tensor_signature(iris))
    save(iris, root / "iris" / "2", tensor_signature(iris), run_id="newer" + RUN_ID[5:])
    save(iris, root / "unsigned" / "1")
    probabilities_only = infer_signature(iris.inputs, {"output_probability": iris.predict_proba().astype(np.float32)})
    save(iris, root / "probabilities_only" / "1", probabilities_only)
    save(iris, root / "wrong_dtype" / "1", tensor_signature(iris, X=iris.inputs["X"].astype(np.float64)))
    renamed = infer_signature({"features": iris.inputs["X"]}, {"output_label": iris.predict()})
    save(iris, root / "wrong_name" / "1", renamed)
    # Unnamed outputs are the graph's first ones: here the label, described by predict().
    save(iris, root / "label_only" / "1", infer_signature(iris.inputs["X"], iris.predict()))
    save(iris, root / "unnamed_wrong" / "1", infer_signature(iris.inputs["X"], iris.predict_proba()))
    columns = pipeline()
    save(columns, root / "columns" / "1", infer_signature(columns.frame, columns.predict()))
    (root / "not_onnx" / "1").mkdir(parents=True)
    (root / "not_onnx" / "1" / "MLmodel").write_text("flavors:\n  sklearn:\n    pickled_model: model.pkl\n")
    (root / "iris" / "config.pbtxt").write_text('name: "iris"\nversion_policy: { all {} }\n')
    return root


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def server(repository: Path) -> AsyncIterator[InProcess]:
    async with in_process(repository) as running:
        yield running


@pytest.fixture()
def http(server: InProcess) -> httpx.AsyncClient:
    return server.http


class Tensor(TypedDict):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(TypedDict):
    """The model metadata document (GET /v2/models/{name}), as far as these tests read it."""

    name: str
    inputs: list[Tensor]
    outputs: list[Tensor]
    parameters: dict[str, str]


async def metadata(http: httpx.AsyncClient, name: str, version: str = "") -> ModelMetadata:
    path = f"/v2/models/{name}" + (f"/versions/{version}" if version else "")
    document: ModelMetadata = (await http.get(path)).json()
    return document


async def reason(http: httpx.AsyncClient, name: str) -> str:
    (row,) = [row for row in (await http.post("/v2/repository/index")).json() if row["name"] == name]
    assert row["state"] == "UNAVAILABLE"
    return str(row["reason"])


async def test_mlflow_model_is_served_and_answers_like_the_model(http: httpx.AsyncClient, iris: Exported) -> None:
    inp = httpclient.InferInput("X", list(iris.inputs["X"].shape), "FP32")
    inp.set_data_from_numpy(iris.inputs["X"])

    result = await triton_http.infer(http, "iris", [inp], model_version="1")

    np.testing.assert_allclose(result.as_numpy("output_probability"), iris.predict_proba(), atol=1e-5)


async def test_metadata_names_the_training_run_and_the_signature(http: httpx.AsyncClient) -> None:
    parameters = (await metadata(http, "iris", "1"))["parameters"]

    assert parameters["mlflow_run_id"] == RUN_ID
    assert len(parameters["mlflow_model_uuid"]) == 32
    assert '"name":"X"' in parameters["mlflow_signature"]


async def test_each_version_directory_is_a_version_with_its_own_run(http: httpx.AsyncClient) -> None:
    runs = {v: (await metadata(http, "iris", v))["parameters"]["mlflow_run_id"] for v in ("1", "2")}

    assert runs == {"1": RUN_ID, "2": "newer" + RUN_ID[5:]}


async def test_model_without_signature_is_served_from_its_graph(http: httpx.AsyncClient) -> None:
    unsigned = await metadata(http, "unsigned")

    assert [i["name"] for i in unsigned["inputs"]] == ["X"]
    assert unsigned["parameters"]["mlflow_run_id"] == RUN_ID
    assert "mlflow_signature" not in unsigned["parameters"]


async def test_signature_listing_some_outputs_serves_those(http: httpx.AsyncClient) -> None:
    outputs = (await metadata(http, "probabilities_only"))["outputs"]

    assert [o["name"] for o in outputs] == ["output_probability"]


async def test_column_signature_is_checked_by_name_and_type(http: httpx.AsyncClient) -> None:
    assert (await http.get("/v2/models/columns/ready")).status_code == 200


async def test_unnamed_output_signature_describes_the_first_outputs(http: httpx.AsyncClient) -> None:
    outputs = (await metadata(http, "label_only"))["outputs"]

    assert [o["name"] for o in outputs] == ["output_label", "output_probability"]


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("wrong_dtype", "MLflow signature input 'X' has datatype FP64 but the ONNX graph says FP32"),
        ("wrong_name", "MLflow signature names input 'features', which the ONNX graph does not have"),
        ("unnamed_wrong", "MLflow signature output 'output_label' has datatype FP32 but the ONNX graph says INT64"),
        ("not_onnx", "MLmodel has no onnx flavor (flavors: ['sklearn'])"),
    ],
)
async def test_mlflow_model_that_does_not_fit_is_refused_saying_what_differs(
    http: httpx.AsyncClient, name: str, says: str
) -> None:
    assert says in await reason(http, name)
