"""inference.GRPCInferenceService on grpc.aio: a thin translation onto InferenceService.

Every unary method is wrapped by ``rpc``, which maps failures to statuses (errors.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from google.protobuf import json_format

from serve.codecs import grpc_codec
from serve.core import InferenceService
from serve.core.request_ids import HEADER, is_header_value
from serve.errors import InvalidInput, Unsupported
from serve.grpc.auth import TRACE_SETTING, current_actor
from serve.grpc.errors import code_name_of, message_of, rpc
from serve.protocol import grpc_service_pb2 as pb
from serve.protocol import grpc_service_pb2_grpc as pb_grpc
from serve.protocol import model_config_pb2 as mc
from serve.repository.config_file import parse_config_json
from serve.tracing.request import GrpcTracedRequest
from serve.tracing.settings import SettingValue, TraceSettingsDocument
from serve.types import InferRequest

Context = Any  # grpc.aio.ServicerContext; the generated base class leaves it untyped


def _repository_parameters(params: Any) -> tuple[mc.ModelConfig | None, dict[str, bytes]]:
    config = None
    files: dict[str, bytes] = {}
    for key, value in params.items():
        choice = value.WhichOneof("parameter_choice")
        if key == "config":
            if choice != "string_param":
                raise InvalidInput("parameter 'config' must be a string holding the config as JSON")
            config = parse_config_json(value.string_param)
        elif key.startswith("file:"):
            if choice != "bytes_param":
                raise InvalidInput(f"parameter '{key}' must be bytes")
            files[key[5:]] = value.bytes_param
    return config, files


def _setting_value(values: Sequence[str]) -> SettingValue:
    """No value clears the key (HTTP's null); values are the list Triton's clients send (the settings take a
    one-element list wherever they take a string)."""
    return list(values) if values else None


def _trace_response(document: TraceSettingsDocument) -> pb.TraceSettingResponse:
    response = pb.TraceSettingResponse()
    for key, value in document.items():
        assert isinstance(value, str | list)
        response.settings[key].value.extend([value] if isinstance(value, str) else value)
    return response


class _Metadata:
    """The call's invocation metadata by lower-case key, read only when asked: for a rollout's routing key, or
    for x-request-id when the message has no id. On a stream, the call's metadata is the stream's, not each
    request's: an x-request-id there would give every request of the stream one id, so it is not offered."""

    __slots__ = ("_context", "_values", "_stream")

    def __init__(self, context: Context, *, stream: bool = False) -> None:
        self._context = context
        self._values: dict[str, str] | None = None
        self._stream = stream

    def __call__(self, name: str) -> str | None:
        if self._stream and name == HEADER:
            return None
        if self._values is None:
            metadata = self._context.invocation_metadata() or ()
            self._values = {k.lower(): v for k, v in metadata if isinstance(v, str)}
        return self._values.get(name)


def _decoded(message: pb.ModelInferRequest, context: Context, *, stream: bool = False) -> InferRequest:
    request = grpc_codec.decode_infer_request(message)
    request.header = _Metadata(context, stream=stream)
    return request


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, service: InferenceService) -> None:
        self._service = service

    @rpc
    async def ServerLive(self, request: pb.ServerLiveRequest, context: Context) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=self._service.server_live())

    @rpc
    async def ServerReady(self, request: pb.ServerReadyRequest, context: Context) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self._service.server_ready())

    @rpc
    async def ModelReady(self, request: pb.ModelReadyRequest, context: Context) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=self._service.model_ready(request.name, request.version))

    @rpc
    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: Context) -> pb.ServerMetadataResponse:
        meta = self._service.server_metadata()
        return pb.ServerMetadataResponse(name=meta["name"], version=meta["version"], extensions=meta["extensions"])

    @rpc
    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Context) -> pb.ModelMetadataResponse:
        meta = self._service.model_metadata(request.name, request.version)
        return pb.ModelMetadataResponse(
            name=meta["name"],
            versions=meta["versions"],
            platform=meta["platform"],
            inputs=[pb.ModelMetadataResponse.TensorMetadata(**t) for t in meta["inputs"]],
            outputs=[pb.ModelMetadataResponse.TensorMetadata(**t) for t in meta["outputs"]],
        )

    @rpc
    async def ModelConfig(self, request: pb.ModelConfigRequest, context: Context) -> pb.ModelConfigResponse:
        return pb.ModelConfigResponse(config=self._service.model_config(request.name, request.version))

    @rpc
    async def ModelStatistics(self, request: pb.ModelStatisticsRequest, context: Context) -> pb.ModelStatisticsResponse:
        response = pb.ModelStatisticsResponse()
        stats = await self._service.model_statistics(request.name, request.version)
        # The HTTP document's serve extensions (shadow_stats) have no field in Triton's message: left out.
        json_format.ParseDict({"model_stats": stats}, response, ignore_unknown_fields=True)
        return response

    @rpc
    async def ModelInfer(self, request: pb.ModelInferRequest, context: Context) -> pb.ModelInferResponse:
        tracer = self._service.tracer
        if tracer is None:
            return await self._infer(request, context, None)
        span = tracer.grpc_request(request.model_name, "ModelInfer", _Metadata(context), time.perf_counter_ns())
        if span is None:
            return await self._infer(request, context, None)
        try:
            answer = await self._infer(request, context, span)
        except BaseException as exc:
            span.end_grpc(code_name_of(exc), exc)
            raise
        span.end_grpc("OK")
        return answer

    async def _infer(
        self, request: pb.ModelInferRequest, context: Context, span: GrpcTracedRequest | None
    ) -> pb.ModelInferResponse:
        response = await self._service.infer_decoding(
            request.model_name, request.model_version, lambda _: _decoded(request, context), "grpc", span
        )
        # Also as metadata, for proxies and interceptors that do not parse the message. Trailing, not initial:
        # send_initial_metadata is one more batch of operations per call on grpc.aio (+12% CPU per call, measured),
        # trailing metadata rides on the status the call sends anyway (+0.4%, within noise).
        if is_header_value(response.id):
            context.set_trailing_metadata(((HEADER, response.id),))
        if span is None:
            return grpc_codec.encode_infer_response(response)
        encoding = time.perf_counter_ns()
        encoded = grpc_codec.encode_infer_response(response)
        span.phase("encode", encoding, time.perf_counter_ns())
        return encoded

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[pb.ModelInferRequest], context: Context
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        # Each request is answered on its own as soon as it completes; an error answers that
        # request with error_message and the stream goes on.
        answers: asyncio.Queue[pb.ModelStreamInferResponse | None] = asyncio.Queue()
        pending: set[asyncio.Task[None]] = set()

        tracer = self._service.tracer
        # The stream's metadata (its traceparent) is every message's: each message is a request with a span of its own.
        metadata = _Metadata(context, stream=True)

        async def answer(message: pb.ModelInferRequest) -> None:
            decoded: list[InferRequest] = []
            span = None
            if tracer is not None:
                span = tracer.grpc_request(message.model_name, "ModelStreamInfer", metadata, time.perf_counter_ns())

            def decode(_: object) -> InferRequest:
                decoded.append(_decoded(message, context, stream=True))
                return decoded[0]

            try:
                response = await self._service.infer_decoding(
                    message.model_name, message.model_version, decode, "grpc", span
                )
                reply = pb.ModelStreamInferResponse(infer_response=grpc_codec.encode_infer_response(response))
                if span is not None:
                    span.end_grpc("OK")
            except asyncio.CancelledError:  # the stream ended first: nobody to answer
                if span is not None:
                    span.end_grpc("CANCELLED")
                raise
            except Exception as exc:  # every request gets an answer, whatever went wrong
                if span is not None:
                    span.end_grpc(code_name_of(exc), exc)
                request_id = decoded[0].id if decoded and decoded[0].id else message.id  # the core's, if it got one
                reply = pb.ModelStreamInferResponse(
                    error_message=message_of(exc, "ModelStreamInfer"),
                    infer_response=pb.ModelInferResponse(
                        model_name=message.model_name, model_version=message.model_version, id=request_id
                    ),
                )
            await answers.put(reply)

        async def read() -> None:
            try:
                async for message in request_iterator:
                    task = asyncio.ensure_future(answer(message))
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                if pending:
                    await asyncio.gather(*list(pending), return_exceptions=True)
            finally:
                await answers.put(None)

        reader = asyncio.ensure_future(read())
        try:
            while True:
                item = await answers.get()
                if item is None:
                    break
                yield item
        finally:
            reader.cancel()
            for task in list(pending):
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    @rpc
    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest, context: Context) -> pb.RepositoryIndexResponse:
        with self._service.audited("index", current_actor(), ""):
            rows = self._service.repository_index(request.ready)
            return pb.RepositoryIndexResponse(models=[pb.RepositoryIndexResponse.ModelIndex(**r) for r in rows])

    @rpc
    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: Context
    ) -> pb.RepositoryModelLoadResponse:
        actor = current_actor()
        with self._service.audited("load", actor, request.model_name):
            config, files = _repository_parameters(request.parameters)
            await self._service.load_model(request.model_name, config, files or None, actor=actor)
            return pb.RepositoryModelLoadResponse()

    @rpc
    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: Context
    ) -> pb.RepositoryModelUnloadResponse:
        actor = current_actor()
        with self._service.audited("unload", actor, request.model_name):
            await self._service.unload_model(request.model_name, actor=actor)
            return pb.RepositoryModelUnloadResponse()

    async def _unsupported(self, context: Context, what: str) -> Any:
        raise Unsupported(f"the {what} extension is not supported by this server")

    @rpc
    async def SystemSharedMemoryStatus(self, request: Any, context: Context) -> Any:
        return await self._unsupported(context, "system shared memory")

    @rpc
    async def SystemSharedMemoryRegister(self, request: Any, context: Context) -> Any:
        return await self._unsupported(context, "system shared memory")

    @rpc
    async def SystemSharedMemoryUnregister(self, request: Any, context: Context) -> Any:
        return await self._unsupported(context, "system shared memory")

    @rpc
    async def CudaSharedMemoryStatus(self, request: Any, context: Context) -> Any:
        return await self._unsupported(context, "CUDA shared memory")

    @rpc
    async def CudaSharedMemoryRegister(self, request: Any, context: Context) -> Any:
        return await self._unsupported(context, "CUDA shared memory")

    @rpc
    async def CudaSharedMemoryUnregister(self, request: Any, context: Context) -> Any:
        return await self._unsupported(context, "CUDA shared memory")

    @rpc
    async def TraceSetting(self, request: pb.TraceSettingRequest, context: Context) -> pb.TraceSettingResponse:
        """Triton's trace extension: a request without settings reads them (model_name "" = the global ones), one
        with settings changes them (admin scope: auth.py decides per request) and answers them after."""
        model = request.model_name
        if not request.settings:
            return _trace_response(self._service.trace_setting(model))
        actor = current_actor()
        with self._service.audited(TRACE_SETTING, actor, model):  # NOT_FOUND comes first, whatever the settings hold
            changes = {key: _setting_value(setting.value) for key, setting in request.settings.items()}
            return _trace_response(await self._service.update_trace_setting(model, changes, actor))

    @rpc
    async def LogSettings(self, request: Any, context: Context) -> Any:
        return await self._unsupported(context, "logging")
