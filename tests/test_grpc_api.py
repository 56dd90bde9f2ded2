"""Acceptance tests of the gRPC API against a real server.

Clients: the unmodified tritonclient.grpc, and a grpcio stub built from serve.protocol for
what tritonclient hides (typed ``contents``, malformed requests, the exact response message).
"""

from __future__ import annotations

import queue
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from tritonclient.utils import InferenceServerException

from serve.codecs.bytes_tensor import deserialize_bytes_tensor, serialize_bytes_tensor
from serve.datatypes import OIP_TO_WIRE_DTYPE
from serve.demo import IDENTITY_DATATYPES
from serve.protocol import grpc_service_pb2 as pb
from serve.protocol import grpc_service_pb2_grpc as pb_grpc
from tests.fixtures.data import (
    BYTES_VALUES,
    MULTI_IO_DATATYPES,
    assert_tabular_answer,
    features,
    fixed_shape_expected,
    multi_io_expected,
    multi_io_inputs,
    sample,
)
from tests.fixtures.servers import RunningServer, serving, start_server

Stub = pb_grpc.GRPCInferenceServiceStub
SERVICE = "inference.GRPCInferenceService"


@pytest.fixture(scope="module", params=["aio", "native"])
def grpc_frontend(request: pytest.FixtureRequest) -> str:
    """Every test here runs against both gRPC front ends (serve/grpc/frontends.py)."""
    return str(request.param)


@pytest.fixture(scope="module")
def demo_server(
    demo_repository: Path, tmp_path_factory: pytest.TempPathFactory, grpc_frontend: str
) -> Iterator[RunningServer]:
    with serving(demo_repository, tmp_path_factory.mktemp("demo-server"), "--grpc-frontend", grpc_frontend) as server:
        yield server


@pytest.fixture(scope="module")
def client(demo_server: RunningServer) -> Iterator[grpcclient.InferenceServerClient]:
    c = grpcclient.InferenceServerClient(demo_server.grpc_url)
    try:
        yield c
    finally:
        c.close()


@pytest.fixture(scope="module")
def channel(demo_server: RunningServer) -> Iterator[grpc.Channel]:
    options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
    with grpc.insecure_channel(demo_server.grpc_url, options=options) as ch:
        yield ch


@pytest.fixture(scope="module")
def stub(channel: grpc.Channel) -> Stub:
    return Stub(channel)


def infer_input(name: str, array: np.ndarray, datatype: str) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def raw_bytes(array: np.ndarray, datatype: str) -> bytes:
    if datatype == "BYTES":
        return serialize_bytes_tensor(array)
    return np.ascontiguousarray(array, dtype=OIP_TO_WIRE_DTYPE[datatype]).tobytes()


def raw_request(
    model: str,
    tensors: list[tuple[str, str, np.ndarray]],
    *,
    outputs: list[str] | None = None,
    version: str = "",
    request_id: str = "",
    shapes: dict[str, list[int]] | None = None,
) -> pb.ModelInferRequest:
    """A ModelInferRequest with raw_input_contents; ``shapes`` overrides a tensor's declared shape."""
    shapes = shapes or {}
    message = pb.ModelInferRequest(model_name=model, model_version=version, id=request_id)
    for name, datatype, array in tensors:
        message.inputs.add(name=name, datatype=datatype, shape=shapes.get(name, list(array.shape)))
        message.raw_input_contents.append(raw_bytes(array, datatype))
    for name in outputs or []:
        message.outputs.add(name=name)
    return message


def tabular_request(rows: int = 1, **kwargs: Any) -> pb.ModelInferRequest:
    return raw_request("tabular", [("features", "FP32", features(rows))], **kwargs)


def decode_output(response: pb.ModelInferResponse, name: str) -> np.ndarray:
    index = [o.name for o in response.outputs].index(name)
    tensor = response.outputs[index]
    shape = tuple(tensor.shape)
    raw = response.raw_output_contents[index]
    if tensor.datatype == "BYTES":
        return deserialize_bytes_tensor(raw, int(np.prod(shape)), name).reshape(shape)
    return np.frombuffer(raw, dtype=OIP_TO_WIRE_DTYPE[tensor.datatype]).reshape(shape)


