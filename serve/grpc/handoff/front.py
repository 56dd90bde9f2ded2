"""The front end: terminates HTTP/2 and gRPC once, on the server's gRPC port, and hands every ModelInfer call to
the worker with the fewest calls outstanding, over that worker's Unix socket (frames.py).

pygrpc-native's NativeGrpcFront does HTTP/2 and gRPC on Rust threads and hands calls over in bursts; a burst's
calls for one worker go out in one write, and a thread per worker hands its answers back. Every other method
(ModelStreamInfer, health, reflection, metadata, the repository and statistics extensions) goes to a worker's
grpc.aio server on a Unix socket (the fallback), unchanged. A worker that stops has its outstanding calls
answered UNAVAILABLE, and is used again once it is back; if none is running, a call is answered UNAVAILABLE.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import grpc

from serve.core.request_ids import HEADER, MAX_LENGTH
from serve.grpc.handoff.frames import Answer, Frame, FrameError, FrameReader, encode_call, encode_cancel, status_number
from serve.security.tokens import bearer_token

# What NativeGrpcFront's call details hold: (metadata, peer, seconds left before the deadline or None).
CallDetails = tuple[tuple[tuple[str, str | bytes], ...], str, float | None]

log = logging.getLogger("serve.grpc")

HANDED_OFF = "/inference.GRPCInferenceService/ModelInfer"
_RECONNECT_S = 0.05
_BURST = 256  # calls taken from the front end at once


UNAVAILABLE = status_number(grpc.StatusCode.UNAVAILABLE)
RESOURCE_EXHAUSTED = status_number(grpc.StatusCode.RESOURCE_EXHAUSTED)


class _Worker:
    """The connection to one worker's hand-off socket, and the calls it has not answered yet."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock: socket.socket | None = None
        self.outstanding: set[int] = set()

    def connect(self) -> bool:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(str(self.path))
        except OSError:
            sock.close()
            return False
        self.sock = sock
        return True


