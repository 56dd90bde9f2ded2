"""Refusing oversize requests does not leave the server bigger (README, "Memory").

A real server with --max-request-bytes 8 MiB, warmed with ordinary valid requests over both
protocols, is sent oversize requests of five kinds (a body declared over the limit, a chunked body
without a length, gzip and deflate bombs, a gRPC message over the limit): each is refused with 413 /
RESOURCE_EXHAUSTED, and a few seconds later the server's resident memory is within twice the limit
of what it was after the warm-up, however many were sent. The warm-up never includes the oversize
requests themselves: that would count what they leave behind as warm-up.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from serve.memory import TRIM_INTERVAL_S, return_freed_memory
from serve.protocol import grpc_service_pb2_grpc as pb_grpc
from tests.fixtures.oversize import REFUSED_WITH, grpc_channel, grpc_message_over, senders, valid_senders
from tests.fixtures.process_stats import rss_bytes
from tests.fixtures.servers import RunningServer, serving

LIMIT = 8 * 2**20
WARM_UP = 100  # valid requests per protocol
# What a refusal frees goes back to the OS within a trim interval (serve/memory.py); two, to be sure.
SETTLE_S = 2 * TRIM_INTERVAL_S + 0.5


@pytest.fixture
def server(demo_repository: Path, tmp_path: Path) -> Iterator[RunningServer]:
    with serving(demo_repository, tmp_path, "--max-request-bytes", str(LIMIT)) as running:
        yield running


@pytest.fixture
def channel(server: RunningServer) -> Iterator[grpc.Channel]:
    with grpc_channel(server.grpc_url, LIMIT) as opened:
        yield opened


@pytest.fixture
def warmed(server: RunningServer, channel: grpc.Channel) -> Callable[[], int]:
    """Warm the server with valid requests only; returns how much its RSS has grown since then."""
    for protocol, send in valid_senders(server.http_port, pb_grpc.GRPCInferenceServiceStub(channel)).items():
        for _ in range(WARM_UP):
            assert send() in (200, "OK"), protocol
    time.sleep(SETTLE_S)
    before = rss_bytes(server.process.pid)

    def grown() -> int:
        time.sleep(SETTLE_S)
        return rss_bytes(server.process.pid) - before

    return grown


def test_refused_oversize_requests_of_every_kind_grow_rss_by_less_than_twice_the_limit(
    server: RunningServer, channel: grpc.Channel, warmed: Callable[[], int]
) -> None:
    send = senders(server.http_port, pb_grpc.GRPCInferenceServiceStub(channel), LIMIT)
    answers = {kind: [request() for _ in range(10)] for kind, request in send.items()}
    grown = warmed()
    assert answers == {kind: [REFUSED_WITH[kind]] * 10 for kind in send}
    assert grown < 2 * LIMIT, f"RSS grew by {grown / 2**20:.1f} MiB"


def test_rss_growth_from_refused_grpc_messages_does_not_scale_with_their_count(
    channel: grpc.Channel, warmed: Callable[[], int]
) -> None:
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    answers = [grpc_message_over(stub, LIMIT) for _ in range(10)]
    after_10 = warmed()
    answers += [grpc_message_over(stub, LIMIT) for _ in range(50)]
    after_60 = warmed()
    assert answers == ["RESOURCE_EXHAUSTED"] * 60
    growth = f"RSS grew by {after_10 / 2**20:.1f} MiB after 10, {after_60 / 2**20:.1f} MiB after 60"
    assert after_10 < 2 * LIMIT, growth
    assert after_60 < 2 * LIMIT, growth


def test_malloc_thresholds_are_set_exactly_where_the_c_library_is_glibc() -> None:
    assert return_freed_memory() is (platform.libc_ver()[0] == "glibc")
