"""scikit-learn classifiers exported with default skl2onnx options (ZipMap included) are served and
answer as scikit-learn does, over HTTP and gRPC with tritonclient: probabilities, labels, and the
classification extension's top 2."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from serve.settings import ServerSettings
from serve.validate import validate_repository
from tests.fixtures.local_servers import ThreadServer, serving_in_thread
from tests.fixtures.sklearn_models import Exported, train_all, write_repository

PROTOCOLS = ["http", "grpc"]
MODELS = ["iris_logreg", "cancer_forest", "wine_boosting", "pipeline"]


@pytest.fixture(scope="module")
def trained() -> dict[str, Exported]:
    return {exported.name: exported for exported in train_all()}


@pytest.fixture(scope="module")
def repository(trained: dict[str, Exported], tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sklearn-repo")
    write_repository(root, list(trained.values()))
    return root


@pytest.fixture(scope="module")
def server(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadServer]:
    with serving_in_thread(repository, tmp_path_factory.mktemp("sklearn-server")) as running:
        yield running


def infer(server: ThreadServer, protocol: str, exported: Exported, output: str, class_count: int = 0) -> np.ndarray:
    module: Any = httpclient if protocol == "http" else grpcclient
    client = module.InferenceServerClient(server.http_url if protocol == "http" else server.grpc_url)
    inputs = []
    for name, array in exported.inputs.items():
        inp = module.InferInput(name, list(array.shape), "BYTES" if array.dtype == object else "FP32")
        inp.set_data_from_numpy(array)
        inputs.append(inp)
    requested = [module.InferRequestedOutput(output, class_count=class_count)]
    result = client.infer(exported.name, inputs, outputs=requested).as_numpy(output)
    assert result is not None
    return np.asarray(result)


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("name", MODELS)
def test_probabilities_equal_predict_proba(
    server: ThreadServer, trained: dict[str, Exported], name: str, protocol: str
) -> None:
    exported = trained[name]

    probabilities = infer(server, protocol, exported, "output_probability")

    assert probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities, exported.predict_proba(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("name", MODELS)
def test_labels_equal_predict(server: ThreadServer, trained: dict[str, Exported], name: str, protocol: str) -> None:
    exported = trained[name]

    labels = infer(server, protocol, exported, "output_label")

    served = [value.decode() if isinstance(value, bytes) else str(value) for value in labels.reshape(-1)]
    assert served == [str(value) for value in exported.predict()]


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("name", MODELS)
def test_top_2_classes_are_score_index_and_class_label(
    server: ThreadServer, trained: dict[str, Exported], name: str, protocol: str
) -> None:
    exported = trained[name]
    probabilities = infer(server, protocol, exported, "output_probability")

    top = infer(server, protocol, exported, "output_probability", class_count=2)

    assert top.shape == (len(probabilities), 2)
    expected_proba = exported.predict_proba()
    for row, served, proba in zip(top.tolist(), probabilities, expected_proba, strict=True):
        order = sorted(range(len(served)), key=lambda i: (-served[i], i))[:2]
        assert [s.decode() for s in row] == [f"{served[i]:f}:{i}:{exported.classes[i]}" for i in order]
        # and they are scikit-learn's two most probable classes
        assert proba[order[0]] >= proba.max() - 1e-5
        assert proba[order[1]] >= np.sort(proba)[-2] - 1e-5


@pytest.mark.parametrize("name", MODELS)
def test_metadata_shows_the_zipmap_output_as_a_probability_tensor(
    server: ThreadServer, trained: dict[str, Exported], name: str
) -> None:
    metadata = httpclient.InferenceServerClient(server.http_url).get_model_metadata(name)

    outputs = {o["name"]: o for o in metadata["outputs"]}
    assert outputs["output_probability"]["datatype"] == "FP32"
    assert outputs["output_probability"]["shape"] == [-1, len(trained[name].classes)]
    assert metadata["parameters"]["zipmap_outputs"] == "output_probability"


def test_validate_reports_the_zipmap_rewrite(repository: Path) -> None:
    out = io.StringIO()

    status = asyncio.run(validate_repository(ServerSettings(), repository, out))

    assert status == 0, out.getvalue()
    assert out.getvalue().count("ZipMap output 'output_probability' is served as FP32") == len(MODELS)
