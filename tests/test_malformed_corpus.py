"""A corpus of malformed requests against a real server: every one refused with its documented status.

Over HTTP JSON, HTTP binary, the HTTP socket path (headers, encodings, framing) and gRPC
(tests/fixtures/corpus.py): no 5xx and no INTERNAL or UNKNOWN, and the server is live on both
protocols after each.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from serve.protocol import grpc_service_pb2 as pb
from serve.protocol import grpc_service_pb2_grpc as pb_grpc
from tests.fixtures.corpus import CORPUS, LIMIT, SERVER_ARGS, Malformed, Target
from tests.fixtures.local_servers import ThreadServer, serving_in_thread
from tests.fixtures.oversize import grpc_channel


@pytest.fixture(scope="module")
def server(demo_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadServer]:
    with serving_in_thread(demo_repository, tmp_path_factory.mktemp("corpus"), *SERVER_ARGS) as running:
        yield running


@pytest.fixture(scope="module")
def target(server: ThreadServer) -> Iterator[Target]:
    with grpc_channel(server.grpc_url, LIMIT) as channel:
        yield Target(server.http_port, pb_grpc.GRPCInferenceServiceStub(channel), channel)


def test_the_corpus_holds_at_least_80_requests_of_at_least_20_kinds() -> None:
    assert len(CORPUS) >= 80
    assert len({case.kind for case in CORPUS}) >= 20
    assert {case.protocol for case in CORPUS} == {"json", "binary", "http", "grpc"}
    assert len({case.id for case in CORPUS}) == len(CORPUS)


@pytest.mark.parametrize("case", CORPUS, ids=[case.id for case in CORPUS])
def test_a_malformed_request_is_refused_with_its_status_and_the_server_lives(
    server: ThreadServer, target: Target, case: Malformed
) -> None:
    assert case.send(target) == case.expected
    with urllib.request.urlopen(f"{server.base}/v2/health/live", timeout=10) as response:
        assert response.status == 200
    assert target.grpc.ServerLive(pb.ServerLiveRequest(), timeout=10).live


def test_no_malformed_request_left_a_traceback_in_the_log(server: ThreadServer, target: Target) -> None:
    for case in CORPUS:
        case.send(target)
    log = server.log()
    assert "Traceback" not in log and "internal error" not in log
    with pytest.raises(grpc.RpcError):  # and the log is the one being written
        target.grpc.ModelInfer(pb.ModelInferRequest(model_name="nope"), timeout=10)
