"""Acceptance tests of the gRPC API, in the test's own loop, over both gRPC front ends.

Clients: the unmodified tritonclient.grpc.aio (it dials the in-process server's loopback port like any
client), and a grpc.aio stub built from serve.protocol for what tritonclient hides (typed ``contents``,
malformed requests, the exact response message). The rules every inference request must meet are
tests/test_request_rules.py's; what is here is the API around them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias, TypedDict

import grpc
import numpy as np
import pytest
import pytest_asyncio
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from tritonclient.utils import InferenceServerException

from serve.codecs.bytes_tensor import deserialize_bytes_tensor, serialize_bytes_tensor
from serve.datatypes import OIP_TO_WIRE_DTYPE
from serve.demo import IDENTITY_DATATYPES
from serve.protocol import grpc_service_pb2 as pb
from serve.protocol import grpc_service_pb2_grpc as pb_grpc
from serve.settings import GrpcFrontend, ServerSettings
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
from tests.fixtures.grpc_frontends import FRONTENDS, grpc_frontend
from tests.fixtures.inprocess import in_process

pytestmark = pytest.mark.asyncio(loop_scope="module")

Stub = pb_grpc.GRPCInferenceServiceStub
Client: TypeAlias = aioclient.InferenceServerClient
SERVICE = "inference.GRPCInferenceService"
UNLIMITED = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]


@pytest.fixture(scope="module", params=FRONTENDS)
def frontend(request: pytest.FixtureRequest) -> GrpcFrontend:
    """Every test here runs against both gRPC front ends (serve/grpc/frontends.py)."""
    frontend: GrpcFrontend = request.param
    return frontend


@dataclass
class Dialled:
    """A gRPC server on one front end and the clients that dial it."""

    address: str
    channel: grpc.aio.Channel
    stub: Stub
    client: Client


@contextlib.asynccontextmanager
async def dialled(root: Path, frontend: GrpcFrontend, settings: ServerSettings) -> AsyncIterator[Dialled]:
    async with (
        in_process(root, settings) as running,
        grpc_frontend(running, frontend, max_message_bytes=settings.max_request_bytes) as address,
        grpc.aio.insecure_channel(address, options=UNLIMITED) as channel,
    ):
        client = Client(address)
        try:
            yield Dialled(address, channel, Stub(channel), client)
        finally:
            await client.close()


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def server(demo_repository: Path, frontend: GrpcFrontend) -> AsyncIterator[Dialled]:
    async with dialled(demo_repository, frontend, ServerSettings()) as running:
        yield running


@pytest.fixture()
def client(server: Dialled) -> Client:
    return server.client


@pytest.fixture()
def stub(server: Dialled) -> Stub:
    return server.stub


@pytest.fixture()
def channel(server: Dialled) -> grpc.aio.Channel:
    return server.channel


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
) -> pb.ModelInferRequest:
    """A ModelInferRequest with raw_input_contents."""
    message = pb.ModelInferRequest(model_name=model, model_version=version, id=request_id)
    for name, datatype, array in tensors:
        message.inputs.add(name=name, datatype=datatype, shape=list(array.shape))
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


async def stats_of(stub: Stub, model: str) -> pb.ModelStatistics:
    (entry,) = (await stub.ModelStatistics(pb.ModelStatisticsRequest(name=model))).model_stats
    return entry


async def assert_still_serving(stub: Stub) -> None:
    response = await stub.ModelInfer(tabular_request())
    assert [o.name for o in response.outputs] == ["probabilities", "label"]


async def assert_rpc_error(call: Any, code: grpc.StatusCode, *fragments: str) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    error = info.value
    assert error.code() == code, (error.code(), error.details())
    for fragment in fragments:
        assert fragment in error.details(), error.details()
    return error.details()


# ---- health and metadata -------------------------------------------------------------------------


async def test_server_is_live(client: Client) -> None:
    assert await client.is_server_live()


async def test_server_is_ready(client: Client) -> None:
    assert await client.is_server_ready()


async def test_standard_health_service_reports_serving(channel: grpc.aio.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", SERVICE):
        status = (await health.Check(health_pb2.HealthCheckRequest(service=service))).status
        assert status == health_pb2.HealthCheckResponse.SERVING, service


async def test_reflection_lists_the_inference_service(channel: grpc.aio.Channel) -> None:
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    answers = reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    (answer,) = [a async for a in answers]
    names = {s.name for s in answer.list_services_response.service}
    assert {SERVICE, "grpc.health.v1.Health"} <= names


async def test_server_metadata_lists_the_extensions_clients_look_for(client: Client) -> None:
    metadata = await client.get_server_metadata()
    assert metadata.name and metadata.version
    assert {"statistics", "binary_tensor_data", "model_repository"} <= set(metadata.extensions)


async def test_model_metadata_puts_the_batch_dimension_first(client: Client) -> None:
    metadata = await client.get_model_metadata("tabular")
    assert (metadata.name, list(metadata.versions), metadata.platform) == ("tabular", ["1"], "onnxruntime_onnx")
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == [("features", "FP32", [-1, 8])]
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.outputs] == [
        ("probabilities", "FP32", [-1, 3]),
        ("label", "INT64", [-1, 1]),
    ]


async def test_model_metadata_of_a_non_batching_model_has_no_batch_dimension(client: Client) -> None:
    metadata = await client.get_model_metadata("fixed_shape", model_version="1")
    assert [list(t.shape) for t in metadata.inputs] == [[2, 3]]
    assert [list(t.shape) for t in metadata.outputs] == [[2, 3]]


async def test_model_is_ready(client: Client) -> None:
    assert await client.is_model_ready("tabular")
    assert await client.is_model_ready("tabular", model_version="1")


async def test_unknown_model_and_version_are_not_ready(client: Client) -> None:
    assert not await client.is_model_ready("nope")
    assert not await client.is_model_ready("tabular", model_version="9")


async def test_model_config_is_the_model_config_message(client: Client) -> None:
    config = (await client.get_model_config("tabular")).config
    assert (config.name, config.platform, config.backend) == ("tabular", "onnxruntime_onnx", "onnxruntime")
    assert config.max_batch_size == 64
    assert [(i.name, list(i.dims)) for i in config.input] == [("features", [8])]
    assert [o.name for o in config.output] == ["probabilities", "label"]
    assert config.WhichOneof("scheduling_choice") == "dynamic_batching"


async def test_model_config_json_has_what_perf_analyzer_reads(client: Client) -> None:
    # perf_analyzer converts the gRPC answer with preserved field names and reads ["config"].
    response = await client.get_model_config("multi_io")
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


async def test_model_config_of_a_non_batching_model_has_max_batch_size_zero(client: Client) -> None:
    config = (await client.get_model_config("fixed_shape")).config
    assert config.max_batch_size == 0
    assert [list(i.dims) for i in config.input] == [[2, 3]]


# ---- inference -----------------------------------------------------------------------------------


async def test_tabular_answers_what_onnxruntime_answers(client: Client, demo_repository: Path) -> None:
    x = features(3)
    result = await client.infer("tabular", [infer_input("features", x, "FP32")])
    assert_tabular_answer(demo_repository, x, result.as_numpy("probabilities"), result.as_numpy("label"))


async def test_multi_io_answers_every_output(client: Client) -> None:
    inputs = multi_io_inputs(3)
    result = await client.infer("multi_io", [infer_input(n, a, MULTI_IO_DATATYPES[n]) for n, a in inputs.items()])
    for name, expected in multi_io_expected(inputs).items():
        got = result.as_numpy(name)
        assert got.dtype == expected.dtype, name
        np.testing.assert_array_equal(got, expected, err_msg=name)


async def test_fixed_shape_model_infers_without_a_batch_dimension(client: Client) -> None:
    x = np.array([[1, 2, 3], [4, 5, 6]], dtype=np.float32)
    result = await client.infer("fixed_shape", [infer_input("x", x, "FP32")])
    np.testing.assert_array_equal(result.as_numpy("y"), fixed_shape_expected(x))


@pytest.mark.parametrize("datatype", IDENTITY_DATATYPES)
async def test_every_datatype_round_trips_exactly(client: Client, datatype: str) -> None:
    name = datatype.lower()
    sent = sample(datatype)
    inputs = [infer_input(f"in_{dt.lower()}", sample(dt), dt) for dt in IDENTITY_DATATYPES]
    result = await client.infer("identity_all", inputs, outputs=[grpcclient.InferRequestedOutput(f"out_{name}")])
    got = result.as_numpy(f"out_{name}")
    assert got.dtype == sent.dtype and got.shape == sent.shape
    np.testing.assert_array_equal(got, sent)
    if datatype in ("FP16", "FP32", "FP64"):
        assert got.tobytes() == sent.tobytes()  # bit-exact, -0.0 included


async def test_bytes_with_non_ascii_and_empty_elements_round_trip(client: Client) -> None:
    inputs = multi_io_inputs(len(BYTES_VALUES))
    result = await client.infer(
        "multi_io",
        [infer_input(n, a, MULTI_IO_DATATYPES[n]) for n, a in inputs.items()],
        outputs=[grpcclient.InferRequestedOutput("text_out")],
    )
    assert result.as_numpy("text_out")[:, 0].tolist() == BYTES_VALUES


async def test_a_multi_row_request_answers_each_row_as_if_sent_alone(client: Client) -> None:
    x = features(4, seed=5)
    together = (await client.infer("tabular", [infer_input("features", x, "FP32")])).as_numpy("probabilities")
    assert together.shape == (4, 3)
    for row in range(4):
        alone = await client.infer("tabular", [infer_input("features", x[row : row + 1], "FP32")])
        np.testing.assert_allclose(together[row : row + 1], alone.as_numpy("probabilities"), rtol=1e-6)


async def test_requested_outputs_are_the_only_outputs_returned(stub: Stub) -> None:
    response = await stub.ModelInfer(tabular_request(2, outputs=["label"]))
    assert [o.name for o in response.outputs] == ["label"]
    assert len(response.raw_output_contents) == 1


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
async def test_compressed_messages_are_accepted(
    client: Client, demo_repository: Path, frontend: GrpcFrontend, algorithm: str
) -> None:
    x = features(4)
    if algorithm == "deflate" and frontend == "native":
        # documented (README, frontends.py): the native front end takes gzip, not deflate
        with pytest.raises(InferenceServerException, match="deflate") as refused:
            await client.infer("tabular", [infer_input("features", x, "FP32")], compression_algorithm=algorithm)
        assert refused.value.status() == "StatusCode.UNIMPLEMENTED"
        return
    result = await client.infer("tabular", [infer_input("features", x, "FP32")], compression_algorithm=algorithm)
    assert_tabular_answer(demo_repository, x, result.as_numpy("probabilities"), result.as_numpy("label"))


async def test_request_id_is_echoed(client: Client) -> None:
    result = await client.infer("tabular", [infer_input("features", features(1), "FP32")], request_id="grpc-42")
    assert result.get_response().id == "grpc-42"


async def test_responses_carry_every_output_in_raw_output_contents(stub: Stub) -> None:
    inputs = multi_io_inputs(2)
    response = await stub.ModelInfer(
        raw_request("multi_io", [(n, MULTI_IO_DATATYPES[n], a) for n, a in inputs.items()])
    )
    assert (response.model_name, response.model_version) == ("multi_io", "1")
    assert len(response.raw_output_contents) == len(response.outputs) == 5
    assert not any(o.HasField("contents") for o in response.outputs)
    for name, expected in multi_io_expected(inputs).items():
        np.testing.assert_array_equal(decode_output(response, name), expected, err_msg=name)


async def test_typed_contents_inputs_are_accepted(stub: Stub) -> None:
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
    response = await stub.ModelInfer(message)
    assert response.id == "typed"
    assert len(response.raw_output_contents) == 5
    for name, expected in multi_io_expected(inputs).items():
        np.testing.assert_array_equal(decode_output(response, name), expected, err_msg=name)


async def test_typed_fp32_contents_give_the_same_answer_as_raw(stub: Stub) -> None:
    x = features(2)
    message = pb.ModelInferRequest(model_name="tabular")
    tensor = message.inputs.add(name="features", datatype="FP32", shape=[2, 8])
    tensor.contents.fp32_contents.extend(x.ravel().tolist())
    typed = await stub.ModelInfer(message)
    raw = await stub.ModelInfer(raw_request("tabular", [("features", "FP32", x)]))
    assert typed.raw_output_contents == raw.raw_output_contents


async def test_a_message_over_grpcs_default_4_mib_is_accepted(stub: Stub) -> None:
    inputs = multi_io_inputs(1)
    inputs["text"][0, 0] = b"x" * (5 * 1024 * 1024)
    response = await stub.ModelInfer(
        raw_request("multi_io", [(n, MULTI_IO_DATATYPES[n], a) for n, a in inputs.items()], outputs=["text_out"])
    )
    assert decode_output(response, "text_out")[0, 0] == inputs["text"][0, 0]


# ---- streaming -----------------------------------------------------------------------------------


class StreamRequest(TypedDict, total=False):
    """One request on tritonclient.grpc.aio's stream: async_stream_infer's arguments, as it takes them."""

    model_name: str
    inputs: list[grpcclient.InferInput]
    request_id: str


async def stream_answers(client: Client, requests: list[StreamRequest]) -> list[tuple[Any, Any]]:
    """tritonclient's stream: each request in order, one answer each."""

    async def each() -> AsyncIterator[StreamRequest]:
        for request in requests:
            yield request

    answers = []
    async with asyncio.timeout(30):
        async for answer in client.stream_infer(each()):
            answers.append(answer)
            if len(answers) == len(requests):
                break
    return answers


