"""Request ids (issue 21): every inference answer carries one, over HTTP and gRPC.

The client's OIP ``id`` wins, then an ``x-request-id`` header (gRPC metadata), else the server mints one
(serve/core/request_ids.py); it comes back in the body and as an ``x-request-id`` header, and the core's
RequestEvent carries it. In the test's own loop (tests/fixtures/inprocess.py).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import pytest_asyncio
import tritonclient.http as httpclient

from serve.core import InferenceService
from serve.core.request_ids import MAX_LENGTH
from serve.events import Observer, RequestEvent
from serve.grpc.handoff.frames import Answer, Call, FrameReader, encode_answer, encode_call
from serve.grpc.handoff.front import _call_details
from serve.modelgen import mlp, save
from serve.protocol import grpc_service_pb2 as pb
from serve.protocol import grpc_service_pb2_grpc as pb_grpc
from serve.settings import GrpcFrontend, ServerSettings
from serve.types import InferRequest, InputTensor
from tests.fixtures import triton_http
from tests.fixtures.data import features
from tests.fixtures.grpc_frontends import FRONTENDS, grpc_frontend
from tests.fixtures.inprocess import InProcess, in_process

pytestmark = pytest.mark.asyncio(loop_scope="module")

TABULAR = "/v2/models/tabular/infer"


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def server(demo_repository: Path) -> AsyncIterator[InProcess]:
    async with in_process(demo_repository) as running:
        yield running


def tabular_json(**extra: Any) -> bytes:
    x = features(1)
    return json.dumps(
        {"inputs": [{"name": "features", "shape": [1, 8], "datatype": "FP32", "data": x.ravel().tolist()}], **extra}
    ).encode()


async def post(server: InProcess, body: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
    return await server.http.post(TABULAR, content=body, headers={**triton_http.IDENTITY, **(headers or {})})


def grpc_request(request_id: str = "") -> pb.ModelInferRequest:
    x = features(1)
    message = pb.ModelInferRequest(model_name="tabular", id=request_id)
    message.inputs.add(name="features", datatype="FP32", shape=list(x.shape))
    message.raw_input_contents.append(x.tobytes())
    return message


# ---- HTTP --------------------------------------------------------------------------------------


async def test_http_json_echoes_the_clients_id_in_body_and_header(server: InProcess) -> None:
    response = await post(server, tabular_json(id="client-7"))
    assert response.status_code == 200
    assert response.json()["id"] == "client-7"
    assert response.headers["x-request-id"] == "client-7"


async def test_http_binary_echoes_the_clients_id_in_the_json_header(server: InProcess) -> None:
    tensor = httpclient.InferInput("features", [1, 8], "FP32")
    tensor.set_data_from_numpy(features(1), binary_data=True)
    result = await triton_http.infer(server.http, "tabular", [tensor], request_id="bin-1")
    assert result.get_response()["id"] == "bin-1"


async def test_http_x_request_id_header_is_the_id_when_the_body_has_none(server: InProcess) -> None:
    response = await post(server, tabular_json(), {"x-request-id": "from-header"})
    assert response.json()["id"] == "from-header"
    assert response.headers["x-request-id"] == "from-header"


async def test_http_body_id_wins_over_the_header(server: InProcess) -> None:
    response = await post(server, tabular_json(id="body"), {"x-request-id": "header"})
    assert response.json()["id"] == response.headers["x-request-id"] == "body"


async def test_http_minted_ids_are_unique_and_in_body_and_header(server: InProcess) -> None:
    body = tabular_json()
    ids = set()
    for _ in range(10_000):
        response = await post(server, body)
        minted = response.json()["id"]
        assert minted and response.headers["x-request-id"] == minted
        ids.add(minted)
    assert len(ids) == 10_000


async def test_http_error_answer_carries_the_id_and_keeps_its_error_body(server: InProcess) -> None:
    wrong_shape = {"name": "features", "shape": [1, 5], "datatype": "FP32", "data": [0.0] * 5}
    bad = json.dumps({"id": "bad-1", "inputs": [wrong_shape]})
    response = await post(server, bad.encode())
    assert response.status_code == 400
    assert response.headers["x-request-id"] == "bad-1"
    assert set(response.json()) == {"error"}


async def test_http_error_before_decoding_carries_the_header_id(server: InProcess) -> None:
    response = await server.http.post(
        "/v2/models/nope/infer", content=tabular_json(), headers={**triton_http.IDENTITY, "x-request-id": "h-404"}
    )
    assert response.status_code == 404
    assert response.headers["x-request-id"] == "h-404"


@pytest.mark.parametrize("value", ["x" * (MAX_LENGTH + 1), "caf\u00e9", "tab\there"], ids=["long", "latin-1", "tab"])
async def test_http_invalid_x_request_id_is_refused_naming_the_header(server: InProcess, value: str) -> None:
    response = await server.http.post(
        TABULAR,
        content=tabular_json(),
        headers=[(b"accept-encoding", b"identity"), (b"x-request-id", value.encode("latin-1"))],
    )
    assert response.status_code == 400
    assert "x-request-id" in response.json()["error"]
    assert "x-request-id" not in response.headers


async def test_http_body_id_that_is_no_header_value_travels_in_the_body_only(server: InProcess) -> None:
    response = await post(server, tabular_json(id="r\u00e9sum\u00e9"))
    assert response.json()["id"] == "r\u00e9sum\u00e9"
    assert "x-request-id" not in response.headers


# ---- gRPC --------------------------------------------------------------------------------------


async def test_grpc_echoes_the_clients_id_in_response_and_trailing_metadata(server: InProcess) -> None:
    call = server.grpc.ModelInfer(grpc_request("g-1"))
    response = await call
    assert response.id == "g-1"
    assert ("x-request-id", "g-1") in tuple(await call.trailing_metadata())


@pytest.mark.parametrize("frontend", FRONTENDS)
async def test_grpc_trailing_metadata_carries_the_id_on_each_front_end(
    server: InProcess, frontend: GrpcFrontend
) -> None:
    async with (
        grpc_frontend(server, frontend, max_message_bytes=1 << 20) as address,
        grpc.aio.insecure_channel(address) as channel,
    ):
        call = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(grpc_request())
        response = await call
        assert response.id and ("x-request-id", response.id) in tuple(await call.trailing_metadata())


async def test_grpc_metadata_is_the_id_when_the_message_has_none(server: InProcess) -> None:
    response = await server.grpc.ModelInfer(grpc_request(), metadata=(("x-request-id", "meta-1"),))
    assert response.id == "meta-1"


async def test_grpc_mints_an_id_when_none_is_given(server: InProcess) -> None:
    call = server.grpc.ModelInfer(grpc_request())
    response = await call
    assert response.id
    assert ("x-request-id", response.id) in tuple(await call.trailing_metadata())


async def test_grpc_invalid_x_request_id_is_invalid_argument(server: InProcess) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await server.grpc.ModelInfer(grpc_request(), metadata=(("x-request-id", "x" * (MAX_LENGTH + 1)),))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "x-request-id" in (raised.value.details() or "")


async def test_grpc_stream_answers_carry_the_clients_and_minted_ids(server: InProcess) -> None:
    answers = [a async for a in server.grpc.ModelStreamInfer(iter([grpc_request("s-1"), grpc_request()]))]
    ids = {a.infer_response.id for a in answers}
    assert "s-1" in ids and len(ids) == 2 and all(ids)
    assert [a.error_message for a in answers] == ["", ""]


async def test_grpc_stream_metadata_id_is_the_streams_not_each_requests(server: InProcess) -> None:
    stream = server.grpc.ModelStreamInfer(iter([grpc_request(), grpc_request()]), metadata=(("x-request-id", "s"),))
    ids = [a.infer_response.id async for a in stream]
    assert len(set(ids)) == 2 and "s" not in ids


async def test_grpc_stream_error_answer_carries_the_minted_id(server: InProcess) -> None:
    bad = grpc_request()  # decodes, then fails validation: the model's input has 8 features
    bad.inputs[0].shape[:] = [1, 5]
    bad.raw_input_contents[0] = features(1).tobytes()[:20]
    (answer,) = [a async for a in server.grpc.ModelStreamInfer(iter([bad]))]
    assert "features" in answer.error_message and answer.infer_response.id


# ---- the core's RequestEvent -------------------------------------------------------------------


class _Events(Observer):
    def __init__(self) -> None:
        self.seen: list[RequestEvent] = []

    def on_request(self, event: RequestEvent) -> None:
        self.seen.append(event)


@pytest_asyncio.fixture(loop_scope="module")
async def observed(demo_repository: Path) -> AsyncIterator[tuple[InferenceService, _Events]]:
    events = _Events()
    service = InferenceService.create(demo_repository, ServerSettings(), [events])
    await service.repository.load_all()
    try:
        yield service, events
    finally:
        await service.close()


def core_request(request_id: str = "") -> InferRequest:
    return InferRequest("tabular", id=request_id, inputs=[InputTensor("features", "FP32", features(1))])


async def test_the_request_event_carries_the_clients_id(observed: tuple[InferenceService, _Events]) -> None:
    service, events = observed
    await service.infer(core_request("ev-1"))
    assert [e.request_id for e in events.seen if e.key.name == "tabular"] == ["ev-1"]


async def test_the_request_event_carries_the_minted_id_the_response_carries(
    observed: tuple[InferenceService, _Events],
) -> None:
    service, events = observed
    response = await service.infer(core_request())
    assert response.id and events.seen[-1].request_id == response.id


async def test_the_request_event_of_a_refused_request_carries_its_id(
    observed: tuple[InferenceService, _Events],
) -> None:
    service, events = observed
    bad = InferRequest("tabular", id="ev-bad", inputs=[InputTensor("features", "FP32", np.zeros((1, 5), np.float32))])
    with pytest.raises(Exception, match="features"):
        await service.infer(bad)
    assert (events.seen[-1].outcome, events.seen[-1].request_id) == ("invalid_input", "ev-bad")


# ---- the hand-off front end (--workers N --grpc-frontend native) -------------------------------


async def test_call_and_answer_frames_carry_the_request_id() -> None:
    data = encode_call(3, 0.0, "tok", b"\x01", "rid-\u00e9") + encode_answer(3, 0, b"\x02", "rid-\u00e9")
    frames = FrameReader(1 << 20).feed(data)
    assert frames == [Call(3, 0.0, "tok", b"\x01", "rid-\u00e9"), Answer(3, 0, b"\x02", "rid-\u00e9")]


async def test_the_front_end_cuts_an_overlong_x_request_id_to_one_more_than_allowed() -> None:
    _, _, request_id, _ = _call_details(((("x-request-id", "x" * 70_000),), "peer", None))
    assert request_id == "x" * (MAX_LENGTH + 1)


@pytest.fixture
def mlp_repository(tmp_path: Path) -> Path:
    save(mlp([4, 8, 2], seed=1), tmp_path / "models" / "mlp" / "1" / "model.onnx")
    return tmp_path / "models"


async def test_handed_off_calls_take_the_id_from_message_metadata_or_mint_one(
    mlp_repository: Path, tmp_path: Path
) -> None:
    pytest.importorskip("pygrpc_native")  # the front end is the serve[grpc-native] extra's
    from tests.test_grpc_handoff import handoff, infer_request

    rows = np.ones((1, 4), np.float32)
    with_id = infer_request("mlp", rows)
    with_id.id = "h-1"
    async with handoff(mlp_repository, tmp_path) as h:
        own = await h.stub.ModelInfer(with_id)
        from_metadata = await h.stub.ModelInfer(infer_request("mlp", rows), metadata=(("x-request-id", "m-1"),))
        call = h.stub.ModelInfer(infer_request("mlp", rows))
        minted = await call
        trailing = tuple(await call.trailing_metadata())
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await h.stub.ModelInfer(infer_request("mlp", rows), metadata=(("x-request-id", "x" * 300),))
    assert (own.id, from_metadata.id) == ("h-1", "m-1") and minted.id
    assert ("x-request-id", minted.id) in trailing
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "x-request-id" in (refused.value.details() or "")
