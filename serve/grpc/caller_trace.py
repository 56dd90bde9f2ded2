"""With tracing on: the caller's W3C trace id, read from ``traceparent`` metadata, for whatever a unary call logs (the
audit log's ``trace_id``). Inference starts spans of its own (serve/tracing) and is left alone here."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from serve.trace_context import CALLER_TRACE_ID, parse_traceparent

_INFERENCE = frozenset(
    {"/inference.GRPCInferenceService/ModelInfer", "/inference.GRPCInferenceService/ModelStreamInfer"}
)


def _trace_id(metadata: Any) -> str:
    for key, value in metadata or ():
        if key == "traceparent" and isinstance(value, str):
            parent = parse_traceparent(value)
            return f"{parent.trace_id:032x}" if parent is not None else ""
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
        behavior = handler.unary_unary

        # The handler runs in a context of its own, not the interceptor's: the variable is set there.
        async def with_caller_trace(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            token = CALLER_TRACE_ID.set(trace_id)
            try:
                return await behavior(request, context)
            finally:
                CALLER_TRACE_ID.reset(token)

        return grpc.unary_unary_rpc_method_handler(
            with_caller_trace, handler.request_deserializer, handler.response_serializer
        )
