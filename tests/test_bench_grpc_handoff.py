"""bench/_handoff, the hand-off prototype that bench/grpc_handoff measures, answers real calls correctly: the
numbers it gives are for a front end that works, not for one that drops or mixes up calls."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest

from bench._harness import grpc_request_bytes
from bench.grpc_handoff import start_handoff
from bench.grpc_servicer import CONFIG, DIMS, METHOD, MODEL
from serve.modelgen import mlp, save
from serve.protocol import grpc_service_pb2 as pb

pytest.importorskip("pygrpc_native")


def test_every_call_over_one_connection_through_the_front_and_two_workers_gets_its_own_answer(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    model_file = save(mlp(DIMS, seed=1), repo / MODEL / "1" / "model.onnx")
    (repo / MODEL / "config.pbtxt").write_text(CONFIG.format(model=MODEL, batching=""))
    rows = np.random.default_rng(0).standard_normal((200, DIMS[0])).astype(np.float32)
    expected = ort.InferenceSession(str(model_file)).run(["output"], {"input": rows})[0]
    first = grpc_request_bytes(MODEL, "input", rows[:1], "FP32")
    target = start_handoff("handoff", repo, tmp_path, 2, first)

    async def call_all() -> list[np.ndarray]:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{target.grpc_port}") as channel:  # one connection
            infer = channel.unary_unary(METHOD, request_serializer=None, response_deserializer=None)

            async def one(row: np.ndarray) -> np.ndarray:
                reply = pb.ModelInferResponse.FromString(await infer(grpc_request_bytes(MODEL, "input", row, "FP32")))
                return np.frombuffer(reply.raw_output_contents[0], np.float32)

            return await asyncio.gather(*(one(rows[i : i + 1]) for i in range(len(rows))))

    try:
        answers = asyncio.run(call_all())
    finally:
        target.stop()

    np.testing.assert_allclose(np.stack(answers), expected, rtol=1e-5, atol=1e-6)
