"""Request bytes that are not a valid protobuf message answer INVALID_ARGUMENT, not UNKNOWN.

grpc.aio runs a method's request deserializer before the method, outside any code of ours, and
answers an exception there with UNKNOWN ("Unexpected <class 'DecodeError'>") and a logged
traceback. So services are registered through ``add_decoding_safely``: the generated
``add_*_to_server`` function registers with a stand-in that keeps its method handlers, and each
handler is registered again with a deserializer that returns an ``Undecodable`` in place of
raising, and a behaviour that answers it with INVALID_ARGUMENT before the method runs. In a
request stream, an undecodable message ends the stream of requests: what was sent before it is
answered, then the call ends with INVALID_ARGUMENT.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable, Collection, Mapping
from typing import Any

import grpc
from google.protobuf.message import DecodeError

Deserializer = Callable[[bytes], Any]


class Undecodable:
    """What a safe deserializer returns for bytes that are not its message."""

    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message


def safe_deserializer(deserializer: Deserializer, message_type: str) -> Deserializer:
    def deserialize(raw: bytes) -> Any:
        try:
            return deserializer(raw)
        except DecodeError as exc:
            return Undecodable(f"the request is not a valid {message_type} message: {exc}")

    return deserialize


def _message_type(deserializer: Deserializer) -> str:
    # Generated code passes the message class's FromString; its class names the message.
    owner = getattr(deserializer, "__self__", None)
    descriptor = getattr(owner, "DESCRIPTOR", None)
    return str(getattr(descriptor, "full_name", "protobuf"))


def _unary(behavior: Callable[..., Any]) -> Callable[..., Any]:
    async def checked(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        if isinstance(request, Undecodable):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
        return await behavior(request, context)

    return checked


def _streaming(behavior: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
    async def checked(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        refused: list[Undecodable] = []

        async def decoded() -> AsyncIterator[Any]:
            async for request in requests:
                if isinstance(request, Undecodable):
                    refused.append(request)
                    return
                yield request

        async for reply in behavior(decoded(), context):
            yield reply
        if refused:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, refused[0].message)

    return checked


def _guarded(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    deserializer = handler.request_deserializer
    if deserializer is None:
        return handler
    safe = safe_deserializer(deserializer, _message_type(deserializer))
    serializer = handler.response_serializer
    if not handler.request_streaming and not handler.response_streaming:
        return grpc.unary_unary_rpc_method_handler(
            _unary(handler.unary_unary), request_deserializer=safe, response_serializer=serializer
        )
    if handler.request_streaming and handler.response_streaming and inspect.isasyncgenfunction(handler.stream_stream):
        return grpc.stream_stream_rpc_method_handler(
            _streaming(handler.stream_stream), request_deserializer=safe, response_serializer=serializer
        )
    return handler  # no such method is served here; it keeps grpc's own handling


class _Registrar:
    """Stands in for the server while a generated ``add_*_to_server`` function registers a service."""

    def __init__(self) -> None:
        self.services: dict[str, Mapping[str, grpc.RpcMethodHandler]] = {}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        return None  # the same handlers come again through add_registered_method_handlers

    def add_registered_method_handlers(self, service: str, handlers: Mapping[str, grpc.RpcMethodHandler]) -> None:
        self.services[service] = handlers


def add_decoding_safely(
    add: Callable[[Any, Any], None],
    servicer: Any,
    server: grpc.aio.Server,
    *,
    registered: Collection[str] = (),
) -> None:
    """``add(servicer, server)`` (a generated ``add_*_to_server``), with every request deserializer safe.

    Every method is served through the generic handler; only the methods named in ``registered`` are also
    registered methods. grpc.aio keeps one ``request_call`` outstanding per registered method and waits on all
    of them on every loop turn, so registering the cold ones (health, metadata, repository control) only makes
    each hot call dearer."""
    registrar = _Registrar()
    add(servicer, registrar)
    for service, handlers in registrar.services.items():
        guarded = {method: _guarded(handler) for method, handler in handlers.items()}
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, guarded),))
        hot = {method: handler for method, handler in guarded.items() if method in registered}
        if hot:
            server.add_registered_method_handlers(service, hot)
