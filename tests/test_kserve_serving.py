"""`serve run` the way KServe's ServingRuntime starts it: the storage initializer's directory (a bare
``model.onnx`` at /mnt/models, here a temp dir), ``--model-name`` from the InferenceService's name and
the ports from the runtime's args; called with unmodified tritonclient over HTTP and gRPC."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from tests.fixtures.local_servers import ThreadServer, serving_in_thread
from tests.fixtures.repositories import write_bare_model

NAME = "fraud"


@pytest.fixture(scope="module")
def kserve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadServer]:
    mnt_models = tmp_path_factory.mktemp("mnt") / "models"
    write_bare_model(mnt_models)
    # serving_in_thread() passes --http-port and --grpc-port explicitly, as the runtime's args do.
    with serving_in_thread(mnt_models, tmp_path_factory.mktemp("kserve"), f"--model-name={NAME}") as server:
        yield server


X = np.array([[1.0, 2.0], [3.0, -4.0]], dtype=np.float32)


def test_bare_model_directory_is_served_over_http_as_the_named_model_version_1(kserve: ThreadServer) -> None:
    client = httpclient.InferenceServerClient(kserve.http_url)
    try:
        assert client.is_server_ready()
        assert client.is_model_ready(NAME, "1")
        assert client.get_model_metadata(NAME)["versions"] == ["1"]
        x = httpclient.InferInput("x", list(X.shape), "FP32")
        x.set_data_from_numpy(X, binary_data=True)
        result = client.infer(NAME, [x], model_version="1")
        np.testing.assert_array_equal(result.as_numpy("y"), X + X)
    finally:
        client.close()


def test_bare_model_directory_is_served_over_grpc_as_the_named_model_version_1(kserve: ThreadServer) -> None:
    client = grpcclient.InferenceServerClient(kserve.grpc_url)
    try:
        assert client.is_model_ready(NAME, "1")
        x = grpcclient.InferInput("x", list(X.shape), "FP32")
        x.set_data_from_numpy(X)
        result = client.infer(NAME, [x])
        np.testing.assert_array_equal(result.as_numpy("y"), X + X)
    finally:
        client.close()


def test_bare_model_directory_serves_no_other_model(kserve: ThreadServer) -> None:
    client = httpclient.InferenceServerClient(kserve.http_url)
    try:
        index = client.get_model_repository_index()
        assert [(m["name"], m.get("version"), m.get("state")) for m in index] == [(NAME, "1", "READY")]
        assert not client.is_model_ready("models")  # the directory's own name is no model
    finally:
        client.close()
