"""In a worker: answers the ModelInfer calls that the front end hands over on a Unix socket.

Each call is checked (bearer token, when inference is protected), decoded, run through the InferenceService and
encoded exactly as the grpc.aio servicer does it (serve/grpc/service.py), and every failure becomes the status
that servicer would send (serve/grpc/errors.py). A cancelled call (the client went away, or its deadline passed)
has its coroutine cancelled, as grpc.aio does, so the batcher's cancellation guarantees hold unchanged.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import cast

import grpc
from google.protobuf.message import DecodeError

from serve.codecs import grpc_codec
from serve.core import InferenceService
from serve.core.request_ids import HEADER, is_header_value
from serve.grpc.errors import code_name_of, status_of
from serve.grpc.handoff.frames import Answer, Call, Cancel, FrameError, FrameReader, encode_answer, status_number
from serve.protocol import grpc_service_pb2 as pb
from serve.security.tokens import TokenStore
from serve.types import InferRequest

log = logging.getLogger("serve.grpc")

OK = 0


def _decoded(message: pb.ModelInferRequest, request_id: str) -> InferRequest:
    request = grpc_codec.decode_infer_request(message)
    if request_id:  # the only metadata the front end hands over besides the token
        request.header = {HEADER: request_id}.get
    return request


def _trace_headers(trace: str) -> Callable[[str], str | None]:
    """The call's traceparent and tracestate (frames.Call.trace) as the tracer reads metadata."""
    traceparent, _, tracestate = trace.partition("\n")
    return {"traceparent": traceparent or None, "tracestate": tracestate or None}.get


class HandoffListener:
    """Listens on ``path`` for the front end's connection (it reconnects after a restart of either side)."""

    def __init__(
        self,
        service: InferenceService,
        path: Path,
        *,
        max_message_bytes: int,
        tokens: TokenStore | None = None,
        protect_inference: bool = False,
    ) -> None:
        self.service = service
        self.path = path
        self.max_frame_bytes = max_message_bytes + 4096  # the message, the token and the frame's own fields
        self.tokens = tokens if protect_inference else None
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.path.unlink(missing_ok=True)
        self._server = await loop.create_unix_server(lambda: _Link(self), str(self.path))

    async def stop(self) -> None:
        """Take no new connection; let every call that was handed over be answered, then close."""
        if self._server is not None:
            self._server.close()
        pending = [task for link in self._links for task in link.tasks.values()]
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        for link in list(self._links):
            link.close()
        self.path.unlink(missing_ok=True)

    def refusal(self, token: str) -> tuple[int, str] | None:
        """UNAUTHENTICATED, with the message the grpc.aio interceptor sends, when the call needs a token."""
        if self.tokens is None or self.tokens.identify(token or None) is not None:
            return None
        why = "the bearer token is not valid" if token else "no bearer token was sent"
        needs = "this method needs 'authorization: Bearer <token>' metadata with a token of scope inference"
        return status_number(grpc.StatusCode.UNAUTHENTICATED), f"{why}: {needs}"


class _Link(asyncio.Protocol):
    """One connection from the front end: its calls in flight, by call id."""

    def __init__(self, listener: HandoffListener) -> None:
        self.listener = listener
        self.reader = FrameReader(listener.max_frame_bytes)
        self.tasks: dict[int, asyncio.Task[None]] = {}
        self.transport: asyncio.Transport | None = None
        # Answers that finish in one turn of the loop go out in one write (one system call, not one each).
        self._unsent: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # a stream transport (uvloop's is no subclass)
        self.listener._links.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        # The front end went away: nobody is left to answer; the calls' clients saw their connection end.
        self.listener._links.discard(self)
        self.transport = None
        for task in self.tasks.values():
            task.cancel()

    def data_received(self, data: bytes) -> None:
        try:
            frames = self.reader.feed(data)
        except FrameError as exc:
            log.error("the gRPC front end sent a malformed hand-off frame (%s); dropping its connection", exc)
            self.close()
            return
        for frame in frames:
            if isinstance(frame, Call):
                task = asyncio.ensure_future(self._answer(frame))
                self.tasks[frame.call_id] = task
                task.add_done_callback(functools.partial(self._forget, frame.call_id))
            elif isinstance(frame, Cancel):
                cancelled = self.tasks.get(frame.call_id)
                if cancelled is not None:
                    cancelled.cancel()
            elif isinstance(frame, Answer):
                log.error("the gRPC front end sent an answer frame; dropping its connection")
                self.close()
                return

    def _forget(self, call_id: int, _: asyncio.Task[None]) -> None:
        self.tasks.pop(call_id, None)

    async def _answer(self, call: Call) -> None:
        request_id = ""
        try:
            status, body, request_id = await self._run(call)
        except Exception as exc:  # every call gets an answer, whatever went wrong
            number, message = status_of(exc, "ModelInfer")
            status, body = status_number(number), message.encode()
        if self.transport is None:
            return
        if not self._unsent:
            asyncio.get_running_loop().call_soon(self._flush)
        self._unsent.append(encode_answer(call.call_id, status, body, request_id))

    def _flush(self) -> None:
        unsent, self._unsent = self._unsent, []
        if self.transport is not None:
            self.transport.write(b"".join(unsent))

    async def _run(self, call: Call) -> tuple[int, bytes, str]:
        """The answer's status, its body, and the id the response carries ("" for a failure)."""
        refusal = self.listener.refusal(call.token)
        if refusal is not None:
            return refusal[0], refusal[1].encode(), ""
        try:
            request = pb.ModelInferRequest.FromString(call.payload)
        except DecodeError as exc:
            message = f"the request is not a valid inference.ModelInferRequest message: {exc}"
            return status_number(grpc.StatusCode.INVALID_ARGUMENT), message.encode(), ""
        service = self.listener.service
        span = None
        if service.tracer is not None:
            span = service.tracer.grpc_request(
                request.model_name, "ModelInfer", _trace_headers(call.trace), time.perf_counter_ns()
            )
        infer = service.infer_decoding(
            request.model_name, request.model_version, lambda _: _decoded(request, call.request_id), "grpc", span
        )
        try:
            if not call.deadline:
                response = await infer
            else:
                try:
                    async with asyncio.timeout(call.deadline - time.monotonic()):
                        response = await infer
                except TimeoutError:
                    if span is not None:
                        span.end_grpc("DEADLINE_EXCEEDED")
                    return status_number(grpc.StatusCode.DEADLINE_EXCEEDED), b"Deadline Exceeded", ""
        except BaseException as exc:
            if span is not None:
                span.end_grpc(code_name_of(exc), exc)
            raise
        request_id = response.id if is_header_value(response.id) else ""
        answer = grpc_codec.encode_infer_response(response).SerializeToString()
        if span is not None:
            span.end_grpc("OK")
        return OK, answer, request_id

    def close(self) -> None:
        if self.transport is not None:
            if self._unsent:
                self._flush()
            self.transport.close()