def stats_of(stub: Stub, model: str) -> pb.ModelStatistics:
    (entry,) = stub.ModelStatistics(pb.ModelStatisticsRequest(name=model)).model_stats
    return entry


def assert_still_serving(stub: Stub) -> None:
    response = stub.ModelInfer(tabular_request())
    assert [o.name for o in response.outputs] == ["probabilities", "label"]


def assert_rpc_error(call: Any, code: grpc.StatusCode, *fragments: str) -> str:
    with pytest.raises(grpc.RpcError) as info:
        call()
    error = info.value
    assert error.code() == code, (error.code(), error.details())
    for fragment in fragments:
        assert fragment in error.details(), error.details()
    return error.details()


# ---- health and metadata -------------------------------------------------------------------------


def test_server_is_live(client: grpcclient.InferenceServerClient) -> None:
    assert client.is_server_live()


def test_server_is_ready(client: grpcclient.InferenceServerClient) -> None:
    assert client.is_server_ready()


def test_standard_health_service_reports_serving(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", SERVICE):
        status = health.Check(health_pb2.HealthCheckRequest(service=service)).status
        assert status == health_pb2.HealthCheckResponse.SERVING, service


def test_reflection_lists_the_inference_service(channel: grpc.Channel) -> None:
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    (answer,) = reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = {s.name for s in answer.list_services_response.service}
    assert {SERVICE, "grpc.health.v1.Health"} <= names


def test_server_metadata_lists_the_extensions_clients_look_for(client: grpcclient.InferenceServerClient) -> None:
    metadata = client.get_server_metadata()
    assert metadata.name and metadata.version
    assert {"statistics", "binary_tensor_data", "model_repository"} <= set(metadata.extensions)


def test_model_metadata_puts_the_batch_dimension_first(client: grpcclient.InferenceServerClient) -> None:
    metadata = client.get_model_metadata("tabular")
    assert (metadata.name, list(metadata.versions), metadata.platform) == ("tabular", ["1"], "onnxruntime_onnx")
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == [("features", "FP32", [-1, 8])]
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.outputs] == [
        ("probabilities", "FP32", [-1, 3]),
        ("label", "INT64", [-1, 1]),
    ]


def test_model_metadata_of_a_non_batching_model_has_no_batch_dimension(
    client: grpcclient.InferenceServerClient,
) -> None:
    metadata = client.get_model_metadata("fixed_shape", model_version="1")
    assert [list(t.shape) for t in metadata.inputs] == [[2, 3]]
    assert [list(t.shape) for t in metadata.outputs] == [[2, 3]]


def test_model_is_ready(client: grpcclient.InferenceServerClient) -> None:
    assert client.is_model_ready("tabular")
    assert client.is_model_ready("tabular", model_version="1")


def test_unknown_model_and_version_are_not_ready(client: grpcclient.InferenceServerClient) -> None:
    assert not client.is_model_ready("nope")
    assert not client.is_model_ready("tabular", model_version="9")


def test_model_config_is_the_model_config_message(client: grpcclient.InferenceServerClient) -> None:
    config = client.get_model_config("tabular").config
    assert (config.name, config.platform, config.backend) == ("tabular", "onnxruntime_onnx", "onnxruntime")
    assert config.max_batch_size == 64
    assert [(i.name, list(i.dims)) for i in config.input] == [("features", [8])]
    assert [o.name for o in config.output] == ["probabilities", "label"]
    assert config.WhichOneof("scheduling_choice") == "dynamic_batching"


def test_model_config_json_has_what_perf_analyzer_reads(client: grpcclient.InferenceServerClient) -> None:
    # perf_analyzer converts the gRPC answer with preserved field names and reads ["config"].
    response = client.get_model_config("multi_io")
    config = json_format.MessageToDict(response, preserving_proto_field_name=True)["config"]
    assert config["max_batch_size"] == 64
    assert [i["name"] for i in config["input"]] == ["text", "counts", "flag", "values"]
    assert [o["name"] for o in config["output"]] == [
        "text_out",
        "counts_doubled",
        "flag_not",
        "values_sum",
        "values_half",
    ]
    assert "sequence_batching" not in config


