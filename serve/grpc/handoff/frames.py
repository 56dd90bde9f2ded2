"""The frames between the front end and a worker, both ways on one Unix socket.

Every frame: u32 length of what follows it, u8 kind, u64 call id, then by kind

* CALL (front → worker): f64 deadline on the machine's monotonic clock (0: none; CLOCK_MONOTONIC is one clock
  for every process of the machine), u16 length of the bearer token sent, u16 length of the x-request-id metadata
  value sent, the token and the id (each empty: none; UTF-8), then the ModelInferRequest as the client sent it;
* CANCEL (front → worker): nothing; the client cancelled, or its deadline passed;
* ANSWER (worker → front): u8 gRPC status code (0 OK), u16 length and the request id answered (UTF-8; empty:
  none), then the ModelInferResponse, or the error message.

Little-endian throughout. A peer that sends anything else is a bug in serve: ``FrameError``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

import grpc

_HEAD = struct.Struct("<IBQ")  # length of what follows the length, kind, call id
_CALL = struct.Struct("<dHHH")  # deadline, token length, request id length, trace context length
_STATUS = struct.Struct("<BH")  # status, request id length
_AFTER_LENGTH = _HEAD.size - 4  # the kind and call id count in the length


class Kind(IntEnum):
    CALL = 1
    CANCEL = 2
    ANSWER = 3


def status_number(status: grpc.StatusCode) -> int:
    """The number an ANSWER frame (and NativeGrpcFront.fail) carries for ``status``."""
    number: int = status.value[0]
    return number


class FrameError(Exception):
    """Bytes on the hand-off socket that are not a frame."""


@dataclass(frozen=True, slots=True)
class Call:
    call_id: int
    deadline: float  # time.monotonic() at which the client stops waiting; 0.0 for none
    token: str  # the bearer token the client sent, "" for none
    payload: bytes  # the ModelInferRequest
    request_id: str = ""  # the x-request-id metadata value the client sent, "" for none
    # The W3C traceparent the client sent, and its tracestate after a newline (neither holds one), "" for none.
    trace: str = ""


@dataclass(frozen=True, slots=True)
class Cancel:
    call_id: int


@dataclass(frozen=True, slots=True)
class Answer:
    call_id: int
    status: int  # a grpc.StatusCode's number; 0 is OK
    body: bytes  # the ModelInferResponse when OK, else the UTF-8 error message
    request_id: str = ""  # the id the response carries, for the x-request-id trailing metadata; "" for none


Frame = Call | Cancel | Answer


def encode_call(
    call_id: int, deadline: float, token: str, payload: bytes, request_id: str = "", trace: str = ""
) -> bytes:
    token_bytes = token.encode()
    id_bytes = request_id.encode()
    trace_bytes = trace.encode()
    length = _AFTER_LENGTH + _CALL.size + len(token_bytes) + len(id_bytes) + len(trace_bytes) + len(payload)
    return b"".join(
        (
            _HEAD.pack(length, Kind.CALL, call_id),
            _CALL.pack(deadline, len(token_bytes), len(id_bytes), len(trace_bytes)),
            token_bytes,
            id_bytes,
            trace_bytes,
            payload,
        )
    )


def encode_cancel(call_id: int) -> bytes:
    return _HEAD.pack(_AFTER_LENGTH, Kind.CANCEL, call_id)


def encode_answer(call_id: int, status: int, body: bytes, request_id: str = "") -> bytes:
    id_bytes = request_id.encode()
    length = _AFTER_LENGTH + _STATUS.size + len(id_bytes) + len(body)
    return b"".join((_HEAD.pack(length, Kind.ANSWER, call_id), _STATUS.pack(status, len(id_bytes)), id_bytes, body))


class FrameReader:
    """Turns the bytes read from a socket, in whatever pieces they arrive, into frames."""

    def __init__(self, max_frame_bytes: int) -> None:
        self._buffer = bytearray()
        self._max = max_frame_bytes

    def feed(self, data: bytes) -> list[Frame]:
        buffer = self._buffer
        buffer += data
        frames: list[Frame] = []
        offset = 0
        while len(buffer) - offset >= _HEAD.size:
            length, kind, call_id = _HEAD.unpack_from(buffer, offset)
            if length > self._max or length < _AFTER_LENGTH:
                raise FrameError(f"a frame of {length} bytes (at most {self._max})")
            end = offset + 4 + length
            if len(buffer) < end:
                break
            frames.append(_decode(kind, call_id, bytes(buffer[offset + _HEAD.size : end])))
            offset = end
        del buffer[:offset]
        return frames


def _decode(kind: int, call_id: int, body: bytes) -> Frame:
    if kind == Kind.CALL:
        deadline, token_length, id_length, trace_length = _CALL.unpack_from(body)
        token_end = _CALL.size + token_length
        id_end = token_end + id_length
        trace_end = id_end + trace_length
        token, request_id = body[_CALL.size : token_end].decode(), body[token_end:id_end].decode()
        return Call(call_id, deadline, token, body[trace_end:], request_id, body[id_end:trace_end].decode())
    if kind == Kind.CANCEL:
        return Cancel(call_id)
    if kind == Kind.ANSWER:
        status, id_length = _STATUS.unpack_from(body)
        id_end = _STATUS.size + id_length
        return Answer(call_id, status, body[id_end:], body[_STATUS.size : id_end].decode())
    raise FrameError(f"a frame of unknown kind {kind}")
