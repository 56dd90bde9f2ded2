"""Models as people export them, served in the test's own loop: external data, Triton's scalar dims [1],
label files with the classification extension, and ZipMap handling switched off."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import pytest_asyncio
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
import tritonclient.http as httpclient

from serve.modelgen import save
from serve.settings import ServerSettings
from tests.fixtures import triton_http
from tests.fixtures.grpc_frontends import grpc_frontend
from tests.fixtures.inprocess import InProcess, in_process
from tests.fixtures.model_formats import (
    WEIGHTS,
    classifier,
    external_data_model,
    scalar_config,
    scalar_model,
    scores_model,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

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


@dataclass
class Served:
    server: InProcess
    grpc: aioclient.InferenceServerClient  # the unmodified tritonclient, dialling the in-process port


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def served(repository: Path) -> AsyncIterator[Served]:
    settings = ServerSettings()
    async with (
        in_process(repository, settings) as server,
        grpc_frontend(server, "aio", max_message_bytes=settings.max_request_bytes) as address,
    ):
        client = aioclient.InferenceServerClient(address)
        try:
            yield Served(server, client)
        finally:
            await client.close()


@pytest.fixture()
def http(served: Served) -> httpx.AsyncClient:
    return served.server.http


@pytest.fixture()
def grpc(served: Served) -> aioclient.InferenceServerClient:
    return served.grpc


async def reason(http: httpx.AsyncClient, name: str) -> str:
    index: list[dict[str, Any]] = (await http.post("/v2/repository/index")).json()
    (row,) = [row for row in index if row["name"] == name]
    assert row["state"] == "UNAVAILABLE"
    return str(row["reason"])


def http_request(
    x: np.ndarray, output: str = "y", class_count: int = 0
) -> tuple[list[httpclient.InferInput], list[httpclient.InferRequestedOutput]]:
    """tritonclient.http's InferInput and InferRequestedOutput for ``x`` (binary both ways)."""
    inp = httpclient.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return [inp], [httpclient.InferRequestedOutput(output, class_count=class_count)]


async def http_infer(
    http: httpx.AsyncClient, model: str, x: np.ndarray, output: str = "y", class_count: int = 0
) -> np.ndarray:
    inputs, outputs = http_request(x, output, class_count)
    result = (await triton_http.infer(http, model, inputs, outputs=outputs)).as_numpy(output)
    assert result is not None
    return result


async def grpc_infer(
    grpc: aioclient.InferenceServerClient, model: str, x: np.ndarray, output: str = "y", class_count: int = 0
) -> np.ndarray:
    inp = grpcclient.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    requested = grpcclient.InferRequestedOutput(output, class_count=class_count)
    result = (await grpc.infer(model, [inp], outputs=[requested])).as_numpy(output)
    assert result is not None
    return result


# -- external data -----------------------------------------------------------------------------


async def test_model_with_external_data_loads_and_infers(http: httpx.AsyncClient) -> None:
    x = np.array([[1, 0, 0], [0, 1, 1]], dtype=np.float32)

    np.testing.assert_allclose(await http_infer(http, "external", x), x @ WEIGHTS)


async def test_external_data_escaping_the_version_directory_is_refused_with_a_reason(
    http: httpx.AsyncClient, repository: Path
) -> None:
    text = await reason(http, "external_escape")

    assert "tensor 'W': external data location '../outside.bin' is outside the model version directory" in text
    assert str(repository) not in text


# -- scalars configured as dims [1] ------------------------------------------------------------


async def test_scalar_model_configured_with_dims_one_is_served(http: httpx.AsyncClient) -> None:
    metadata = (await http.get("/v2/models/scalar")).json()
    assert metadata["inputs"][0]["shape"] == [1]

    y = await http_infer(http, "scalar", np.array([3.5], dtype=np.float32))

    np.testing.assert_array_equal(y, np.array([7.0], dtype=np.float32))


async def test_scalar_per_row_model_takes_batch_by_one(grpc: aioclient.InferenceServerClient) -> None:
    x = np.array([[1.0], [2.5], [-4.0]], dtype=np.float32)

    np.testing.assert_array_equal(await grpc_infer(grpc, "scalar_rows", x), x * 2)


# -- classification extension ------------------------------------------------------------------


async def test_server_metadata_advertises_classification(
    http: httpx.AsyncClient, grpc: aioclient.InferenceServerClient
) -> None:
    assert "classification" in (await http.get("/v2")).json()["extensions"]
    assert "classification" in (await grpc.get_server_metadata()).extensions


SCORES = np.array([[0.1, 0.7, 0.2], [0.6, 0.3, 0.1]], dtype=np.float32)
TOP_2 = [[b"0.700000:1:dog", b"0.200000:2:eel"], [b"0.600000:0:cat", b"0.300000:1:dog"]]


async def test_http_classification_uses_the_label_file(http: httpx.AsyncClient) -> None:
    assert (await http_infer(http, "labelled", SCORES, class_count=2)).tolist() == TOP_2


async def test_grpc_classification_uses_the_label_file(grpc: aioclient.InferenceServerClient) -> None:
    assert (await grpc_infer(grpc, "labelled", SCORES, class_count=2)).tolist() == TOP_2


async def test_classification_without_labels_gives_score_and_index(grpc: aioclient.InferenceServerClient) -> None:
    assert (await grpc_infer(grpc, "unlabelled", SCORES, class_count=1)).tolist() == [[b"0.700000:1"], [b"0.600000:0"]]


async def test_http_classification_as_json(http: httpx.AsyncClient) -> None:
    inp = httpclient.InferInput("x", list(SCORES.shape), "FP32")
    inp.set_data_from_numpy(SCORES, binary_data=False)
    requested = httpclient.InferRequestedOutput("y", binary_data=False, class_count=1)

    result = (await triton_http.infer(http, "labelled", [inp], outputs=[requested])).get_output("y")

    assert result == {"name": "y", "datatype": "BYTES", "shape": [2, 1], "data": ["0.700000:1:dog", "0.600000:0:cat"]}


async def test_label_file_outside_the_model_directory_is_refused(http: httpx.AsyncClient) -> None:
    assert "label_filename '../labels.txt' is outside the model directory" in await reason(http, "labels_escape")


async def test_bad_class_count_is_invalid_argument(http: httpx.AsyncClient) -> None:
    inputs, outputs = http_request(SCORES, class_count=-1)
    response = await triton_http.send(http, "labelled", inputs, outputs=outputs)

    assert response.status_code == 400
    assert "'classification' must be a non-negative integer" in response.json()["error"]


# -- ZipMap ------------------------------------------------------------------------------------


async def test_zipmap_kept_as_written_is_refused_as_before(http: httpx.AsyncClient) -> None:
    assert "only tensors" in await reason(http, "zipmap_kept")