async def test_stream_answers_each_request(client: Client) -> None:
    inputs = {f"s{i}": features(i + 1, seed=i) for i in range(3)}
    answers = await stream_answers(
        client,
        [
            {"model_name": "tabular", "inputs": [infer_input("features", x, "FP32")], "request_id": request_id}
            for request_id, x in inputs.items()
        ],
    )
    assert [error for _, error in answers] == [None] * 3
    received = {result.get_response().id: result.as_numpy("probabilities") for result, _ in answers}
    assert {k: v.shape[0] for k, v in received.items()} == {"s0": 1, "s1": 2, "s2": 3}


async def test_stream_answers_an_error_in_stream_and_goes_on(client: Client) -> None:
    (failed, error), (after, no_error) = await stream_answers(
        client,
        [
            {"model_name": "tabular", "inputs": [infer_input("features", np.zeros((1, 5), np.float32), "FP32")]},
            {"model_name": "tabular", "inputs": [infer_input("features", features(1), "FP32")], "request_id": "after"},
        ],
    )
    assert failed is None and "features" in error.message()
    assert no_error is None and after.get_response().id == "after"


async def test_stream_error_answer_echoes_the_request_id(stub: Stub) -> None:
    bad = raw_request("tabular", [("features", "FP32", np.zeros((1, 5), np.float32))], request_id="bad-1")
    (answer,) = [a async for a in stub.ModelStreamInfer(iter([bad]))]
    assert "features" in answer.error_message
    assert answer.infer_response.id == "bad-1"


