"""Acceptance tests of the HTTP/REST API against a real server.

Clients: the unmodified tritonclient.http (binary and JSON tensors), and http.client for the
raw bodies, headers and status codes that tritonclient hides.
"""

from __future__ import annotations

import gzip
import http.client
import json
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from serve.codecs.bytes_tensor import serialize_bytes_tensor
from serve.demo import IDENTITY_DATATYPES
from tests.fixtures.clients import RawResponse, post_binary, post_json, request
from tests.fixtures.data import (
    MULTI_IO_DATATYPES,
    assert_tabular_answer,
    features,
    fixed_shape_expected,
    multi_io_expected,
    multi_io_inputs,
    sample,
)
from tests.fixtures.servers import RunningServer, start_server

TABULAR = "/v2/models/tabular/infer"
JSON_DATATYPES = [dt for dt in IDENTITY_DATATYPES if dt != "FP16"]


@pytest.fixture(scope="module")
def client(demo_server: RunningServer) -> Iterator[httpclient.InferenceServerClient]:
    c = httpclient.InferenceServerClient(demo_server.http_url)
    try:
        yield c
    finally:
        c.close()


@pytest.fixture(scope="module")
def port(demo_server: RunningServer) -> int:
    return demo_server.http_port


def infer_input(name: str, array: np.ndarray, datatype: str, binary: bool = True) -> httpclient.InferInput:
    tensor = httpclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=binary)
    return tensor


def tabular_json(rows: int = 1, **extra: Any) -> dict[str, Any]:
    x = features(rows)
    body = {"inputs": [{"name": "features", "shape": [rows, 8], "datatype": "FP32", "data": x.ravel().tolist()}]}
    body.update(extra)
    return body


def stats_of(port: int, model: str) -> dict[str, Any]:
    (entry,) = request(port, "GET", f"/v2/models/{model}/stats").json()["model_stats"]
    return entry


def assert_still_serving(port: int) -> None:
    response = post_json(port, TABULAR, tabular_json())
    assert response.status == 200, response.body
    assert [o["name"] for o in response.json()["outputs"]] == ["probabilities", "label"]


def assert_error(response: RawResponse, status: int, *fragments: str) -> str:
    assert response.status == status, (response.status, response.body)
    assert response.headers["content-type"].startswith("application/json")
    message = response.error()
    for fragment in fragments:
        assert fragment in message, message
    return message


# ---- health and metadata -------------------------------------------------------------------------


def test_server_is_live(client: httpclient.InferenceServerClient) -> None:
    assert client.is_server_live()


def test_server_is_ready(client: httpclient.InferenceServerClient) -> None:
    assert client.is_server_ready()


def test_health_endpoints_answer_200_with_an_empty_body(port: int) -> None:
    for path in ("/v2/health/live", "/v2/health/ready", "/v2/models/tabular/ready"):
        response = request(port, "GET", path)
        assert (response.status, response.body) == (200, b""), path


def test_server_metadata_lists_the_extensions_clients_look_for(client: httpclient.InferenceServerClient) -> None:
    metadata = client.get_server_metadata()
    assert metadata["name"] and metadata["version"]
    assert {"statistics", "binary_tensor_data", "model_repository"} <= set(metadata["extensions"])


def test_model_metadata_puts_the_batch_dimension_first(client: httpclient.InferenceServerClient) -> None:
    metadata = client.get_model_metadata("tabular")
    assert metadata["name"] == "tabular"
    assert metadata["versions"] == ["1"]
    assert metadata["platform"] == "onnxruntime_onnx"
    assert metadata["inputs"] == [{"name": "features", "datatype": "FP32", "shape": [-1, 8]}]
    assert metadata["outputs"] == [
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]},
        {"name": "label", "datatype": "INT64", "shape": [-1, 1]},
    ]