class HandoffFront:
    def __init__(
        self,
        address: str,
        worker_sockets: Sequence[Path],
        *,
        fallback_socket: Path | None,
        max_message_bytes: int,
        reuse_port: bool = False,
        io_threads: int = 2,
    ) -> None:
        from pygrpc_native import NativeGrpcFront  # the serve[grpc-native] extra, checked by the settings

        self._front = NativeGrpcFront(
            address,
            [(HANDED_OFF, False)],
            io_threads=io_threads,
            call_details=True,
            keepalive_permit_without_calls=True,
            reuse_port=reuse_port,
        )
        if fallback_socket is not None:
            self._front.set_fallback(str(fallback_socket))
        self.port: int = self._front.bound_port
        self._workers = [_Worker(path) for path in worker_sockets]
        self._max_message_bytes = max_message_bytes
        self._max_frame_bytes = max_message_bytes + 4096
        self._lock = threading.Lock()  # the call map and each worker's outstanding set
        self._calls: dict[int, _Worker] = {}
        self._stopping = False
        self._closed = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for worker in self._workers:
            thread = threading.Thread(target=self._read_answers, args=(worker,), name="serve-handoff-answers")
            self._threads.append(thread)
        self._threads.append(threading.Thread(target=self._hand_off, name="serve-handoff-calls"))
        self._front.start()
        for thread in self._threads:
            thread.start()

    def outstanding(self) -> int:
        with self._lock:
            return len(self._calls)

    def stop(self, grace_s: float) -> None:
        """Refuse new calls (UNAVAILABLE, "shutting down"), wait up to ``grace_s`` for every handed-over call's
        answer, then close the port. Blocks: call it from a thread."""
        self._stopping = True
        deadline = time.monotonic() + grace_s
        while self.outstanding() and time.monotonic() < deadline:
            time.sleep(0.01)
        self._front.close()
        self._closed.set()
        for worker in self._workers:
            if worker.sock is not None:
                worker.sock.shutdown(socket.SHUT_RDWR)
        for thread in self._threads:
            thread.join(5)

    # ---- calls, from the front end to the workers ----

    def _hand_off(self) -> None:
        front = self._front
        while (events := front.recv_batch_details(_BURST)) is not None:
            batches: dict[_Worker, list[bytes]] = {}
            refused: list[tuple[int, int, str]] = []
            with self._lock:
                for _kind, call_id, _method, payload, _key, details in events:
                    if payload is None:  # the client cancelled, or its deadline passed: nobody waits for an answer
                        worker = self._calls.pop(call_id, None)
                        if worker is not None:
                            worker.outstanding.discard(call_id)
                            batches.setdefault(worker, []).append(encode_cancel(call_id))
                        continue
                    why = self._refusal(payload)
                    worker = None if why else self._least_busy()
                    if worker is None:
                        status, message = why or (UNAVAILABLE, "no worker is running to take this call; retry")
                        refused.append((call_id, status, message))
                        continue
                    worker.outstanding.add(call_id)
                    self._calls[call_id] = worker
                    token, deadline, request_id, trace = _call_details(details)
                    batches.setdefault(worker, []).append(
                        encode_call(call_id, deadline, token, payload, request_id, trace)
                    )
            for call_id, status, message in refused:
                front.fail(call_id, status, message)
            for worker, frames in batches.items():
                self._send(worker, b"".join(frames))

    def _refusal(self, payload: bytes) -> tuple[int, str] | None:
        if self._stopping:
            return UNAVAILABLE, "the server is shutting down and takes no new requests; retry on another replica"
        if len(payload) > self._max_message_bytes:
            limit = self._max_message_bytes
            return RESOURCE_EXHAUSTED, f"Received message larger than max ({len(payload)} vs. {limit})"
        return None

    def _least_busy(self) -> _Worker | None:
        running = (worker for worker in self._workers if worker.sock is not None)
        return min(running, key=lambda worker: len(worker.outstanding), default=None)

    def _send(self, worker: _Worker, data: bytes) -> None:
        sock = worker.sock
        if sock is None:  # lost since the burst was split: its reader has answered its calls UNAVAILABLE
            return
        try:
            sock.sendall(data)
        except OSError:
            # The worker stopped: its reader answers every call it had (UNAVAILABLE) once it sees the end.
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    # ---- answers, from one worker back to the front end ----

    def _read_answers(self, worker: _Worker) -> None:
        while not self._closed.is_set():
            if worker.sock is None and not worker.connect():
                time.sleep(_RECONNECT_S)
                continue
            assert worker.sock is not None
            reader = FrameReader(self._max_frame_bytes)
            try:
                while data := worker.sock.recv(1 << 20):
                    self._answer(worker, reader.feed(data))
            except (OSError, FrameError) as exc:
                if not self._closed.is_set():
                    log.warning("the hand-off connection to worker %s broke: %s", worker.path.name, exc)
            self._lost(worker)

    def _answer(self, worker: _Worker, frames: list[Frame]) -> None:
        answers: list[Answer] = []
        with self._lock:
            for frame in frames:
                if isinstance(frame, Answer) and self._calls.pop(frame.call_id, None) is worker:
                    worker.outstanding.discard(frame.call_id)
                    answers.append(frame)
        for answer in answers:
            if answer.status == 0:
                # The id as trailing metadata, as the grpc.aio servicer sends it (serve/grpc/service.py).
                trailing = [(HEADER, answer.request_id)] if answer.request_id else None
                self._front.respond(answer.call_id, answer.body, trailing_metadata=trailing)
            else:
                self._front.fail(answer.call_id, answer.status, answer.body.decode(errors="replace"))

    def _lost(self, worker: _Worker) -> None:
        with self._lock:
            sock, worker.sock = worker.sock, None
            lost = list(worker.outstanding)
            worker.outstanding.clear()
            for call_id in lost:
                self._calls.pop(call_id, None)
        if sock is not None:
            sock.close()
        for call_id in lost:
            self._front.fail(call_id, UNAVAILABLE, "the worker serving this call stopped before answering; retry")


_MAX_TRACEPARENT = 55 + 64  # version 00 is 55; a later version may add fields
_MAX_TRACESTATE = 512  # W3C: 32 list members of at most 256 characters may be cut to 512


def _call_details(details: CallDetails | None) -> tuple[str, float, str, str]:
    """The bearer token, the absolute deadline, the x-request-id and the W3C trace context (traceparent, and
    tracestate after a newline) of a call, from the front end's call details. An id longer than the worker accepts is
    cut to one character more than that: it is refused there all the same, and the frame's u16 length holds it; a
    trace context longer than W3C allows (55 + 512 characters) is dropped, as W3C says a receiver may."""
    if details is None:
        return "", 0.0, "", ""
    metadata, _peer, remaining = details
    token = request_id = traceparent = tracestate = ""
    for key, value in metadata:
        if not isinstance(value, str):
            continue
        if key == "authorization":
            token = bearer_token(value) or ""
        elif key == HEADER:
            request_id = value[: MAX_LENGTH + 1]
        elif key == "traceparent" and len(value) <= _MAX_TRACEPARENT:
            traceparent = value
        elif key == "tracestate" and len(value) <= _MAX_TRACESTATE:
            tracestate = value
    trace = f"{traceparent}\n{tracestate}" if traceparent and tracestate else traceparent
    return token, (time.monotonic() + remaining) if remaining is not None else 0.0, request_id, trace
