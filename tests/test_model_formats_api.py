"""Models as people export them, over a real server: external data, Triton's scalar dims [1], label
files with the classification extension, and ZipMap handling switched off."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from serve.modelgen import save
from tests.fixtures.model_formats import (
    WEIGHTS,
    classifier,
    external_data_model,
    scalar_config,
    scalar_model,
    scores_model,
)
from tests.fixtures.servers import RunningServer, serving

LABELS = ["cat", "dog", "eel"]


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("formats-repo")
    external_data_model(root / "external" / "1")
    external_data_model(root / "external_escape" / "1", "../outside.bin")
    for name, batching in (("scalar", False), ("scalar_rows", True)):
        scalar_model(root / name / "1", batching=batching)
        (root / name / "config.pbtxt").write_text(scalar_config(name, batching=batching))
    scores_model(root / "labelled" / "1")
    (root / "labelled" / "labels.txt").write_text("".join(f"{label}\n" for label in LABELS))
    (root / "labelled" / "config.pbtxt").write_text(
        'name: "labelled"\nmax_batch_size: 8\noutput [ { name: "y" data_type: TYPE_FP32 dims: [ 3 ] '
        'label_filename: "labels.txt" } ]\n'
    )
    scores_model(root / "unlabelled" / "1")
    scores_model(root / "labels_escape" / "1")
    (root / "labels_escape" / "config.pbtxt").write_text(
        'name: "labels_escape"\nmax_batch_size: 8\noutput [ { name: "y" data_type: TYPE_FP32 dims: [ 3 ] '
        'label_filename: "../labels.txt" } ]\n'
    )
    save(classifier({"classlabels_int64s": [0, 1, 2]}), root / "zipmap_kept" / "1" / "model.onnx")
    (root / "zipmap_kept" / "config.pbtxt").write_text(
        'name: "zipmap_kept"\nparameters { key: "rewrite_zipmap" value: { string_value: "false" } }\n'
    )
    return root


@pytest.fixture(scope="module")
def server(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with serving(repository, tmp_path_factory.mktemp("formats-server")) as running:
        yield running


@pytest.fixture(scope="module")
def http(server: RunningServer) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(server.http_url)


@pytest.fixture(scope="module")
def grpc(server: RunningServer) -> grpcclient.InferenceServerClient:
    return grpcclient.InferenceServerClient(server.grpc_url)


def reason(http: httpclient.InferenceServerClient, name: str) -> str:
    index: list[dict[str, Any]] = http.get_model_repository_index()
    (row,) = [row for row in index if row["name"] == name]
    assert row["state"] == "UNAVAILABLE"
    return str(row["reason"])


def http_infer(
    http: httpclient.InferenceServerClient, model: str, x: np.ndarray, output: str = "y", class_count: int = 0
) -> np.ndarray:
    inp = httpclient.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    requested = httpclient.InferRequestedOutput(output, class_count=class_count)
    result = http.infer(model, [inp], outputs=[requested]).as_numpy(output)
    assert result is not None
    return result


def grpc_infer(
    grpc: grpcclient.InferenceServerClient, model: str, x: np.ndarray, output: str = "y", class_count: int = 0
) -> np.ndarray:
    inp = grpcclient.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    requested = grpcclient.InferRequestedOutput(output, class_count=class_count)
    result = grpc.infer(model, [inp], outputs=[requested]).as_numpy(output)
    assert result is not None
    return result


# -- external data -----------------------------------------------------------------------------


def test_model_with_external_data_loads_and_infers(http: httpclient.InferenceServerClient) -> None:
    x = np.array([[1, 0, 0], [0, 1, 1]], dtype=np.float32)

    np.testing.assert_allclose(http_infer(http, "external", x), x @ WEIGHTS)


def test_external_data_escaping_the_version_directory_is_refused_with_a_reason(
    http: httpclient.InferenceServerClient, repository: Path
) -> None:
    text = reason(http, "external_escape")

    assert "tensor 'W': external data location '../outside.bin' is outside the model version directory" in text
    assert str(repository) not in text


# -- scalars configured as dims [1] ------------------------------------------------------------


def test_scalar_model_configured_with_dims_one_is_served(http: httpclient.InferenceServerClient) -> None:
    metadata = http.get_model_metadata("scalar")
    assert metadata["inputs"][0]["shape"] == [1]

    y = http_infer(http, "scalar", np.array([3.5], dtype=np.float32))

    np.testing.assert_array_equal(y, np.array([7.0], dtype=np.float32))


def test_scalar_per_row_model_takes_batch_by_one(grpc: grpcclient.InferenceServerClient) -> None:
    x = np.array([[1.0], [2.5], [-4.0]], dtype=np.float32)

    np.testing.assert_array_equal(grpc_infer(grpc, "scalar_rows", x), x * 2)


# -- classification extension ------------------------------------------------------------------


def test_server_metadata_advertises_classification(
    http: httpclient.InferenceServerClient, grpc: grpcclient.InferenceServerClient
) -> None:
    assert "classification" in http.get_server_metadata()["extensions"]
    assert "classification" in grpc.get_server_metadata().extensions


SCORES = np.array([[0.1, 0.7, 0.2], [0.6, 0.3, 0.1]], dtype=np.float32)
TOP_2 = [[b"0.700000:1:dog", b"0.200000:2:eel"], [b"0.600000:0:cat", b"0.300000:1:dog"]]


def test_http_classification_uses_the_label_file(http: httpclient.InferenceServerClient) -> None:
    assert http_infer(http, "labelled", SCORES, class_count=2).tolist() == TOP_2


def test_grpc_classification_uses_the_label_file(grpc: grpcclient.InferenceServerClient) -> None:
    assert grpc_infer(grpc, "labelled", SCORES, class_count=2).tolist() == TOP_2


def test_classification_without_labels_gives_score_and_index(grpc: grpcclient.InferenceServerClient) -> None:
    assert grpc_infer(grpc, "unlabelled", SCORES, class_count=1).tolist() == [[b"0.700000:1"], [b"0.600000:0"]]


def test_http_classification_as_json(http: httpclient.InferenceServerClient) -> None:
    inp = httpclient.InferInput("x", list(SCORES.shape), "FP32")
    inp.set_data_from_numpy(SCORES, binary_data=False)
    requested = httpclient.InferRequestedOutput("y", binary_data=False, class_count=1)

    result = http.infer("labelled", [inp], outputs=[requested]).get_output("y")

    assert result == {"name": "y", "datatype": "BYTES", "shape": [2, 1], "data": ["0.700000:1:dog", "0.600000:0:cat"]}


def test_label_file_outside_the_model_directory_is_refused(http: httpclient.InferenceServerClient) -> None:
    assert "label_filename '../labels.txt' is outside the model directory" in reason(http, "labels_escape")


def test_bad_class_count_is_invalid_argument(http: httpclient.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException, match="'classification' must be a non-negative integer"):
        http_infer(http, "labelled", SCORES, class_count=-1)


# -- ZipMap ------------------------------------------------------------------------------------


def test_zipmap_kept_as_written_is_refused_as_before(http: httpclient.InferenceServerClient) -> None:
    assert "only tensors" in reason(http, "zipmap_kept")