def test_model_metadata_of_a_non_batching_model_has_no_batch_dimension(
    client: httpclient.InferenceServerClient,
) -> None:
    metadata = client.get_model_metadata("fixed_shape")
    assert metadata["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [2, 3]}]
    assert metadata["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [2, 3]}]


def test_model_metadata_answers_on_the_versioned_path(client: httpclient.InferenceServerClient) -> None:
    assert client.get_model_metadata("multi_io", model_version="1")["name"] == "multi_io"


def test_model_is_ready(client: httpclient.InferenceServerClient) -> None:
    assert client.is_model_ready("tabular")
    assert client.is_model_ready("tabular", model_version="1")


def test_unknown_model_and_version_are_not_ready(port: int) -> None:
    assert request(port, "GET", "/v2/models/nope/ready").status == 400
    assert request(port, "GET", "/v2/models/tabular/versions/9/ready").status == 400


def test_model_config_is_json_the_way_triton_writes_it(client: httpclient.InferenceServerClient) -> None:
    config = client.get_model_config("tabular")
    assert config["name"] == "tabular"
    assert config["platform"] == "onnxruntime_onnx"
    assert config["backend"] == "onnxruntime"
    assert config["max_batch_size"] == 64
    assert [i["name"] for i in config["input"]] == ["features"]
    assert [o["name"] for o in config["output"]] == ["probabilities", "label"]
    assert config["input"][0]["data_type"] == "TYPE_FP32"
    # int64 fields are JSON numbers, not protobuf's strings.
    assert config["input"][0]["dims"] == [8]
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 0
    assert config["instance_group"][0]["kind"] == "KIND_CPU"


def test_model_config_omits_scheduling_keys_that_are_not_used(client: httpclient.InferenceServerClient) -> None:
    # perf_analyzer picks its scheduler from key presence alone.
    config = client.get_model_config("tabular")
    assert "sequence_batching" not in config
    assert "ensemble_scheduling" not in config


def test_model_config_of_a_model_without_config_file_comes_from_the_graph(
    client: httpclient.InferenceServerClient,
) -> None:
    config = client.get_model_config("multi_io")
    assert config["max_batch_size"] > 0
    types = {i["name"]: (i["data_type"], i["dims"]) for i in config["input"]}
    assert types == {
        "text": ("TYPE_STRING", [1]),
        "counts": ("TYPE_INT32", [4]),
        "flag": ("TYPE_BOOL", [1]),
        "values": ("TYPE_FP64", [4]),
    }


def test_model_config_of_a_non_batching_model_has_max_batch_size_zero(
    client: httpclient.InferenceServerClient,
) -> None:
    config = client.get_model_config("fixed_shape")
    assert config["max_batch_size"] == 0
    assert config["input"][0]["dims"] == [2, 3]


# ---- inference -----------------------------------------------------------------------------------


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_tabular_answers_what_onnxruntime_answers(
    client: httpclient.InferenceServerClient, demo_repository: Path, binary: bool
) -> None:
    x = features(3)
    outputs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in ("probabilities", "label")]
    result = client.infer("tabular", [infer_input("features", x, "FP32", binary)], outputs=outputs)
    assert_tabular_answer(demo_repository, x, result.as_numpy("probabilities"), result.as_numpy("label"))


def test_multi_io_answers_every_output_with_binary_tensors(client: httpclient.InferenceServerClient) -> None:
    inputs = multi_io_inputs(3)
    result = client.infer("multi_io", [infer_input(n, a, MULTI_IO_DATATYPES[n]) for n, a in inputs.items()])
    for name, expected in multi_io_expected(inputs).items():
        got = result.as_numpy(name)
        assert got.dtype == expected.dtype, name
        np.testing.assert_array_equal(got, expected, err_msg=name)


def test_multi_io_answers_json_inputs_with_json_outputs_and_binary_fp16(
    client: httpclient.InferenceServerClient,
) -> None:
    inputs = multi_io_inputs(2)
    outputs = [
        httpclient.InferRequestedOutput(name, binary_data=name == "values_half")
        for name in ("text_out", "counts_doubled", "flag_not", "values_sum", "values_half")
    ]
    result = client.infer(
        "multi_io",
        [infer_input(n, a, MULTI_IO_DATATYPES[n], binary=False) for n, a in inputs.items()],
        outputs=outputs,
    )
    expected = multi_io_expected(inputs)
    # JSON strings come back as str.
    assert result.as_numpy("text_out").tolist() == [[b.decode()] for b in expected["text_out"][:, 0]]
    for name in ("counts_doubled", "flag_not", "values_sum", "values_half"):
        np.testing.assert_array_equal(result.as_numpy(name), expected[name], err_msg=name)


def test_fixed_shape_model_infers_without_a_batch_dimension(client: httpclient.InferenceServerClient) -> None:
    x = np.array([[1, 2, 3], [4, 5, 6]], dtype=np.float32)
    result = client.infer("fixed_shape", [infer_input("x", x, "FP32")])
    np.testing.assert_array_equal(result.as_numpy("y"), fixed_shape_expected(x))


@pytest.mark.parametrize("datatype", IDENTITY_DATATYPES)
def test_every_datatype_round_trips_exactly_as_binary(client: httpclient.InferenceServerClient, datatype: str) -> None:
    name = datatype.lower()
    sent = sample(datatype)
    others = [dt for dt in IDENTITY_DATATYPES if dt != datatype]
    inputs = [infer_input(f"in_{name}", sent, datatype)] + [
        infer_input(f"in_{dt.lower()}", sample(dt), dt) for dt in others
    ]
    result = client.infer(
        "identity_all", inputs, outputs=[httpclient.InferRequestedOutput(f"out_{name}", binary_data=True)]
    )
    got = result.as_numpy(f"out_{name}")
    assert got.dtype == sent.dtype and got.shape == sent.shape
    np.testing.assert_array_equal(got, sent)
    if datatype in ("FP16", "FP32", "FP64"):
        assert got.tobytes() == sent.tobytes()  # bit-exact, -0.0 included


@pytest.mark.parametrize("datatype", JSON_DATATYPES)
def test_every_json_datatype_round_trips_exactly_as_json(
    client: httpclient.InferenceServerClient, datatype: str
) -> None:
    name = datatype.lower()
    sent = sample(datatype)
    inputs = [infer_input(f"in_{dt.lower()}", sample(dt), dt, binary=dt != datatype) for dt in IDENTITY_DATATYPES]
    result = client.infer(
        "identity_all", inputs, outputs=[httpclient.InferRequestedOutput(f"out_{name}", binary_data=False)]
    )
    got = result.as_numpy(f"out_{name}")
    if datatype == "BYTES":
        assert got.tolist() == [[v.decode() for v in row] for row in sent]
    else:
        assert got.dtype == sent.dtype
        np.testing.assert_array_equal(got, sent)


def test_bytes_with_non_ascii_and_empty_elements_round_trip(client: httpclient.InferenceServerClient) -> None:
    text = np.array([["naïve café"], [""], ["ß∂ƒ©"]], dtype=object)
    text = np.vectorize(lambda s: s.encode(), otypes=[object])(text)
    inputs = multi_io_inputs(3)
    inputs["text"] = text
    result = client.infer(
        "multi_io",
        [infer_input(n, a, MULTI_IO_DATATYPES[n]) for n, a in inputs.items()],
        outputs=[httpclient.InferRequestedOutput("text_out")],
    )
    assert result.as_numpy("text_out").tolist() == text.tolist()


def test_a_multi_row_request_answers_each_row_as_if_sent_alone(
    client: httpclient.InferenceServerClient, demo_repository: Path
) -> None:
    x = features(5, seed=3)
    together = client.infer("tabular", [infer_input("features", x, "FP32")]).as_numpy("probabilities")
    assert together.shape == (5, 3)
    for row in range(5):
        alone = client.infer("tabular", [infer_input("features", x[row : row + 1], "FP32")])
        np.testing.assert_allclose(together[row : row + 1], alone.as_numpy("probabilities"), rtol=1e-6)


def test_requested_outputs_are_the_only_outputs_returned(client: httpclient.InferenceServerClient) -> None:
    result = client.infer(
        "tabular",
        [infer_input("features", features(2), "FP32")],
        outputs=[httpclient.InferRequestedOutput("label")],
    )
    assert [o["name"] for o in result.get_response()["outputs"]] == ["label"]
    assert result.as_numpy("probabilities") is None


def test_per_output_binary_data_mixes_json_and_binary_outputs(port: int) -> None:
    x = features(2)
    response = post_binary(
        port,
        TABULAR,
        {
            "inputs": [
                {"name": "features", "shape": [2, 8], "datatype": "FP32", "parameters": {"binary_data_size": x.nbytes}}
            ],
            "outputs": [
                {"name": "probabilities", "parameters": {"binary_data": True}},
                {"name": "label", "parameters": {"binary_data": False}},
            ],
        },
        [x.tobytes()],
    )
    assert response.status == 200, response.body
    assert response.headers["content-type"] == "application/octet-stream"
    header_length = int(response.headers["inference-header-content-length"])
    header = json.loads(response.body[:header_length])
    probabilities, label = header["outputs"]
    assert probabilities["parameters"] == {"binary_data_size": 2 * 3 * 4}
    assert "data" not in probabilities
    assert "parameters" not in label and len(label["data"]) == 2
    blob = np.frombuffer(response.body[header_length:], dtype="<f4").reshape(2, 3)
    np.testing.assert_array_equal(np.asarray(label["data"]).reshape(2), blob.argmax(axis=1))


def test_binary_data_output_parameter_makes_every_output_binary(port: int) -> None:
    response = post_json(port, TABULAR, tabular_json(2, parameters={"binary_data_output": True}))
    assert response.status == 200
    header_length = int(response.headers["inference-header-content-length"])
    outputs = json.loads(response.body[:header_length])["outputs"]
    assert [o["parameters"]["binary_data_size"] for o in outputs] == [2 * 3 * 4, 2 * 8]
    assert len(response.body) == header_length + 24 + 16


def test_an_all_json_response_is_application_json_without_a_header_length(port: int) -> None:
    response = post_json(port, TABULAR, tabular_json())
    assert response.status == 200
    assert response.headers["content-type"] == "application/json"
    assert "inference-header-content-length" not in response.headers
    assert {o["name"] for o in response.json()["outputs"]} == {"probabilities", "label"}


def test_nested_json_data_is_accepted(port: int) -> None:
    x = features(2)
    body = {"inputs": [{"name": "features", "shape": [2, 8], "datatype": "FP32", "data": x.tolist()}]}
    flat = post_json(port, TABULAR, tabular_json(2)).json()["outputs"]
    nested = post_json(port, TABULAR, body).json()["outputs"]
    assert nested == flat


def test_raw_binary_body_with_zero_header_length_is_one_row(port: int, demo_repository: Path) -> None:
    x = features(1)
    response = request(port, "POST", TABULAR, x.tobytes(), {"Inference-Header-Content-Length": "0"})
    assert response.status == 200, response.body
    header_length = int(response.headers["inference-header-content-length"])
    probabilities = np.frombuffer(response.body[header_length : header_length + 12], dtype="<f4").reshape(1, 3)
    label = np.frombuffer(response.body[header_length + 12 :], dtype="<i8").reshape(1, 1)
    assert_tabular_answer(demo_repository, x, probabilities, label)


def test_request_id_is_echoed(client: httpclient.InferenceServerClient) -> None:
    result = client.infer("tabular", [infer_input("features", features(1), "FP32")], request_id="req-42")
    assert result.get_response()["id"] == "req-42"


def test_request_id_is_echoed_on_a_json_request(port: int) -> None:
    assert post_json(port, TABULAR, tabular_json(id="json-7")).json()["id"] == "json-7"


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_request_bodies_are_inflated(
    client: httpclient.InferenceServerClient, demo_repository: Path, algorithm: str
) -> None:
    x = features(4)
    result = client.infer("tabular", [infer_input("features", x, "FP32")], request_compression_algorithm=algorithm)
    assert_tabular_answer(demo_repository, x, result.as_numpy("probabilities"), result.as_numpy("label"))


def test_accept_encoding_gzip_compresses_the_response(port: int) -> None:
    plain = post_json(port, TABULAR, tabular_json(3))
    compressed = post_json(port, TABULAR, tabular_json(3), {"Accept-Encoding": "gzip"})
    assert compressed.status == 200
    assert compressed.headers["content-encoding"] == "gzip"
    assert json.loads(gzip.decompress(compressed.body)) == plain.json()


def test_tritonclient_reads_a_gzip_compressed_response(
    client: httpclient.InferenceServerClient, demo_repository: Path
) -> None:
    x = features(2)
    result = client.infer("tabular", [infer_input("features", x, "FP32")], response_compression_algorithm="gzip")
    assert_tabular_answer(demo_repository, x, result.as_numpy("probabilities"), result.as_numpy("label"))


# ---- statistics ----------------------------------------------------------------------------------


def test_statistics_count_each_request_and_its_rows(client: httpclient.InferenceServerClient, port: int) -> None:
    before = stats_of(port, "tabular")
    client.infer("tabular", [infer_input("features", features(3), "FP32")])
    after = stats_of(port, "tabular")
    assert after["version"] == "1"
    assert after["inference_count"] - before["inference_count"] == 3
    assert after["execution_count"] - before["execution_count"] == 1
    for key in ("success", "queue", "compute_input", "compute_infer", "compute_output"):
        assert after["inference_stats"][key]["count"] - before["inference_stats"][key]["count"] == 1, key
    assert after["inference_stats"]["success"]["ns"] > before["inference_stats"]["success"]["ns"]
    assert after["last_inference"] > 0


def test_statistics_carry_every_field_perf_analyzer_reads(client: httpclient.InferenceServerClient) -> None:
    (entry,) = client.get_inference_statistics("tabular")["model_stats"]
    assert entry["name"] == "tabular" and entry["version"].isdigit()
    assert isinstance(entry["inference_count"], int) and isinstance(entry["execution_count"], int)
    for key in ("success", "queue", "compute_input", "compute_infer", "compute_output", "cache_hit", "cache_miss"):
        assert isinstance(entry["inference_stats"][key]["count"], int), key
        assert isinstance(entry["inference_stats"][key]["ns"], int), key


def test_a_rejected_request_counts_as_a_failure(port: int) -> None:
    before = stats_of(port, "tabular")["inference_stats"]["fail"]["count"]
    post_json(port, TABULAR, {"inputs": [{"name": "features", "shape": [1, 7], "datatype": "FP32", "data": [0.0] * 7}]})
    assert stats_of(port, "tabular")["inference_stats"]["fail"]["count"] == before + 1


def test_statistics_of_all_models_list_every_model(port: int) -> None:
    stats = request(port, "GET", "/v2/models/stats").json()["model_stats"]
    assert {s["name"] for s in stats} == {"tabular", "multi_io", "identity_all", "fixed_shape"}
    assert all(s["version"] == "1" for s in stats)


# ---- bad input -----------------------------------------------------------------------------------


def test_unknown_model_is_404(port: int) -> None:
    assert_error(post_json(port, "/v2/models/nope/infer", tabular_json()), 404, "nope")
    assert_error(request(port, "GET", "/v2/models/nope"), 404, "nope")
    assert_still_serving(port)


def test_unknown_version_is_404(port: int) -> None:
    assert_error(post_json(port, "/v2/models/tabular/versions/7/infer", tabular_json()), 404, "7")
    assert_error(request(port, "GET", "/v2/models/tabular/versions/7/config"), 404, "7")
    assert_still_serving(port)


def test_a_non_numeric_version_is_400_naming_it(port: int) -> None:
    assert_error(post_json(port, "/v2/models/tabular/versions/latest/infer", tabular_json()), 400, "'latest'")
    assert_still_serving(port)


def test_unknown_route_is_404_with_a_json_error(port: int) -> None:
    assert_error(request(port, "GET", "/v2/nothing/here"), 404, "/v2/nothing/here")


def test_wrong_method_is_405(port: int) -> None:
    assert_error(request(port, "GET", TABULAR), 405, "GET")


def test_malformed_json_is_400(port: int) -> None:
    assert_error(request(port, "POST", TABULAR, b'{"inputs": [ {"name": '), 400, "JSON")
    assert_still_serving(port)


def test_missing_input_is_400(port: int) -> None:
    inputs = multi_io_inputs(1)
    body = {
        "inputs": [
            {"name": "counts", "shape": [1, 4], "datatype": "INT32", "data": inputs["counts"].ravel().tolist()},
        ]
    }
    assert_error(post_json(port, "/v2/models/multi_io/infer", body), 400, "text", "flag", "values")
    assert_still_serving(port)


def test_extra_input_is_400(port: int) -> None:
    body = tabular_json()
    body["inputs"].append({"name": "surprise", "shape": [1, 1], "datatype": "FP32", "data": [1.0]})
    assert_error(post_json(port, TABULAR, body), 400, "surprise")
    assert_still_serving(port)


def test_wrong_datatype_is_400(port: int) -> None:
    body = {"inputs": [{"name": "features", "shape": [1, 8], "datatype": "FP64", "data": [0.5] * 8}]}
    assert_error(post_json(port, TABULAR, body), 400, "features", "FP64", "FP32")
    assert_still_serving(port)


def test_unsupported_datatype_name_is_400(port: int) -> None:
    body = {"inputs": [{"name": "features", "shape": [1, 8], "datatype": "FLOAT", "data": [0.5] * 8}]}
    assert_error(post_json(port, TABULAR, body), 400, "FLOAT")
    assert_still_serving(port)


def test_wrong_rank_is_400(port: int) -> None:
    body = {"inputs": [{"name": "features", "shape": [8], "datatype": "FP32", "data": [0.5] * 8}]}
    assert_error(post_json(port, TABULAR, body), 400, "features", "[8]")
    assert_still_serving(port)


def test_wrong_shape_is_400(port: int) -> None:
    body = {"inputs": [{"name": "features", "shape": [1, 7], "datatype": "FP32", "data": [0.5] * 7}]}
    assert_error(post_json(port, TABULAR, body), 400, "features", "[1, 7]")
    assert_still_serving(port)


def test_wrong_shape_of_a_non_batching_model_is_400(port: int) -> None:
    body = {"inputs": [{"name": "x", "shape": [1, 2, 3], "datatype": "FP32", "data": [0.5] * 6}]}
    assert_error(post_json(port, "/v2/models/fixed_shape/infer", body), 400, "x", "[2, 3]")
    assert_still_serving(port)


def test_data_length_that_does_not_match_the_shape_is_400(port: int) -> None:
    body = {"inputs": [{"name": "features", "shape": [2, 8], "datatype": "FP32", "data": [0.5] * 9}]}
    assert_error(post_json(port, TABULAR, body), 400, "features", "9", "16")
    assert_still_serving(port)


def test_binary_size_beyond_the_body_is_400(port: int) -> None:
    header = {
        "inputs": [{"name": "features", "shape": [1, 8], "datatype": "FP32", "parameters": {"binary_data_size": 64}}]
    }
    assert_error(post_binary(port, TABULAR, header, [b"\0" * 32]), 400, "features", "binary_data_size")
    assert_still_serving(port)


def test_binary_size_that_does_not_match_the_shape_is_400(port: int) -> None:
    header = {
        "inputs": [{"name": "features", "shape": [1, 8], "datatype": "FP32", "parameters": {"binary_data_size": 16}}]
    }
    assert_error(post_binary(port, TABULAR, header, [b"\0" * 16]), 400, "features", "32")
    assert_still_serving(port)


def test_binary_bytes_left_over_after_the_inputs_are_400(port: int) -> None:
    header = {
        "inputs": [{"name": "features", "shape": [1, 8], "datatype": "FP32", "parameters": {"binary_data_size": 32}}]
    }
    assert_error(post_binary(port, TABULAR, header, [b"\0" * 40]), 400, "8 bytes")
    assert_still_serving(port)


@pytest.mark.parametrize("delta", [1, 1000])
def test_header_length_beyond_the_body_is_400(port: int, delta: int) -> None:
    body = json.dumps(tabular_json()).encode()
    headers = {"Inference-Header-Content-Length": str(len(body) + delta)}
    assert_error(request(port, "POST", TABULAR, body, headers), 400, "Inference-Header-Content-Length")
    assert_still_serving(port)


def test_negative_header_length_is_400(port: int) -> None:
    body = json.dumps(tabular_json()).encode()
    headers = {"Inference-Header-Content-Length": "-5"}
    assert_error(request(port, "POST", TABULAR, body, headers), 400, "Inference-Header-Content-Length")
    assert_still_serving(port)


def test_fp16_as_json_is_400(port: int) -> None:
    body = {
        "inputs": [
            {
                "name": f"in_{dt.lower()}",
                "shape": [1, 3],
                "datatype": dt,
                "data": sample(dt, 1).ravel().tolist() if dt != "BYTES" else ["a", "b", "c"],
            }
            for dt in JSON_DATATYPES
        ]
    }
    body["inputs"].append({"name": "in_fp16", "shape": [1, 3], "datatype": "FP16", "data": [1.0, 2.0, 3.0]})
    assert_error(post_json(port, "/v2/models/identity_all/infer", body), 400, "in_fp16", "FP16")
    assert_still_serving(port)


def test_header_length_that_is_not_an_integer_is_400(port: int) -> None:
    body = json.dumps(tabular_json()).encode()
    headers = {"Inference-Header-Content-Length": "twelve"}
    assert_error(request(port, "POST", TABULAR, body, headers), 400, "Inference-Header-Content-Length", "twelve")
    assert_still_serving(port)


def test_empty_batch_is_400(port: int) -> None:
    body = {"inputs": [{"name": "features", "shape": [0, 8], "datatype": "FP32", "data": []}]}
    assert_error(post_json(port, TABULAR, body), 400, "features", "empty")
    assert_still_serving(port)


def test_bytes_that_are_not_utf8_are_400_naming_the_input(port: int) -> None:
    inputs = multi_io_inputs(1)
    inputs["text"][0, 0] = b"\xff\xfe"
    blobs = [serialize_bytes_tensor(a) if n == "text" else a.tobytes() for n, a in inputs.items()]
    header = {
        "inputs": [
            {
                "name": n,
                "shape": list(a.shape),
                "datatype": MULTI_IO_DATATYPES[n],
                "parameters": {"binary_data_size": len(b)},
            }
            for (n, a), b in zip(inputs.items(), blobs, strict=True)
        ]
    }
    assert_error(post_binary(port, "/v2/models/multi_io/infer", header, blobs), 400, "text", "UTF-8")
    assert_still_serving(port)


def test_a_bytes_shape_far_larger_than_its_data_is_400(port: int) -> None:
    header = {
        "inputs": [{"name": "text", "shape": [1, 2**62], "datatype": "BYTES", "parameters": {"binary_data_size": 4}}]
    }
    response = post_binary(port, "/v2/models/multi_io/infer", header, [b"\0\0\0\0"])
    assert_still_serving(port)
    assert_error(response, 400, "text")


def test_unknown_requested_output_is_400(port: int) -> None:
    body = tabular_json(outputs=[{"name": "label"}, {"name": "logits"}])
    assert_error(post_json(port, TABULAR, body), 400, "logits")
    assert_still_serving(port)


def test_more_rows_than_max_batch_size_is_400(port: int) -> None:
    assert_error(post_json(port, TABULAR, tabular_json(65)), 400, "65", "64")
    assert_still_serving(port)


def test_corrupt_gzip_body_is_400(port: int) -> None:
    body = gzip.compress(json.dumps(tabular_json()).encode())[:-12]
    assert_error(request(port, "POST", TABULAR, body, {"Content-Encoding": "gzip"}), 400, "gzip")
    assert_still_serving(port)


def test_deflate_body_is_inflated_from_raw_http(port: int) -> None:
    body = zlib.compress(json.dumps(tabular_json(2)).encode())
    response = request(port, "POST", TABULAR, body, {"Content-Encoding": "deflate"})
    assert response.status == 200, response.body
    assert len(response.json()["outputs"][0]["data"]) == 6


def test_tritonclient_raises_with_the_status_and_message(client: httpclient.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as info:
        client.infer("tabular", [infer_input("features", np.zeros((1, 5), np.float32), "FP32")])
    assert info.value.status() == "400"
    assert "features" in info.value.message()


# ---- request size limit --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def limited_server(tmp_path_factory: pytest.TempPathFactory, demo_repository: Path) -> Iterator[RunningServer]:
    server = start_server(demo_repository, tmp_path_factory.mktemp("limited"), "--max-request-bytes", "4096")
    try:
        yield server
    finally:
        server.stop()


def test_body_over_the_request_limit_is_413(limited_server: RunningServer) -> None:
    port = limited_server.http_port
    assert_error(post_json(port, TABULAR, tabular_json(60)), 413, "4096")
    assert_still_serving(port)


def test_compressed_body_that_inflates_over_the_limit_is_413(limited_server: RunningServer) -> None:
    port = limited_server.http_port
    # Long zeros: about 7 kB of JSON that gzip squeezes far below the limit.
    data = "[" + ",".join(["0.000000000000"] * 480) + "]"
    text = '{"inputs":[{"name":"features","shape":[60,8],"datatype":"FP32","data":' + data + "}]}"
    body = gzip.compress(text.encode())
    assert len(body) < 4096 < len(text)
    assert_error(request(port, "POST", TABULAR, body, {"Content-Encoding": "gzip"}), 413, "4096")
    assert_still_serving(port)


def test_chunked_body_over_the_request_limit_is_413(limited_server: RunningServer) -> None:
    payload = json.dumps(tabular_json(60)).encode()
    chunks = (payload[i : i + 1000] for i in range(0, len(payload), 1000))
    connection = http.client.HTTPConnection("127.0.0.1", limited_server.http_port, timeout=30)
    try:
        connection.request("POST", TABULAR, body=chunks, encode_chunked=True)
        response = connection.getresponse()
        status, body = response.status, response.read()
    finally:
        connection.close()
    assert status == 413, body
    assert "4096" in json.loads(body)["error"]
    assert_still_serving(limited_server.http_port)


def test_body_under_the_request_limit_is_served(limited_server: RunningServer) -> None:
    assert post_json(limited_server.http_port, TABULAR, tabular_json(2)).status == 200