def test_model_config_of_a_non_batching_model_has_max_batch_size_zero(
    client: grpcclient.InferenceServerClient,
) -> None:
    config = client.get_model_config("fixed_shape").config
    assert config.max_batch_size == 0
    assert [list(i.dims) for i in config.input] == [[2, 3]]


# ---- inference -----------------------------------------------------------------------------------


def test_tabular_answers_what_onnxruntime_answers(
    client: grpcclient.InferenceServerClient, demo_repository: Path
) -> None:
    x = features(3)
    result = client.infer("tabular", [infer_input("features", x, "FP32")])
    assert_tabular_answer(demo_repository, x, result.as_numpy("probabilities"), result.as_numpy("label"))


def test_multi_io_answers_every_output(client: grpcclient.InferenceServerClient) -> None:
    inputs = multi_io_inputs(3)
    result = client.infer("multi_io", [infer_input(n, a, MULTI_IO_DATATYPES[n]) for n, a in inputs.items()])
    for name, expected in multi_io_expected(inputs).items():
        got = result.as_numpy(name)
        assert got.dtype == expected.dtype, name
        np.testing.assert_array_equal(got, expected, err_msg=name)


def test_fixed_shape_model_infers_without_a_batch_dimension(client: grpcclient.InferenceServerClient) -> None:
    x = np.array([[1, 2, 3], [4, 5, 6]], dtype=np.float32)
    result = client.infer("fixed_shape", [infer_input("x", x, "FP32")])
    np.testing.assert_array_equal(result.as_numpy("y"), fixed_shape_expected(x))


@pytest.mark.parametrize("datatype", IDENTITY_DATATYPES)
def test_every_datatype_round_trips_exactly(client: grpcclient.InferenceServerClient, datatype: str) -> None:
    name = datatype.lower()
    sent = sample(datatype)
    inputs = [infer_input(f"in_{dt.lower()}", sample(dt), dt) for dt in IDENTITY_DATATYPES]
    result = client.infer("identity_all", inputs, outputs=[grpcclient.InferRequestedOutput(f"out_{name}")])
    got = result.as_numpy(f"out_{name}")
    assert got.dtype == sent.dtype and got.shape == sent.shape
    np.testing.assert_array_equal(got, sent)
    if datatype in ("FP16", "FP32", "FP64"):
        assert got.tobytes() == sent.tobytes()  # bit-exact, -0.0 included


def test_bytes_with_non_ascii_and_empty_elements_round_trip(client: grpcclient.InferenceServerClient) -> None:
    inputs = multi_io_inputs(len(BYTES_VALUES))
    result = client.infer(
        "multi_io",
        [infer_input(n, a, MULTI_IO_DATATYPES[n]) for n, a in inputs.items()],
        outputs=[grpcclient.InferRequestedOutput("text_out")],
    )
    assert result.as_numpy("text_out")[:, 0].tolist() == BYTES_VALUES


def test_a_multi_row_request_answers_each_row_as_if_sent_alone(client: grpcclient.InferenceServerClient) -> None:
    x = features(4, seed=5)
    together = client.infer("tabular", [infer_input("features", x, "FP32")]).as_numpy("probabilities")
    assert together.shape == (4, 3)
    for row in range(4):
        alone = client.infer("tabular", [infer_input("features", x[row : row + 1], "FP32")])
        np.testing.assert_allclose(together[row : row + 1], alone.as_numpy("probabilities"), rtol=1e-6)


