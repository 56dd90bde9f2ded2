"""MLflow model directories (written by MLflow itself, mlflow-skinny) are served as model versions,
with their signature checked against the graph and their lineage in model metadata."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow.onnx
import numpy as np
import pytest
import tritonclient.http as httpclient
from mlflow.models import Model, infer_signature

from tests.fixtures.servers import RunningServer, serving
from tests.fixtures.sklearn_models import Exported, iris_logreg, pipeline

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


@pytest.fixture(scope="module")
def server(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with serving(repository, tmp_path_factory.mktemp("mlflow-server")) as running:
        yield running


@pytest.fixture(scope="module")
def client(server: RunningServer) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(server.http_url)


def reason(client: httpclient.InferenceServerClient, name: str) -> str:
    (row,) = [row for row in client.get_model_repository_index() if row["name"] == name]
    assert row["state"] == "UNAVAILABLE"
    return str(row["reason"])


def test_mlflow_model_is_served_and_answers_like_the_model(
    client: httpclient.InferenceServerClient, iris: Exported
) -> None:
    inp = httpclient.InferInput("X", list(iris.inputs["X"].shape), "FP32")
    inp.set_data_from_numpy(iris.inputs["X"])

    result = client.infer("iris", [inp], model_version="1")

    np.testing.assert_allclose(result.as_numpy("output_probability"), iris.predict_proba(), atol=1e-5)


def test_metadata_names_the_training_run_and_the_signature(client: httpclient.InferenceServerClient) -> None:
    parameters = client.get_model_metadata("iris", "1")["parameters"]

    assert parameters["mlflow_run_id"] == RUN_ID
    assert len(parameters["mlflow_model_uuid"]) == 32
    assert '"name":"X"' in parameters["mlflow_signature"]


def test_each_version_directory_is_a_version_with_its_own_run(client: httpclient.InferenceServerClient) -> None:
    runs = {v: client.get_model_metadata("iris", v)["parameters"]["mlflow_run_id"] for v in ("1", "2")}

    assert runs == {"1": RUN_ID, "2": "newer" + RUN_ID[5:]}


def test_model_without_signature_is_served_from_its_graph(client: httpclient.InferenceServerClient) -> None:
    metadata = client.get_model_metadata("unsigned")

    assert [i["name"] for i in metadata["inputs"]] == ["X"]
    assert metadata["parameters"]["mlflow_run_id"] == RUN_ID
    assert "mlflow_signature" not in metadata["parameters"]


def test_signature_listing_some_outputs_serves_those(client: httpclient.InferenceServerClient) -> None:
    outputs = client.get_model_metadata("probabilities_only")["outputs"]

    assert [o["name"] for o in outputs] == ["output_probability"]


def test_column_signature_is_checked_by_name_and_type(client: httpclient.InferenceServerClient) -> None:
    assert client.is_model_ready("columns")


def test_unnamed_output_signature_describes_the_first_outputs(client: httpclient.InferenceServerClient) -> None:
    outputs = client.get_model_metadata("label_only")["outputs"]

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
def test_mlflow_model_that_does_not_fit_is_refused_saying_what_differs(
    client: httpclient.InferenceServerClient, name: str, says: str
) -> None:
    assert says in reason(client, name)
