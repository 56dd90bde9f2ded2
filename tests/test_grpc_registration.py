"""Which gRPC methods are registered methods: only those that carry traffic; the rest go through the generic
handler (every RPC still answers: tests/test_grpc_api.py calls each one over a real server)."""

from __future__ import annotations

from typing import Any

import grpc

from serve.grpc.decoding import add_decoding_safely
from serve.grpc.server import HOT_METHODS
from serve.protocol import grpc_service_pb2_grpc as pb_grpc


class RecordingServer:
    def __init__(self) -> None:
        self.generic: list[Any] = []
        self.registered: dict[str, set[str]] = {}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        self.generic.extend(handlers)

    def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        self.registered[service] = set(handlers)


def test_only_model_infer_and_model_stream_infer_are_registered_methods() -> None:
    server = RecordingServer()
    add_decoding_safely(
        pb_grpc.add_GRPCInferenceServiceServicer_to_server,
        pb_grpc.GRPCInferenceServiceServicer(),
        server,
        registered=HOT_METHODS,
    )
    assert server.registered == {"inference.GRPCInferenceService": {"ModelInfer", "ModelStreamInfer"}}


def test_every_method_is_served_through_the_generic_handler() -> None:
    server = RecordingServer()
    add_decoding_safely(
        pb_grpc.add_GRPCInferenceServiceServicer_to_server,
        pb_grpc.GRPCInferenceServiceServicer(),
        server,
    )
    (generic,) = server.generic
    details = type("Details", (), {"method": "/inference.GRPCInferenceService/ServerLive", "invocation_metadata": ()})
    assert generic.service(details()) is not None
    assert server.registered == {}