def test_requested_outputs_are_the_only_outputs_returned(stub: Stub) -> None:
    response = stub.ModelInfer(tabular_request(2, outputs=["label"]))
    assert [o.name for o in response.outputs] == ["label"]
    assert len(response.raw_output_contents) == 1


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_messages_are_accepted(
    client: grpcclient.InferenceServerClient, demo_repository: Path, algorithm: str, grpc_frontend: str
) -> None:
    x = features(4)
    if algorithm == "deflate" and grpc_frontend == "native":
        # documented (README, frontends.py): the native front end takes gzip, not deflate
        with pytest.raises(InferenceServerException, match="deflate") as refused:
            client.infer("tabular", [infer_input("features", x, "FP32")], compression_algorithm=algorithm)
        assert refused.value.status() == "StatusCode.UNIMPLEMENTED"
        return
    result = client.infer("tabular", [infer_input("features", x, "FP32")], compression_algorithm=algorithm)
    assert_tabular_answer(demo_repository, x, result.as_numpy("probabilities"), result.as_numpy("label"))


def test_request_id_is_echoed(client: grpcclient.InferenceServerClient) -> None:
    result = client.infer("tabular", [infer_input("features", features(1), "FP32")], request_id="grpc-42")
    assert result.get_response().id == "grpc-42"


def test_responses_carry_every_output_in_raw_output_contents(stub: Stub) -> None:
    inputs = multi_io_inputs(2)
    response = stub.ModelInfer(raw_request("multi_io", [(n, MULTI_IO_DATATYPES[n], a) for n, a in inputs.items()]))
    assert (response.model_name, response.model_version) == ("multi_io", "1")
    assert len(response.raw_output_contents) == len(response.outputs) == 5
    assert not any(o.HasField("contents") for o in response.outputs)
    for name, expected in multi_io_expected(inputs).items():
        np.testing.assert_array_equal(decode_output(response, name), expected, err_msg=name)


def test_typed_contents_inputs_are_accepted(stub: Stub) -> None:
    inputs = multi_io_inputs(2)
    message = pb.ModelInferRequest(model_name="multi_io", id="typed")
    text = message.inputs.add(name="text", datatype="BYTES", shape=[2, 1])
    text.contents.bytes_contents.extend(inputs["text"].ravel().tolist())
    counts = message.inputs.add(name="counts", datatype="INT32", shape=[2, 4])
    counts.contents.int_contents.extend(inputs["counts"].ravel().tolist())
    flag = message.inputs.add(name="flag", datatype="BOOL", shape=[2, 1])
    flag.contents.bool_contents.extend(inputs["flag"].ravel().tolist())
    values = message.inputs.add(name="values", datatype="FP64", shape=[2, 4])
    values.contents.fp64_contents.extend(inputs["values"].ravel().tolist())
    response = stub.ModelInfer(message)
    assert response.id == "typed"
    assert len(response.raw_output_contents) == 5
    for name, expected in multi_io_expected(inputs).items():
        np.testing.assert_array_equal(decode_output(response, name), expected, err_msg=name)


def test_typed_fp32_contents_give_the_same_answer_as_raw(stub: Stub) -> None:
    x = features(2)
    message = pb.ModelInferRequest(model_name="tabular")
    tensor = message.inputs.add(name="features", datatype="FP32", shape=[2, 8])
    tensor.contents.fp32_contents.extend(x.ravel().tolist())
    typed = stub.ModelInfer(message)
    raw = stub.ModelInfer(raw_request("tabular", [("features", "FP32", x)]))
    assert typed.raw_output_contents == raw.raw_output_contents


def test_a_message_over_grpcs_default_4_mib_is_accepted(stub: Stub) -> None:
    inputs = multi_io_inputs(1)
    inputs["text"][0, 0] = b"x" * (5 * 1024 * 1024)
    response = stub.ModelInfer(
        raw_request("multi_io", [(n, MULTI_IO_DATATYPES[n], a) for n, a in inputs.items()], outputs=["text_out"])
    )
    assert decode_output(response, "text_out")[0, 0] == inputs["text"][0, 0]


# ---- streaming -----------------------------------------------------------------------------------


@pytest.fixture()
def stream(demo_server: RunningServer) -> Iterator[tuple[grpcclient.InferenceServerClient, queue.Queue[Any]]]:
    answers: queue.Queue[Any] = queue.Queue()
    streaming = grpcclient.InferenceServerClient(demo_server.grpc_url)
    streaming.start_stream(lambda result, error: answers.put((result, error)))
    try:
        yield streaming, answers
    finally:
        streaming.stop_stream()
        streaming.close()


