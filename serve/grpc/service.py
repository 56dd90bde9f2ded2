"""inference.GRPCInferenceService on grpc.aio: a thin translation onto InferenceService."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import json_format

from serve.codecs import grpc_codec
from serve.core import InferenceService
from serve.errors import InvalidInput, ServeError, Unsupported
from serve.protocol import grpc_service_pb2 as pb
from serve.protocol import grpc_service_pb2_grpc as pb_grpc
from serve.protocol import model_config_pb2 as mc

T = TypeVar("T")

log = logging.getLogger(__name__)


async def _call(context: grpc.aio.ServicerContext, work: Callable[[], Awaitable[T]]) -> T:
    try:
        return await work()
    except ServeError as exc:
        await context.abort(getattr(grpc.StatusCode, exc.grpc_code), exc.message)
        raise  # unreachable: abort raises
    except Exception as exc:
        # A bug answers INTERNAL with what went wrong, not grpcio's bare UNKNOWN.
        log.exception("gRPC call failed")
        await context.abort(grpc.StatusCode.INTERNAL, _internal_message(exc))
        raise  # unreachable: abort raises


def _internal_message(exc: Exception) -> str:
    return f"internal error: {type(exc).__name__}: {exc}"


def _repository_parameters(params: Any) -> tuple[mc.ModelConfig | None, dict[str, bytes]]:
    from serve.repository.model_config import parse_config_json

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


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, service: InferenceService) -> None:
        self._service = service

    async def ServerLive(self, request: pb.ServerLiveRequest, context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=self._service.server_live())

    async def ServerReady(self, request: pb.ServerReadyRequest, context: Any) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self._service.server_ready())

    async def ModelReady(self, request: pb.ModelReadyRequest, context: Any) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=self._service.model_ready(request.name, request.version))

    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: Any) -> pb.ServerMetadataResponse:
        meta = self._service.server_metadata()
        return pb.ServerMetadataResponse(name=meta["name"], version=meta["version"], extensions=meta["extensions"])

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Any) -> pb.ModelMetadataResponse:
        async def work() -> pb.ModelMetadataResponse:
            meta = self._service.model_metadata(request.name, request.version)
            return pb.ModelMetadataResponse(
                name=meta["name"],
                versions=meta["versions"],
                platform=meta["platform"],
                inputs=[pb.ModelMetadataResponse.TensorMetadata(**t) for t in meta["inputs"]],
                outputs=[pb.ModelMetadataResponse.TensorMetadata(**t) for t in meta["outputs"]],
            )

        return await _call(context, work)

    async def ModelConfig(self, request: pb.ModelConfigRequest, context: Any) -> pb.ModelConfigResponse:
        async def work() -> pb.ModelConfigResponse:
            return pb.ModelConfigResponse(config=self._service.model_config(request.name, request.version))

        return await _call(context, work)

    async def ModelStatistics(self, request: pb.ModelStatisticsRequest, context: Any) -> pb.ModelStatisticsResponse:
        async def work() -> pb.ModelStatisticsResponse:
            stats = self._service.model_statistics(request.name, request.version)
            return json_format.ParseDict({"model_stats": stats}, pb.ModelStatisticsResponse())

        return await _call(context, work)

    async def ModelInfer(self, request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:
        async def work() -> pb.ModelInferResponse:
            decoded = grpc_codec.decode_infer_request(request)
            response = await self._service.infer(decoded, "grpc")
            return grpc_codec.encode_infer_response(response)

        return await _call(context, work)

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[pb.ModelInferRequest], context: Any
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        # Each request is answered on its own as soon as it completes; an error answers that
        # request with error_message and the stream goes on.
        answers: asyncio.Queue[pb.ModelStreamInferResponse | None] = asyncio.Queue()
        pending: set[asyncio.Task[None]] = set()

        async def answer(message: pb.ModelInferRequest) -> None:
            try:
                decoded = grpc_codec.decode_infer_request(message)
                response = await self._service.infer(decoded, "grpc")
                await answers.put(
                    pb.ModelStreamInferResponse(infer_response=grpc_codec.encode_infer_response(response))
                )
            except Exception as exc:
                # Every request gets an answer, even when a bug raised something other than a ServeError.
                if not isinstance(exc, ServeError):
                    log.exception("stream request failed")
                error = exc.message if isinstance(exc, ServeError) else _internal_message(exc)
                await answers.put(
                    pb.ModelStreamInferResponse(
                        error_message=error,
                        infer_response=pb.ModelInferResponse(
                            model_name=message.model_name, model_version=message.model_version, id=message.id
                        ),
                    )
                )

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

    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest, context: Any) -> pb.RepositoryIndexResponse:
        rows = self._service.repository_index(request.ready)
        return pb.RepositoryIndexResponse(models=[pb.RepositoryIndexResponse.ModelIndex(**r) for r in rows])

    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: Any
    ) -> pb.RepositoryModelLoadResponse:
        async def work() -> pb.RepositoryModelLoadResponse:
            config, files = _repository_parameters(request.parameters)
            await self._service.load_model(request.model_name, config, files or None)
            return pb.RepositoryModelLoadResponse()

        return await _call(context, work)

    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: Any
    ) -> pb.RepositoryModelUnloadResponse:
        async def work() -> pb.RepositoryModelUnloadResponse:
            await self._service.unload_model(request.model_name)
            return pb.RepositoryModelUnloadResponse()

        return await _call(context, work)

    async def _unsupported(self, context: Any, what: str) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, Unsupported(f"{what} is not supported").message)

    async def SystemSharedMemoryStatus(self, request: Any, context: Any) -> Any:
        return await self._unsupported(context, "system shared memory")

    async def SystemSharedMemoryRegister(self, request: Any, context: Any) -> Any:
        return await self._unsupported(context, "system shared memory")

    async def SystemSharedMemoryUnregister(self, request: Any, context: Any) -> Any:
        return await self._unsupported(context, "system shared memory")

    async def CudaSharedMemoryStatus(self, request: Any, context: Any) -> Any:
        return await self._unsupported(context, "CUDA shared memory")

    async def CudaSharedMemoryRegister(self, request: Any, context: Any) -> Any:
        return await self._unsupported(context, "CUDA shared memory")

    async def CudaSharedMemoryUnregister(self, request: Any, context: Any) -> Any:
        return await self._unsupported(context, "CUDA shared memory")

    async def TraceSetting(self, request: Any, context: Any) -> Any:
        return await self._unsupported(context, "trace settings")

    async def LogSettings(self, request: Any, context: Any) -> Any:
        return await self._unsupported(context, "log settings")
