"""The hand-off frames (serve/grpc/handoff/frames.py) read back as written, however the socket splits them."""

from __future__ import annotations

import pytest

from serve.grpc.handoff.frames import (
    Answer,
    Call,
    Cancel,
    FrameError,
    FrameReader,
    encode_answer,
    encode_call,
    encode_cancel,
)


def test_each_kind_reads_back_as_written() -> None:
    data = encode_call(7, 123.5, "tok", b"\x01\x02") + encode_cancel(8) + encode_answer(9, 5, b"no such model")

    frames = FrameReader(1 << 20).feed(data)

    assert frames == [Call(7, 123.5, "tok", b"\x01\x02"), Cancel(8), Answer(9, 5, b"no such model")]


def test_frames_split_anywhere_by_the_socket_read_back_whole() -> None:
    data = b"".join(encode_call(i, 0.0, "", bytes(range(i % 50))) for i in range(40))
    reader = FrameReader(1 << 20)

    frames = [frame for start in range(0, len(data), 7) for frame in reader.feed(data[start : start + 7])]

    assert frames == [Call(i, 0.0, "", bytes(range(i % 50))) for i in range(40)]


def test_a_frame_longer_than_the_limit_is_a_frame_error() -> None:
    with pytest.raises(FrameError, match="at most 100"):
        FrameReader(100).feed(encode_call(1, 0.0, "", b"x" * 200))


def test_a_frame_of_an_unknown_kind_is_a_frame_error() -> None:
    frame = bytearray(encode_cancel(1))
    frame[4] = 99

    with pytest.raises(FrameError, match="unknown kind 99"):
        FrameReader(100).feed(bytes(frame))


def test_a_call_frame_carries_the_request_id_and_the_trace_context() -> None:
    trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\nvendor=abc"
    (frame,) = FrameReader(1 << 16).feed(encode_call(3, 0.0, "tok", b"\x05", "order-1", trace))
    assert frame == Call(3, 0.0, "tok", b"\x05", "order-1", trace)
