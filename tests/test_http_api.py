"""Acceptance tests of the HTTP/REST API.

Most run in the test's own loop (tests/fixtures/inprocess.py): httpx over ASGI for the raw bodies,
headers and status codes, and tritonclient.http's own request/response codec for what the client sends
and reads (tests/fixtures/triton_http.py). The rules every inference request must meet are
tests/test_request_rules.py's. The last section drives the unmodified tritonclient (its asyncio client)
over a socket against a real server: its transport (health calls, compression, errors) is tested there.
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import pytest_asyncio
import tritonclient.http as httpclient
import tritonclient.http.aio as aioclient
from tritonclient.utils import InferenceServerException

from serve.demo import IDENTITY_DATATYPES
from tests.fixtures import triton_http
from tests.fixtures.data import (
    MULTI_IO_DATATYPES,
    assert_tabular_answer,
    features,
    fixed_shape_expected,
    multi_io_expected,
    multi_io_inputs,
    sample,
)
from tests.fixtures.inprocess import InProcess, in_process
from tests.fixtures.servers import RunningServer

TABULAR = "/v2/models/tabular/infer"
JSON_DATATYPES = [dt for dt in IDENTITY_DATATYPES if dt != "FP16"]

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def server(demo_repository: Path) -> AsyncIterator[InProcess]:
    async with in_process(demo_repository) as running:
        yield running


def infer_input(name: str, array: np.ndarray, datatype: str, binary: bool = True) -> httpclient.InferInput:
    tensor = httpclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=binary)
    return tensor


def tabular_json(rows: int = 1, **extra: Any) -> dict[str, Any]:
    x = features(rows)
    body = {"inputs": [{"name": "features", "shape": [rows, 8], "datatype": "FP32", "data": x.ravel().tolist()}]}
    body.update(extra)
    return body


async def get(server: InProcess, path: str) -> httpx.Response:
    return await server.http.get(path, headers=triton_http.IDENTITY)


async def post(
    server: InProcess, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> httpx.Response:
    return await server.http.post(path, content=body, headers={**triton_http.IDENTITY, **(headers or {})})


async def post_json(
    server: InProcess, path: str, payload: Any, headers: dict[str, str] | None = None
) -> httpx.Response:
    return await post(server, path, json.dumps(payload).encode(), headers)


async def post_binary(server: InProcess, path: str, header: dict[str, Any], blobs: list[bytes]) -> httpx.Response:
    """A binary-extension request: JSON header, then the blobs, with Inference-Header-Content-Length."""
    head = json.dumps(header).encode()
    headers = {"Inference-Header-Content-Length": str(len(head)), "Content-Type": "application/octet-stream"}
    return await post(server, path, head + b"".join(blobs), headers)


async def stats_of(server: InProcess, model: str) -> dict[str, Any]:
    (entry,) = (await get(server, f"/v2/models/{model}/stats")).json()["model_stats"]
    return entry


async def assert_still_serving(server: InProcess) -> None:
    response = await post_json(server, TABULAR, tabular_json())
    assert response.status_code == 200, response.content
    assert [o["name"] for o in response.json()["outputs"]] == ["probabilities", "label"]


def assert_error(response: httpx.Response, status: int, *fragments: str) -> str:
    assert response.status_code == status, (response.status_code, response.content)
    assert response.headers["content-type"].startswith("application/json")
    message = response.json()["error"]
    assert isinstance(message, str), message
    for fragment in fragments:
        assert fragment in message, message
    return message


# ---- health and metadata -------------------------------------------------------------------------


async def test_health_endpoints_answer_200_with_an_empty_body(server: InProcess) -> None:
    for path in ("/v2/health/live", "/v2/health/ready", "/v2/models/tabular/ready"):
        response = await get(server, path)
        assert (response.status_code, response.content) == (200, b""), path


async def test_server_metadata_lists_the_extensions_clients_look_for(server: InProcess) -> None:
    metadata = (await get(server, "/v2")).json()
    assert metadata["name"] and metadata["version"]
    assert {"statistics", "binary_tensor_data", "model_repository"} <= set(metadata["extensions"])


async def test_model_metadata_puts_the_batch_dimension_first(server: InProcess) -> None:
    metadata = (await get(server, "/v2/models/tabular")).json()
    assert metadata["name"] == "tabular"
    assert metadata["versions"] == ["1"]
    assert metadata["platform"] == "onnxruntime_onnx"
    assert metadata["inputs"] == [{"name": "features", "datatype": "FP32", "shape": [-1, 8]}]
    assert metadata["outputs"] == [
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]},
        {"name": "label", "datatype": "INT64", "shape": [-1, 1]},
    ]


async def test_model_metadata_of_a_non_batching_model_has_no_batch_dimension(server: InProcess) -> None:
    metadata = (await get(server, "/v2/models/fixed_shape")).json()
    assert metadata["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [2, 3]}]
    assert metadata["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [2, 3]}]


async def test_model_metadata_answers_on_the_versioned_path(server: InProcess) -> None:
    assert (await get(server, "/v2/models/multi_io/versions/1")).json()["name"] == "multi_io"


async def test_model_is_ready(server: InProcess) -> None:
    assert (await get(server, "/v2/models/tabular/ready")).status_code == 200
    assert (await get(server, "/v2/models/tabular/versions/1/ready")).status_code == 200


async def test_unknown_model_and_version_are_not_ready(server: InProcess) -> None:
    assert (await get(server, "/v2/models/nope/ready")).status_code == 400
    assert (await get(server, "/v2/models/tabular/versions/9/ready")).status_code == 400


async def test_model_config_is_json_the_way_triton_writes_it(server: InProcess) -> None:
    config = (await get(server, "/v2/models/tabular/config")).json()
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


async def test_model_config_omits_scheduling_keys_that_are_not_used(server: InProcess) -> None:
    # perf_analyzer picks its scheduler from key presence alone.
    config = (await get(server, "/v2/models/tabular/config")).json()
    assert "sequence_batching" not in config
    assert "ensemble_scheduling" not in config


async def test_model_config_of_a_model_without_config_file_comes_from_the_graph(server: InProcess) -> None:
    config = (await get(server, "/v2/models/multi_io/config")).json()
    assert config["max_batch_size"] > 0
    types = {i["name"]: (i["data_type"], i["dims"]) for i in config["input"]}
    assert types == {
        "text": ("TYPE_STRING", [1]),
        "counts": ("TYPE_INT32", [4]),
        "flag": ("TYPE_BOOL", [1]),
        "values": ("TYPE_FP64", [4]),
    }


async def test_model_config_of_a_non_batching_model_has_max_batch_size_zero(server: InProcess) -> None:
    config = (await get(server, "/v2/models/fixed_shape/config")).json()
    assert config["max_batch_size"] == 0
    assert config["input"][0]["dims"] == [2, 3]


# ---- inference -----------------------------------------------------------------------------------


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
async def test_tabular_answers_what_onnxruntime_answers(server: InProcess, demo_repository: Path, binary: bool) -> None:
    x = features(3)
    outputs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in ("probabilities", "label")]
    result = await triton_http.infer(
        server.http, "tabular", [infer_input("features", x, "FP32", binary)], outputs=outputs
    )
    assert_tabular_answer(demo_repository, x, result.as_numpy("probabilities"), result.as_numpy("label"))


async def test_multi_io_answers_every_output_with_binary_tensors(server: InProcess) -> None:
    inputs = multi_io_inputs(3)
    result = await triton_http.infer(
        server.http, "multi_io", [infer_input(n, a, MULTI_IO_DATATYPES[n]) for n, a in inputs.items()]
    )
    for name, expected in multi_io_expected(inputs).items():
        got = result.as_numpy(name)
        assert got.dtype == expected.dtype, name
        np.testing.assert_array_equal(got, expected, err_msg=name)


async def test_multi_io_answers_json_inputs_with_json_outputs_and_binary_fp16(server: InProcess) -> None:
    inputs = multi_io_inputs(2)
    outputs = [
        httpclient.InferRequestedOutput(name, binary_data=name == "values_half")
        for name in ("text_out", "counts_doubled", "flag_not", "values_sum", "values_half")
    ]
    result = await triton_http.infer(
        server.http,
        "multi_io",
        [infer_input(n, a, MULTI_IO_DATATYPES[n], binary=False) for n, a in inputs.items()],
        outputs=outputs,
    )
    expected = multi_io_expected(inputs)
    # JSON strings come back as str.
    assert result.as_numpy("text_out").tolist() == [[b.decode()] for b in expected["text_out"][:, 0]]
    for name in ("counts_doubled", "flag_not", "values_sum", "values_half"):
        np.testing.assert_array_equal(result.as_numpy(name), expected[name], err_msg=name)


async def test_fixed_shape_model_infers_without_a_batch_dimension(server: InProcess) -> None:
    x = np.array([[1, 2, 3], [4, 5, 6]], dtype=np.float32)
    result = await triton_http.infer(server.http, "fixed_shape", [infer_input("x", x, "FP32")])
    np.testing.assert_array_equal(result.as_numpy("y"), fixed_shape_expected(x))


@pytest.mark.parametrize("datatype", IDENTITY_DATATYPES)
async def test_every_datatype_round_trips_exactly_as_binary(server: InProcess, datatype: str) -> None:
    name = datatype.lower()
    sent = sample(datatype)
    others = [dt for dt in IDENTITY_DATATYPES if dt != datatype]
    inputs = [infer_input(f"in_{name}", sent, datatype)] + [
        infer_input(f"in_{dt.lower()}", sample(dt), dt) for dt in others
    ]
    result = await triton_http.infer(
        server.http,
        "identity_all",
        inputs,
        outputs=[httpclient.InferRequestedOutput(f"out_{name}", binary_data=True)],
    )
    got = result.as_numpy(f"out_{name}")
    assert got.dtype == sent.dtype and got.shape == sent.shape
    np.testing.assert_array_equal(got, sent)
    if datatype in ("FP16", "FP32", "FP64"):
        assert got.tobytes() == sent.tobytes()  # bit-exact, -0.0 included


@pytest.mark.parametrize("datatype", JSON_DATATYPES)
async def test_every_json_datatype_round_trips_exactly_as_json(server: InProcess, datatype: str) -> None:
    name = datatype.lower()
    sent = sample(datatype)
    inputs = [infer_input(f"in_{dt.lower()}", sample(dt), dt, binary=dt != datatype) for dt in IDENTITY_DATATYPES]
    result = await triton_http.infer(
        server.http,
        "identity_all",
        inputs,
        outputs=[httpclient.InferRequestedOutput(f"out_{name}", binary_data=False)],
    )
    got = result.as_numpy(f"out_{name}")
    if datatype == "BYTES":
        assert got.tolist() == [[v.decode() for v in row] for row in sent]
    else:
        assert got.dtype == sent.dtype
        np.testing.assert_array_equal(got, sent)


async def test_bytes_with_non_ascii_and_empty_elements_round_trip(server: InProcess) -> None:
    text = np.array([["naïve café"], [""], ["ß∂ƒ©"]], dtype=object)
    text = np.vectorize(lambda s: s.encode(), otypes=[object])(text)
    inputs = multi_io_inputs(3)
    inputs["text"] = text
    result = await triton_http.infer(
        server.http,
        "multi_io",
        [infer_input(n, a, MULTI_IO_DATATYPES[n]) for n, a in inputs.items()],
        outputs=[httpclient.InferRequestedOutput("text_out")],
    )
    assert result.as_numpy("text_out").tolist() == text.tolist()


async def test_a_multi_row_request_answers_each_row_as_if_sent_alone(server: InProcess) -> None:
    x = features(5, seed=3)
    together = await triton_http.infer(server.http, "tabular", [infer_input("features", x, "FP32")])
    assert together.as_numpy("probabilities").shape == (5, 3)
    for row in range(5):
        alone = await triton_http.infer(server.http, "tabular", [infer_input("features", x[row : row + 1], "FP32")])
        np.testing.assert_allclose(
            together.as_numpy("probabilities")[row : row + 1], alone.as_numpy("probabilities"), rtol=1e-6
        )


async def test_requested_outputs_are_the_only_outputs_returned(server: InProcess) -> None:
    result = await triton_http.infer(
        server.http,
        "tabular",
        [infer_input("features", features(2), "FP32")],
        outputs=[httpclient.InferRequestedOutput("label")],
    )
    assert [o["name"] for o in result.get_response()["outputs"]] == ["label"]
    assert result.as_numpy("probabilities") is None


async def test_per_output_binary_data_mixes_json_and_binary_outputs(server: InProcess) -> None:
    x = features(2)
    response = await post_binary(
        server,
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
    assert response.status_code == 200, response.content
    assert response.headers["content-type"] == "application/octet-stream"
    header_length = int(response.headers["inference-header-content-length"])
    header = json.loads(response.content[:header_length])
    probabilities, label = header["outputs"]
    assert probabilities["parameters"] == {"binary_data_size": 2 * 3 * 4}
    assert "data" not in probabilities
    assert "parameters" not in label and len(label["data"]) == 2
    blob = np.frombuffer(response.content[header_length:], dtype="<f4").reshape(2, 3)
    np.testing.assert_array_equal(np.asarray(label["data"]).reshape(2), blob.argmax(axis=1))


async def test_binary_data_output_parameter_makes_every_output_binary(server: InProcess) -> None:
    response = await post_json(server, TABULAR, tabular_json(2, parameters={"binary_data_output": True}))
    assert response.status_code == 200
    header_length = int(response.headers["inference-header-content-length"])
    outputs = json.loads(response.content[:header_length])["outputs"]
    assert [o["parameters"]["binary_data_size"] for o in outputs] == [2 * 3 * 4, 2 * 8]
    assert len(response.content) == header_length + 24 + 16


async def test_an_all_json_response_is_application_json_without_a_header_length(server: InProcess) -> None:
    response = await post_json(server, TABULAR, tabular_json())
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert "inference-header-content-length" not in response.headers
    assert {o["name"] for o in response.json()["outputs"]} == {"probabilities", "label"}


async def test_nested_json_data_is_accepted(server: InProcess) -> None:
    x = features(2)
    body = {"inputs": [{"name": "features", "shape": [2, 8], "datatype": "FP32", "data": x.tolist()}]}
    flat = (await post_json(server, TABULAR, tabular_json(2))).json()["outputs"]
    nested = (await post_json(server, TABULAR, body)).json()["outputs"]
    assert nested == flat


async def test_raw_binary_body_with_zero_header_length_is_one_row(server: InProcess, demo_repository: Path) -> None:
    x = features(1)
    response = await post(server, TABULAR, x.tobytes(), {"Inference-Header-Content-Length": "0"})
    assert response.status_code == 200, response.content
    header_length = int(response.headers["inference-header-content-length"])
    probabilities = np.frombuffer(response.content[header_length : header_length + 12], dtype="<f4").reshape(1, 3)
    label = np.frombuffer(response.content[header_length + 12 :], dtype="<i8").reshape(1, 1)
    assert_tabular_answer(demo_repository, x, probabilities, label)


async def test_request_id_is_echoed(server: InProcess) -> None:
    result = await triton_http.infer(
        server.http, "tabular", [infer_input("features", features(1), "FP32")], request_id="req-42"
    )
    assert result.get_response()["id"] == "req-42"


async def test_request_id_is_echoed_on_a_json_request(server: InProcess) -> None:
    assert (await post_json(server, TABULAR, tabular_json(id="json-7"))).json()["id"] == "json-7"


async def test_accept_encoding_gzip_compresses_the_response(server: InProcess) -> None:
    plain = await post_json(server, TABULAR, tabular_json(3, id="gz"))  # the same id: a minted one would differ
    body = json.dumps(tabular_json(3, id="gz")).encode()
    request = server.http.build_request("POST", TABULAR, content=body, headers={"Accept-Encoding": "gzip"})
    compressed = await server.http.send(request, stream=True)
    raw = b"".join([chunk async for chunk in compressed.aiter_raw()])  # as sent, before httpx inflates it
    await compressed.aclose()
    assert compressed.status_code == 200
    assert compressed.headers["content-encoding"] == "gzip"
    assert json.loads(gzip.decompress(raw)) == plain.json()


async def test_deflate_body_is_inflated(server: InProcess) -> None:
    body = zlib.compress(json.dumps(tabular_json(2)).encode())
    response = await post(server, TABULAR, body, {"Content-Encoding": "deflate"})
    assert response.status_code == 200, response.content
    assert len(response.json()["outputs"][0]["data"]) == 6


# ---- statistics ----------------------------------------------------------------------------------


async def test_statistics_count_each_request_and_its_rows(server: InProcess) -> None:
    before = await stats_of(server, "tabular")
    await triton_http.infer(server.http, "tabular", [infer_input("features", features(3), "FP32")])
    after = await stats_of(server, "tabular")
    assert after["version"] == "1"
    assert after["inference_count"] - before["inference_count"] == 3
    assert after["execution_count"] - before["execution_count"] == 1
    for key in ("success", "queue", "compute_input", "compute_infer", "compute_output"):
        assert after["inference_stats"][key]["count"] - before["inference_stats"][key]["count"] == 1, key
    assert after["inference_stats"]["success"]["ns"] > before["inference_stats"]["success"]["ns"]
    assert after["last_inference"] > 0


async def test_statistics_carry_every_field_perf_analyzer_reads(server: InProcess) -> None:
    entry = await stats_of(server, "tabular")
    assert entry["name"] == "tabular" and entry["version"].isdigit()
    assert isinstance(entry["inference_count"], int) and isinstance(entry["execution_count"], int)
    for key in ("success", "queue", "compute_input", "compute_infer", "compute_output", "cache_hit", "cache_miss"):
        assert isinstance(entry["inference_stats"][key]["count"], int), key
        assert isinstance(entry["inference_stats"][key]["ns"], int), key


async def test_a_rejected_request_counts_as_a_failure(server: InProcess) -> None:
    before = (await stats_of(server, "tabular"))["inference_stats"]["fail"]["count"]
    body = {"inputs": [{"name": "features", "shape": [1, 7], "datatype": "FP32", "data": [0.0] * 7}]}
    await post_json(server, TABULAR, body)
    assert (await stats_of(server, "tabular"))["inference_stats"]["fail"]["count"] == before + 1


async def test_statistics_of_all_models_list_every_model(server: InProcess) -> None:
    stats = (await get(server, "/v2/models/stats")).json()["model_stats"]
    assert {s["name"] for s in stats} == {"tabular", "multi_io", "identity_all", "fixed_shape"}
    assert all(s["version"] == "1" for s in stats)


# ---- bad input (the rules every request must meet: tests/test_request_rules.py) ------------------


async def test_an_unknown_model_has_no_metadata(server: InProcess) -> None:
    assert_error(await get(server, "/v2/models/nope"), 404, "nope")
    await assert_still_serving(server)


async def test_an_unknown_version_has_no_config(server: InProcess) -> None:
    assert_error(await get(server, "/v2/models/tabular/versions/7/config"), 404, "7")
    await assert_still_serving(server)


async def test_unknown_route_is_404_with_a_json_error(server: InProcess) -> None:
    assert_error(await get(server, "/v2/nothing/here"), 404, "/v2/nothing/here")


async def test_wrong_method_is_405(server: InProcess) -> None:
    assert_error(await get(server, TABULAR), 405, "GET")


async def test_binary_size_beyond_the_body_is_400(server: InProcess) -> None:
    header = {
        "inputs": [{"name": "features", "shape": [1, 8], "datatype": "FP32", "parameters": {"binary_data_size": 64}}]
    }
    assert_error(await post_binary(server, TABULAR, header, [b"\0" * 32]), 400, "features", "binary_data_size")
    await assert_still_serving(server)


async def test_binary_size_that_does_not_match_the_shape_is_400(server: InProcess) -> None:
    header = {
        "inputs": [{"name": "features", "shape": [1, 8], "datatype": "FP32", "parameters": {"binary_data_size": 16}}]
    }
    assert_error(await post_binary(server, TABULAR, header, [b"\0" * 16]), 400, "features", "32")
    await assert_still_serving(server)


async def test_binary_bytes_left_over_after_the_inputs_are_400(server: InProcess) -> None:
    header = {
        "inputs": [{"name": "features", "shape": [1, 8], "datatype": "FP32", "parameters": {"binary_data_size": 32}}]
    }
    assert_error(await post_binary(server, TABULAR, header, [b"\0" * 40]), 400, "8 bytes")
    await assert_still_serving(server)


@pytest.mark.parametrize("delta", [1, 1000])
async def test_header_length_beyond_the_body_is_400(server: InProcess, delta: int) -> None:
    body = json.dumps(tabular_json()).encode()
    headers = {"Inference-Header-Content-Length": str(len(body) + delta)}
    assert_error(await post(server, TABULAR, body, headers), 400, "Inference-Header-Content-Length")
    await assert_still_serving(server)


async def test_negative_header_length_is_400(server: InProcess) -> None:
    body = json.dumps(tabular_json()).encode()
    headers = {"Inference-Header-Content-Length": "-5"}
    assert_error(await post(server, TABULAR, body, headers), 400, "Inference-Header-Content-Length")
    await assert_still_serving(server)


async def test_fp16_as_json_is_400(server: InProcess) -> None:
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
    assert_error(await post_json(server, "/v2/models/identity_all/infer", body), 400, "in_fp16", "FP16")
    await assert_still_serving(server)


async def test_a_bytes_shape_far_larger_than_its_data_is_400(server: InProcess) -> None:
    header = {
        "inputs": [{"name": "text", "shape": [1, 2**62], "datatype": "BYTES", "parameters": {"binary_data_size": 4}}]
    }
    response = await post_binary(server, "/v2/models/multi_io/infer", header, [b"\0\0\0\0"])
    await assert_still_serving(server)
    assert_error(response, 400, "text")


# ---- request size limit --------------------------------------------------------------------------


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def limited(demo_repository: Path) -> AsyncIterator[InProcess]:
    async with in_process(demo_repository, max_request_bytes=4096) as running:
        yield running


async def test_body_over_the_request_limit_is_413(limited: InProcess) -> None:
    assert_error(await post_json(limited, TABULAR, tabular_json(60)), 413, "4096")
    await assert_still_serving(limited)


async def test_compressed_body_that_inflates_over_the_limit_is_413(limited: InProcess) -> None:
    # Long zeros: about 7 kB of JSON that gzip squeezes far below the limit.
    data = "[" + ",".join(["0.000000000000"] * 480) + "]"
    text = '{"inputs":[{"name":"features","shape":[60,8],"datatype":"FP32","data":' + data + "}]}"
    body = gzip.compress(text.encode())
    assert len(body) < 4096 < len(text)
    assert_error(await post(limited, TABULAR, body, {"Content-Encoding": "gzip"}), 413, "4096")
    await assert_still_serving(limited)


async def test_a_body_without_a_length_over_the_request_limit_is_413(limited: InProcess) -> None:
    # A body that arrives in pieces with no Content-Length (what a chunked upload is to the app) is
    # measured as it arrives.
    payload = json.dumps(tabular_json(60)).encode()

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(payload), 1000):
            yield payload[i : i + 1000]

    response = await limited.http.post(TABULAR, content=chunks())
    assert "content-length" not in response.request.headers
    assert_error(response, 413, "4096")
    await assert_still_serving(limited)


async def test_body_under_the_request_limit_is_served(limited: InProcess) -> None:
    assert (await post_json(limited, TABULAR, tabular_json(2))).status_code == 200


# ---- the unmodified tritonclient over a socket, against a real server ----------------------------


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def client(demo_server: RunningServer) -> AsyncIterator[aioclient.InferenceServerClient]:
    c = aioclient.InferenceServerClient(demo_server.http_url)
    try:
        yield c
    finally:
        await c.close()


async def test_tritonclient_sees_the_server_and_the_model_ready(client: aioclient.InferenceServerClient) -> None:
    assert await client.is_server_live()
    assert await client.is_server_ready()
    assert await client.is_model_ready("tabular")
    assert await client.is_model_ready("tabular", model_version="1")


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
async def test_tritonclient_infers_over_a_socket(
    client: aioclient.InferenceServerClient, demo_repository: Path, binary: bool
) -> None:
    x = features(3)
    outputs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in ("probabilities", "label")]
    result = await client.infer("tabular", [infer_input("features", x, "FP32", binary)], outputs=outputs)
    assert_tabular_answer(demo_repository, x, result.as_numpy("probabilities"), result.as_numpy("label"))


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
async def test_compressed_request_bodies_are_inflated(
    client: aioclient.InferenceServerClient, demo_repository: Path, algorithm: str
) -> None:
    x = features(4)
    result = await client.infer(
        "tabular", [infer_input("features", x, "FP32")], request_compression_algorithm=algorithm
    )
    assert_tabular_answer(demo_repository, x, result.as_numpy("probabilities"), result.as_numpy("label"))


async def test_tritonclient_reads_a_gzip_compressed_response(
    client: aioclient.InferenceServerClient, demo_repository: Path
) -> None:
    x = features(2)
    result = await client.infer("tabular", [infer_input("features", x, "FP32")], response_compression_algorithm="gzip")
    assert_tabular_answer(demo_repository, x, result.as_numpy("probabilities"), result.as_numpy("label"))


async def test_tritonclient_raises_with_the_status_and_message(client: aioclient.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as info:
        await client.infer("tabular", [infer_input("features", np.zeros((1, 5), np.float32), "FP32")])
    assert info.value.status() == "400"
    assert "features" in info.value.message()
