"""The hand-off front end (serve/grpc/handoff): HTTP/2 terminated once, each ModelInfer call handed to a worker
over a Unix socket. Here the front end and two hand-off listeners (the workers' side) run in the test's own
process and loop, over one InferenceService; a real client reaches the front end on a loopback port."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from serve.core import InferenceService
from serve.grpc.handoff.front import HandoffFront
from serve.grpc.handoff.worker import HandoffListener
from serve.grpc.server import create_grpc_server
from serve.modelgen import mlp, save
from serve.protocol import grpc_service_pb2 as pb
from serve.protocol import grpc_service_pb2_grpc as pb_grpc
from serve.security.tokens import TokenStore
from serve.settings import ServerSettings
from serve.tracing.options import TracingOptions
from serve.tracing.sampling import SamplerSpec
from serve.tracing.settings import TraceSettings
from serve.tracing.spans import Tracer

pytest.importorskip("pygrpc_native")

LIMIT = 1 << 20
# Batches of 8 wait up to 1.5 s to fill: a single call stays queued long enough to pass its deadline.
HELD = """name: "held"
max_batch_size: 8
dynamic_batching { preferred_batch_size: [8] max_queue_delay_microseconds: 1500000 }
"""


@dataclass
class Handoff:
    service: InferenceService
    front: HandoffFront
    workers: list[HandoffListener]
    stub: pb_grpc.GRPCInferenceServiceStub
    channel: grpc.aio.Channel
    model_file: Path


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    repo = tmp_path / "models"
    save(mlp([4, 8, 2], seed=1), repo / "mlp" / "1" / "model.onnx")
    save(mlp([4, 8, 2], seed=2), repo / "held" / "1" / "model.onnx")
    (repo / "held" / "config.pbtxt").write_text(HELD)
    return repo


@contextlib.asynccontextmanager
async def handoff(
    repo: Path, tmp_path: Path, tokens: TokenStore | None = None, tracer: Tracer | None = None
) -> AsyncIterator[Handoff]:
    service = InferenceService.create(repo, ServerSettings(stats_enabled=False), tracer=tracer)
    await service.repository.load_all()
    workers = [
        HandoffListener(
            service,
            tmp_path / f"w{i}.sock",
            max_message_bytes=LIMIT,
            tokens=tokens,
            protect_inference=tokens is not None,
        )
        for i in range(2)
    ]
    for worker in workers:
        await worker.start()
    fallback, _, _ = create_grpc_server(service, address=f"unix:{tmp_path / 'fallback.sock'}", max_message_bytes=LIMIT)
    await fallback.start()
    front = HandoffFront(
        "127.0.0.1:0",
        [worker.path for worker in workers],
        fallback_socket=tmp_path / "fallback.sock",
        max_message_bytes=LIMIT,
    )
    front.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{front.port}") as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            yield Handoff(service, front, workers, stub, channel, repo / "mlp" / "1" / "model.onnx")
    finally:
        await asyncio.get_running_loop().run_in_executor(None, front.stop, 5.0)
        for worker in workers:
            await worker.stop()
        await fallback.stop(0)
        await service.close()


def infer_request(model: str, rows: np.ndarray) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name="input", datatype="FP32", shape=list(rows.shape))
    request.raw_input_contents.append(rows.tobytes())
    return request


def output_of(reply: pb.ModelInferResponse) -> np.ndarray:
    return np.frombuffer(reply.raw_output_contents[0], np.float32)


async def test_every_call_over_one_connection_gets_its_own_answer(repository: Path, tmp_path: Path) -> None:
    rows = np.random.default_rng(0).standard_normal((300, 4)).astype(np.float32)
    async with handoff(repository, tmp_path) as h:
        expected = ort.InferenceSession(str(h.model_file)).run(["output"], {"input": rows})[0]
        replies = await asyncio.gather(*(h.stub.ModelInfer(infer_request("mlp", rows[i : i + 1])) for i in range(300)))

    np.testing.assert_allclose(np.stack([output_of(r) for r in replies]), expected, rtol=1e-5, atol=1e-6)


async def test_a_failure_in_the_worker_is_the_status_grpc_aio_would_send(repository: Path, tmp_path: Path) -> None:
    async with handoff(repository, tmp_path) as h:
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await h.stub.ModelInfer(infer_request("nope", np.ones((1, 4), np.float32)))
        with pytest.raises(grpc.aio.AioRpcError) as wrong_shape:
            await h.stub.ModelInfer(infer_request("mlp", np.ones((1, 5), np.float32)))

    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND and "nope" in (unknown.value.details() or "")
    assert wrong_shape.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_bytes_that_are_not_a_model_infer_request_are_invalid_argument(repository: Path, tmp_path: Path) -> None:
    async with handoff(repository, tmp_path) as h:
        raw = h.channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await raw(b"\xff\xff\xff")

    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid inference.ModelInferRequest" in (refused.value.details() or "")


async def test_a_message_over_the_limit_is_resource_exhausted_and_never_reaches_a_worker(
    repository: Path, tmp_path: Path
) -> None:
    async with handoff(repository, tmp_path) as h:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await h.stub.ModelInfer(infer_request("mlp", np.ones((1, LIMIT // 4 + 16), np.float32)))
        after = await h.stub.ModelInfer(infer_request("mlp", np.ones((1, 4), np.float32)))

    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert output_of(after).shape == (2,)


async def test_a_call_past_its_deadline_is_deadline_exceeded_and_leaves_nothing_queued(
    repository: Path, tmp_path: Path
) -> None:
    async with handoff(repository, tmp_path) as h:
        with pytest.raises(grpc.aio.AioRpcError) as late:
            await h.stub.ModelInfer(infer_request("held", np.ones((1, 4), np.float32)), timeout=0.3)
        await asyncio.sleep(0.2)  # the cancel frame reaches the worker
        queued = [(waiting, running) for _, waiting, running in h.service.queue_depths()]

    assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert queued == [(0, 0), (0, 0)]  # neither model has a request waiting or a batch running


async def test_a_client_that_cancels_leaves_no_call_in_flight(repository: Path, tmp_path: Path) -> None:
    async with handoff(repository, tmp_path) as h:
        call = h.stub.ModelInfer(infer_request("held", np.ones((1, 4), np.float32)))
        await asyncio.sleep(0.3)  # handed over and queued in the batcher
        call.cancel()
        await asyncio.sleep(0.3)
        left = h.front.outstanding(), sum(len(link.tasks) for w in h.workers for link in w._links)

    assert left == (0, 0)


async def test_inference_needs_a_valid_bearer_token_when_protected(repository: Path, tmp_path: Path) -> None:
    tokens_file = tmp_path / "tokens"
    tokens_file.write_text("app inference s3cret-token-for-tests\n")
    async with handoff(repository, tmp_path, TokenStore(tokens_file)) as h:
        with pytest.raises(grpc.aio.AioRpcError) as anonymous:
            await h.stub.ModelInfer(infer_request("mlp", np.ones((1, 4), np.float32)))
        allowed = await h.stub.ModelInfer(
            infer_request("mlp", np.ones((1, 4), np.float32)),
            metadata=(("authorization", "Bearer s3cret-token-for-tests"),),
        )

    assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "no bearer token was sent" in (anonymous.value.details() or "")
    assert output_of(allowed).shape == (2,)


async def test_the_calls_of_a_worker_that_stops_are_unavailable_and_the_next_go_to_the_other(
    repository: Path, tmp_path: Path
) -> None:
    async with handoff(repository, tmp_path) as h:
        held = [h.stub.ModelInfer(infer_request("held", np.ones((1, 4), np.float32))) for _ in range(4)]
        await asyncio.sleep(0.3)  # two calls queued on each worker (the least busy takes the next)
        for link in list(h.workers[0]._links):
            link.close()  # as a worker process that exits
        outcomes = await asyncio.gather(*held, return_exceptions=True)
        after = await h.stub.ModelInfer(infer_request("mlp", np.ones((1, 4), np.float32)))

    lost = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
    assert lost and all(o.code() == grpc.StatusCode.UNAVAILABLE for o in lost)
    assert output_of(after).shape == (2,)


async def test_stopping_answers_every_handed_over_call_and_refuses_new_ones(repository: Path, tmp_path: Path) -> None:
    async with handoff(repository, tmp_path) as h:
        held = [h.stub.ModelInfer(infer_request("held", np.ones((1, 4), np.float32))) for _ in range(3)]
        # Until the front end has handed all three over (not a fixed sleep: a loaded machine is slower).
        deadline = asyncio.get_running_loop().time() + 10
        while h.front.outstanding() < 3:
            assert asyncio.get_running_loop().time() < deadline, f"{h.front.outstanding()} of 3 calls handed over"
            await asyncio.sleep(0.01)
        stopping = asyncio.get_running_loop().run_in_executor(None, h.front.stop, 5.0)
        await asyncio.sleep(0.1)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await h.stub.ModelInfer(infer_request("mlp", np.ones((1, 4), np.float32)))
        answers = await asyncio.gather(*held)
        await stopping

    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE and "shutting down" in (refused.value.details() or "")
    assert [output_of(a).shape for a in answers] == [(2,)] * 3


async def test_other_methods_are_served_by_the_fallback_server(repository: Path, tmp_path: Path) -> None:
    async with handoff(repository, tmp_path) as h:
        live = await h.stub.ServerLive(pb.ServerLiveRequest())
        metadata = await h.stub.ModelMetadata(pb.ModelMetadataRequest(name="mlp"))

    assert live.live and metadata.name == "mlp"


async def test_a_callers_traceparent_crosses_the_hand_off_to_the_workers_span(repository: Path, tmp_path: Path) -> None:
    memory = InMemorySpanExporter()
    options = TracingOptions((), "http/protobuf", SamplerSpec.from_env({}), old_rpc_attributes=False)
    tracer = Tracer(options, TraceSettings(enabled=True, sampler_ratio=1.0), exporters=[memory])
    caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    rows = np.ones((1, 4), np.float32)
    async with handoff(repository, tmp_path, tracer=tracer) as h:
        await h.stub.ModelInfer(infer_request("mlp", rows), metadata=(("traceparent", caller),))
        tracer.flush()
    (span,) = [s for s in memory.get_finished_spans() if s.name == "inference.GRPCInferenceService/ModelInfer"]
    assert f"{span.context.trace_id:032x}" == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert span.parent is not None and f"{span.parent.span_id:016x}" == "00f067aa0ba902b7"
    assert (span.attributes or {})["rpc.response.status_code"] == "OK"
