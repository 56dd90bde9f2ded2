"""The in-process server fixture (tests/fixtures/local_servers.py): the real Server on loopback
ports, in the test's loop or in a thread, addressed like a `serve run` process."""

from __future__ import annotations

import asyncio
import signal
import urllib.request
from pathlib import Path

import grpc

from serve.protocol import grpc_service_pb2 as pb
from serve.protocol import grpc_service_pb2_grpc as pb_grpc
from tests.fixtures.local_servers import serving_in_loop, serving_in_thread


async def test_a_server_in_the_tests_loop_answers_http_and_grpc_on_loopback_ports(
    demo_repository: Path, tmp_path: Path
) -> None:
    async with serving_in_loop(demo_repository, tmp_path) as server:
        reader, writer = await asyncio.open_connection(server.host, server.http_port)
        writer.write(b"GET /v2/health/ready HTTP/1.1\r\nHost: serve\r\nConnection: close\r\n\r\n")
        assert (await reader.read()).startswith(b"HTTP/1.1 200")
        writer.close()
        async with grpc.aio.insecure_channel(server.grpc_url) as channel:
            ready = await pb_grpc.GRPCInferenceServiceStub(channel).ServerReady(pb.ServerReadyRequest())
        assert ready.ready
        assert "serving" in server.log()


async def test_a_server_in_the_tests_loop_installs_no_signal_handler(demo_repository: Path, tmp_path: Path) -> None:
    before = signal.getsignal(signal.SIGTERM)
    async with serving_in_loop(demo_repository, tmp_path):
        assert signal.getsignal(signal.SIGTERM) == before
        assert not asyncio.get_running_loop().remove_signal_handler(signal.SIGTERM)


def test_a_server_in_a_thread_serves_blocking_clients(demo_repository: Path, tmp_path: Path) -> None:
    with serving_in_thread(demo_repository, tmp_path) as server:
        with urllib.request.urlopen(f"{server.base}/v2/health/live", timeout=5) as response:
            assert response.status == 200
        with grpc.insecure_channel(server.grpc_url) as channel:
            assert pb_grpc.GRPCInferenceServiceStub(channel).ServerLive(pb.ServerLiveRequest(), timeout=5).live
    assert server.stop() == 0