def test_stream_answers_each_request(stream: tuple[grpcclient.InferenceServerClient, queue.Queue[Any]]) -> None:
    streaming, answers = stream
    inputs = {f"s{i}": features(i + 1, seed=i) for i in range(3)}
    for request_id, x in inputs.items():
        streaming.async_stream_infer("tabular", [infer_input("features", x, "FP32")], request_id=request_id)
    received = {}
    for _ in inputs:
        result, error = answers.get(timeout=30)
        assert error is None
        received[result.get_response().id] = result.as_numpy("probabilities")
    assert {k: v.shape[0] for k, v in received.items()} == {"s0": 1, "s1": 2, "s2": 3}


def test_stream_answers_an_error_in_stream_and_goes_on(
    stream: tuple[grpcclient.InferenceServerClient, queue.Queue[Any]],
) -> None:
    streaming, answers = stream
    streaming.async_stream_infer("tabular", [infer_input("features", np.zeros((1, 5), np.float32), "FP32")])
    result, error = answers.get(timeout=30)
    assert result is None and "features" in error.message()
    streaming.async_stream_infer("tabular", [infer_input("features", features(1), "FP32")], request_id="after")
    result, error = answers.get(timeout=30)
    assert error is None and result.get_response().id == "after"


def test_stream_error_answer_echoes_the_request_id(stub: Stub) -> None:
    bad = raw_request("tabular", [("features", "FP32", np.zeros((1, 5), np.float32))], request_id="bad-1")
    (answer,) = stub.ModelStreamInfer(iter([bad]))
    assert "features" in answer.error_message
    assert answer.infer_response.id == "bad-1"


# ---- statistics ----------------------------------------------------------------------------------


def test_statistics_count_each_request_and_its_rows(client: grpcclient.InferenceServerClient, stub: Stub) -> None:
    before = stats_of(stub, "tabular")
    client.infer("tabular", [infer_input("features", features(3), "FP32")])
    after = stats_of(stub, "tabular")
    assert after.version == "1"
    assert after.inference_count - before.inference_count == 3
    assert after.execution_count - before.execution_count == 1
    for key in ("success", "queue", "compute_input", "compute_infer", "compute_output"):
        delta = getattr(after.inference_stats, key).count - getattr(before.inference_stats, key).count
        assert delta == 1, key
    assert after.last_inference > 0


def test_statistics_of_all_models_list_every_model(client: grpcclient.InferenceServerClient) -> None:
    stats = client.get_inference_statistics().model_stats
    assert {s.name for s in stats} == {"tabular", "multi_io", "identity_all", "fixed_shape"}
    assert all(s.version == "1" for s in stats)


def test_statistics_of_an_unknown_model_are_not_found(stub: Stub) -> None:
    assert_rpc_error(
        lambda: stub.ModelStatistics(pb.ModelStatisticsRequest(name="nope")), grpc.StatusCode.NOT_FOUND, "nope"
    )


# ---- bad input -----------------------------------------------------------------------------------


def test_unknown_model_is_not_found(stub: Stub) -> None:
    request = raw_request("nope", [("features", "FP32", features(1))])
    assert_rpc_error(lambda: stub.ModelInfer(request), grpc.StatusCode.NOT_FOUND, "nope")
    assert_rpc_error(
        lambda: stub.ModelMetadata(pb.ModelMetadataRequest(name="nope")), grpc.StatusCode.NOT_FOUND, "nope"
    )
    assert_rpc_error(lambda: stub.ModelConfig(pb.ModelConfigRequest(name="nope")), grpc.StatusCode.NOT_FOUND)
    assert_still_serving(stub)


def test_unknown_version_is_not_found(stub: Stub) -> None:
    assert_rpc_error(lambda: stub.ModelInfer(tabular_request(version="7")), grpc.StatusCode.NOT_FOUND, "7")
    assert_still_serving(stub)