# ---- statistics ----------------------------------------------------------------------------------


async def test_statistics_count_each_request_and_its_rows(client: Client, stub: Stub) -> None:
    before = await stats_of(stub, "tabular")
    await client.infer("tabular", [infer_input("features", features(3), "FP32")])
    after = await stats_of(stub, "tabular")
    assert after.version == "1"
    assert after.inference_count - before.inference_count == 3
    assert after.execution_count - before.execution_count == 1
    for key in ("success", "queue", "compute_input", "compute_infer", "compute_output"):
        delta = getattr(after.inference_stats, key).count - getattr(before.inference_stats, key).count
        assert delta == 1, key
    assert after.last_inference > 0


async def test_statistics_of_all_models_list_every_model(client: Client) -> None:
    stats = (await client.get_inference_statistics()).model_stats
    assert {s.name for s in stats} == {"tabular", "multi_io", "identity_all", "fixed_shape"}
    assert all(s.version == "1" for s in stats)


async def test_statistics_of_an_unknown_model_are_not_found(stub: Stub) -> None:
    await assert_rpc_error(
        stub.ModelStatistics(pb.ModelStatisticsRequest(name="nope")), grpc.StatusCode.NOT_FOUND, "nope"
    )


# ---- bad input (the rules every request must meet: tests/test_request_rules.py) ------------------


