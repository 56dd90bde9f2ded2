"""Refusing oversize requests does not leave the server bigger (README, "Memory").

A real server with --max-request-bytes 8 MiB is sent 100 oversize requests of five kinds (a body
declared over the limit, a chunked body without a length, gzip and deflate bombs, a gRPC message
over the limit): each is refused with 413 / RESOURCE_EXHAUSTED, and the server's resident memory
afterwards is within twice the limit of what it was after a warm-up round of the same 100.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from serve.memory import return_freed_memory
from serve.protocol import grpc_service_pb2_grpc as pb_grpc
from tests.fixtures.oversize import REFUSED_WITH, grpc_channel, senders
from tests.fixtures.process_stats import rss_bytes
from tests.fixtures.servers import RunningServer, serving

LIMIT = 8 * 2**20
ROUNDS = 20  # x 5 kinds = 100 requests


@pytest.fixture(scope="module")
def server(demo_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with serving(demo_repository, tmp_path_factory.mktemp("memory"), "--max-request-bytes", str(LIMIT)) as running:
        yield running


def test_100_refused_oversize_requests_grow_rss_by_less_than_twice_the_limit(server: RunningServer) -> None:
    with grpc_channel(server.grpc_url, LIMIT) as channel:
        send = senders(server.http_port, pb_grpc.GRPCInferenceServiceStub(channel), LIMIT)
        # Warm-up: a round like the measured one. Its first-time allocations (thread heaps, buffers, the
        # allocator's high-water mark for this traffic on this machine) are not growth; what the second
        # round adds is.
        for _ in range(ROUNDS):
            for kind, request in send.items():
                assert request() == REFUSED_WITH[kind], kind
        time.sleep(0.5)
        before = rss_bytes(server.process.pid)
        answers = {kind: [request() for _ in range(ROUNDS)] for kind, request in send.items()}
        time.sleep(0.5)
        grown = rss_bytes(server.process.pid) - before
    assert answers == {kind: [REFUSED_WITH[kind]] * ROUNDS for kind in send}
    assert grown < 2 * LIMIT, f"RSS grew by {grown / 2**20:.1f} MiB"


def test_malloc_thresholds_are_set_exactly_where_the_c_library_is_glibc() -> None:
    assert return_freed_memory() is (platform.libc_ver()[0] == "glibc")