def test_a_version_that_is_not_a_number_is_invalid_argument(stub: Stub) -> None:
    assert_rpc_error(lambda: stub.ModelInfer(tabular_request(version="one")), grpc.StatusCode.INVALID_ARGUMENT, "one")
    assert_still_serving(stub)


def test_tritonclient_raises_with_the_status_and_message(client: grpcclient.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as info:
        client.infer("tabular", [infer_input("features", np.zeros((1, 5), np.float32), "FP32")])
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "features" in info.value.message()


def test_missing_input_is_invalid_argument(stub: Stub) -> None:
    inputs = multi_io_inputs(1)
    request = raw_request("multi_io", [("counts", "INT32", inputs["counts"])])
    assert_rpc_error(lambda: stub.ModelInfer(request), grpc.StatusCode.INVALID_ARGUMENT, "text", "flag", "values")
    assert_still_serving(stub)


def test_extra_input_is_invalid_argument(stub: Stub) -> None:
    request = raw_request(
        "tabular", [("features", "FP32", features(1)), ("surprise", "FP32", np.zeros((1, 1), np.float32))]
    )
    assert_rpc_error(lambda: stub.ModelInfer(request), grpc.StatusCode.INVALID_ARGUMENT, "surprise")
    assert_still_serving(stub)


def test_wrong_datatype_is_invalid_argument(stub: Stub) -> None:
    request = raw_request("tabular", [("features", "FP64", features(1).astype(np.float64))])
    assert_rpc_error(lambda: stub.ModelInfer(request), grpc.StatusCode.INVALID_ARGUMENT, "FP64", "FP32")
    assert_still_serving(stub)


def test_wrong_rank_is_invalid_argument(stub: Stub) -> None:
    request = raw_request("tabular", [("features", "FP32", features(1).reshape(8))])
    assert_rpc_error(lambda: stub.ModelInfer(request), grpc.StatusCode.INVALID_ARGUMENT, "features", "[8]")
    assert_still_serving(stub)


def test_wrong_shape_is_invalid_argument(stub: Stub) -> None:
    request = raw_request("tabular", [("features", "FP32", np.zeros((2, 4), np.float32))])
    assert_rpc_error(lambda: stub.ModelInfer(request), grpc.StatusCode.INVALID_ARGUMENT, "features", "[2, 4]")
    assert_still_serving(stub)


def test_raw_data_length_that_does_not_match_the_shape_is_invalid_argument(stub: Stub) -> None:
    request = raw_request("tabular", [("features", "FP32", features(1))], shapes={"features": [2, 8]})
    assert_rpc_error(lambda: stub.ModelInfer(request), grpc.StatusCode.INVALID_ARGUMENT, "features", "32", "64")
    assert_still_serving(stub)


def test_typed_contents_count_that_does_not_match_the_shape_is_invalid_argument(stub: Stub) -> None:
    message = pb.ModelInferRequest(model_name="tabular")
    tensor = message.inputs.add(name="features", datatype="FP32", shape=[1, 8])
    tensor.contents.fp32_contents.extend([0.5] * 7)
    assert_rpc_error(lambda: stub.ModelInfer(message), grpc.StatusCode.INVALID_ARGUMENT, "features", "7", "8")
    assert_still_serving(stub)


def test_raw_contents_count_that_does_not_match_the_inputs_is_invalid_argument(stub: Stub) -> None:
    request = tabular_request()
    request.raw_input_contents.append(b"\0" * 32)
    assert_rpc_error(lambda: stub.ModelInfer(request), grpc.StatusCode.INVALID_ARGUMENT, "raw_input_contents")
    assert_still_serving(stub)


def test_input_without_any_data_is_invalid_argument(stub: Stub) -> None:
    message = pb.ModelInferRequest(model_name="tabular")
    message.inputs.add(name="features", datatype="FP32", shape=[1, 8])
    assert_rpc_error(lambda: stub.ModelInfer(message), grpc.StatusCode.INVALID_ARGUMENT, "features")
    assert_still_serving(stub)


def test_fp16_in_typed_contents_is_invalid_argument(stub: Stub) -> None:
    message = pb.ModelInferRequest(model_name="identity_all")
    tensor = message.inputs.add(name="in_fp16", datatype="FP16", shape=[1, 3])
    tensor.contents.fp32_contents.extend([1.0, 2.0, 3.0])
    assert_rpc_error(lambda: stub.ModelInfer(message), grpc.StatusCode.INVALID_ARGUMENT, "in_fp16", "FP16")
    assert_still_serving(stub)


def test_bytes_that_are_not_utf8_are_invalid_argument_naming_the_input(stub: Stub) -> None:
    inputs = multi_io_inputs(1)
    inputs["text"][0, 0] = b"\xff\xfe"
    request = raw_request("multi_io", [(n, MULTI_IO_DATATYPES[n], a) for n, a in inputs.items()])
    assert_rpc_error(lambda: stub.ModelInfer(request), grpc.StatusCode.INVALID_ARGUMENT, "text", "UTF-8")
    assert_still_serving(stub)


def test_a_bad_request_does_not_fail_the_requests_batched_with_it(stub: Stub) -> None:
    good = multi_io_inputs(1)
    bad = multi_io_inputs(1)
    bad["text"][0, 0] = b"\xff"
    requests = [raw_request("multi_io", [(n, MULTI_IO_DATATYPES[n], a) for n, a in good.items()])] * 16
    requests.insert(8, raw_request("multi_io", [(n, MULTI_IO_DATATYPES[n], a) for n, a in bad.items()]))
    futures = [stub.ModelInfer.future(r) for r in requests]
    outcomes = []
    for future in futures:
        try:
            future.result(timeout=30)
            outcomes.append("ok")
        except grpc.RpcError as error:
            outcomes.append(error.code().name)
    assert outcomes == ["ok"] * 8 + ["INVALID_ARGUMENT"] + ["ok"] * 8


def test_a_bytes_shape_far_larger_than_its_data_is_invalid_argument(stub: Stub) -> None:
    message = pb.ModelInferRequest(model_name="multi_io")
    message.inputs.add(name="text", datatype="BYTES", shape=[1, 2**62])
    message.raw_input_contents.append(b"\0\0\0\0")
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(message)
    assert_still_serving(stub)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()


def test_unknown_requested_output_is_invalid_argument(stub: Stub) -> None:
    request = tabular_request(outputs=["label", "logits"])
    assert_rpc_error(lambda: stub.ModelInfer(request), grpc.StatusCode.INVALID_ARGUMENT, "logits")
    assert_still_serving(stub)


def test_more_rows_than_max_batch_size_is_invalid_argument(stub: Stub) -> None:
    assert_rpc_error(lambda: stub.ModelInfer(tabular_request(65)), grpc.StatusCode.INVALID_ARGUMENT, "65", "64")
    assert_still_serving(stub)


def test_shared_memory_is_unimplemented(stub: Stub) -> None:
    assert_rpc_error(
        lambda: stub.SystemSharedMemoryStatus(pb.SystemSharedMemoryStatusRequest()),
        grpc.StatusCode.UNIMPLEMENTED,
        "shared memory",
    )


# ---- message size limit --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def limited_stub(tmp_path_factory: pytest.TempPathFactory, demo_repository: Path, grpc_frontend: str) -> Iterator[Stub]:
    server = start_server(
        demo_repository,
        tmp_path_factory.mktemp("limited"),
        "--max-request-bytes",
        "4096",
        "--grpc-frontend",
        grpc_frontend,
    )
    try:
        with grpc.insecure_channel(server.grpc_url) as ch:
            yield Stub(ch)
    finally:
        server.stop()


def test_message_over_the_request_limit_is_resource_exhausted(limited_stub: Stub) -> None:
    inputs = multi_io_inputs(1)
    inputs["text"][0, 0] = b"x" * 5000
    request = raw_request("multi_io", [(n, MULTI_IO_DATATYPES[n], a) for n, a in inputs.items()])
    assert_rpc_error(lambda: limited_stub.ModelInfer(request), grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert_still_serving(limited_stub)