async def test_an_unknown_model_has_no_metadata_and_no_config(stub: Stub) -> None:
    await assert_rpc_error(stub.ModelMetadata(pb.ModelMetadataRequest(name="nope")), grpc.StatusCode.NOT_FOUND, "nope")
    await assert_rpc_error(stub.ModelConfig(pb.ModelConfigRequest(name="nope")), grpc.StatusCode.NOT_FOUND)
    await assert_still_serving(stub)


async def test_tritonclient_raises_with_the_status_and_message(client: Client) -> None:
    with pytest.raises(InferenceServerException) as info:
        await client.infer("tabular", [infer_input("features", np.zeros((1, 5), np.float32), "FP32")])
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "features" in info.value.message()


async def test_fp16_in_typed_contents_is_invalid_argument(stub: Stub) -> None:
    message = pb.ModelInferRequest(model_name="identity_all")
    tensor = message.inputs.add(name="in_fp16", datatype="FP16", shape=[1, 3])
    tensor.contents.fp32_contents.extend([1.0, 2.0, 3.0])
    await assert_rpc_error(stub.ModelInfer(message), grpc.StatusCode.INVALID_ARGUMENT, "in_fp16", "FP16")
    await assert_still_serving(stub)


async def test_a_bad_request_does_not_fail_the_requests_batched_with_it(stub: Stub) -> None:
    good = multi_io_inputs(1)
    bad = multi_io_inputs(1)
    bad["text"][0, 0] = b"\xff"
    requests = [raw_request("multi_io", [(n, MULTI_IO_DATATYPES[n], a) for n, a in good.items()])] * 16
    requests.insert(8, raw_request("multi_io", [(n, MULTI_IO_DATATYPES[n], a) for n, a in bad.items()]))
    async with asyncio.timeout(30):
        answers = await asyncio.gather(*(stub.ModelInfer(r) for r in requests), return_exceptions=True)
    outcomes = [a.code().name if isinstance(a, grpc.aio.AioRpcError) else "ok" for a in answers]
    assert outcomes == ["ok"] * 8 + ["INVALID_ARGUMENT"] + ["ok"] * 8


