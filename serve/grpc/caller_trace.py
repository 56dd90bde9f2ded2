"""With tracing on: the caller's W3C trace id, read from ``traceparent`` metadata, for whatever a unary call logs (the
audit log's ``trace_id``). Inference starts spans of its own (serve/tracing) and is left alone here."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from serve.grpc.auth import with_variable
from serve.trace_context import CALLER_TRACE_ID, trace_id_of

_INFERENCE = frozenset(
    {"/inference.GRPCInferenceService/ModelInfer", "/inference.GRPCInferenceService/ModelStreamInfer"}
)


def _trace_id(metadata: Any) -> str:
    for key, value in metadata or ():
        if key == "traceparent" and isinstance(value, str):
            return trace_id_of(value)
    return ""


class CallerTraceInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc.aio ships no stubs
    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or handler.unary_unary is None or details.method in _INFERENCE:
            return handler
        trace_id = _trace_id(details.invocation_metadata)
        if not trace_id:
            return handler
        return with_variable(handler, CALLER_TRACE_ID, trace_id)