async def test_a_bytes_shape_far_larger_than_its_data_is_invalid_argument(stub: Stub) -> None:
    message = pb.ModelInferRequest(model_name="multi_io")
    message.inputs.add(name="text", datatype="BYTES", shape=[1, 2**62])
    message.raw_input_contents.append(b"\0\0\0\0")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.ModelInfer(message)
    await assert_still_serving(stub)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()


async def test_shared_memory_is_unimplemented(stub: Stub) -> None:
    await assert_rpc_error(
        stub.SystemSharedMemoryStatus(pb.SystemSharedMemoryStatusRequest()),
        grpc.StatusCode.UNIMPLEMENTED,
        "shared memory",
    )


# ---- message size limit --------------------------------------------------------------------------


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def limited(demo_repository: Path, frontend: GrpcFrontend) -> AsyncIterator[Dialled]:
    async with dialled(demo_repository, frontend, ServerSettings(max_request_bytes=4096)) as running:
        yield running


async def test_message_over_the_request_limit_is_resource_exhausted(limited: Dialled) -> None:
    inputs = multi_io_inputs(1)
    inputs["text"][0, 0] = b"x" * 5000
    request = raw_request("multi_io", [(n, MULTI_IO_DATATYPES[n], a) for n, a in inputs.items()])
    await assert_rpc_error(limited.stub.ModelInfer(request), grpc.StatusCode.RESOURCE_EXHAUSTED)
    await assert_still_serving(limited.stub)
