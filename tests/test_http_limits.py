"""HTTP header limits and the header deadline, over real sockets (serve/http/connection.py).

The server runs with small limits (--max-header-bytes 8192 --max-headers 20 --header-timeout-s 1):
a request over them is answered 431 (or 408 when its head is not in on time) and its connection
closed; requests within them, and kept-alive connections between requests, are served as usual.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.local_servers import ThreadServer, serving_in_thread
from tests.fixtures.raw_http import closed_by_peer, connect, read_response, request, send_until_answered

MAX_HEADER_BYTES = 8192
MAX_HEADERS = 20
LIVE = "/v2/health/live"


@pytest.fixture(scope="module")
def server(demo_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadServer]:
    with serving_in_thread(
        demo_repository,
        tmp_path_factory.mktemp("limits"),
        "--max-header-bytes",
        str(MAX_HEADER_BYTES),
        "--max-headers",
        str(MAX_HEADERS),
        "--header-timeout-s",
        "1",
    ) as running:
        yield running


def _answer(server: ThreadServer, raw: bytes) -> tuple[int, str, bool]:
    """Status, error message and whether the server then closed the connection."""
    with connect(server.http_port) as sock:
        sock.sendall(raw)
        response = read_response(sock)
        error = json.loads(response.body).get("error", "") if response.status != 200 else ""
        return response.status, error, response.status != 200 and closed_by_peer(sock)


def test_a_request_within_the_limits_is_served(server: ThreadServer) -> None:
    headers = {f"X-Field-{i}": "v" * 300 for i in range(MAX_HEADERS - 1)}  # Host is the 20th
    assert _answer(server, request(LIVE, headers=headers)) == (200, "", False)


def test_headers_over_the_byte_limit_are_431_and_the_connection_closed(server: ThreadServer) -> None:
    status, error, closed = _answer(server, request(LIVE, headers={"X-Big": "a" * MAX_HEADER_BYTES}))
    assert (status, closed) == (431, True)
    assert error == f"request line and headers are over the {MAX_HEADER_BYTES}-byte limit"


def test_more_header_fields_than_the_limit_are_431(server: ThreadServer) -> None:
    status, error, closed = _answer(server, request(LIVE, headers={f"X-{i}": "1" for i in range(MAX_HEADERS)}))
    assert (status, closed) == (431, True)
    assert error == f"request has more than {MAX_HEADERS} header fields"


def test_a_request_line_over_the_byte_limit_is_431(server: ThreadServer) -> None:
    status, _, closed = _answer(server, request("/v2/models/" + "m" * MAX_HEADER_BYTES))
    assert (status, closed) == (431, True)


def test_a_10_mb_header_is_refused_while_it_is_still_arriving(server: ThreadServer) -> None:
    with connect(server.http_port) as sock:
        head = b"GET /v2/health/live HTTP/1.1\r\nHost: serve.test\r\nX-Big: "
        _, response = send_until_answered(sock, head, b"a" * 65536, 10 * 2**20)
        assert response.status == 431
        assert closed_by_peer(sock)
    assert _answer(server, request(LIVE)) == (200, "", False)


def test_a_10_mb_accept_encoding_is_refused_before_the_app_parses_it(server: ThreadServer) -> None:
    status, _, _ = _answer(server, request(LIVE, headers={"Accept-Encoding": "x, " * (10 * 2**20 // 3)}))
    assert status == 431


def test_an_accept_encoding_just_within_the_limit_is_served(server: ThreadServer) -> None:
    value = "x;q=0.5, " * ((MAX_HEADER_BYTES - 200) // 9) + "gzip"
    assert _answer(server, request(LIVE, headers={"Accept-Encoding": value}))[0] == 200


def test_headers_not_complete_in_time_are_408_and_the_connection_closed(server: ThreadServer) -> None:
    with connect(server.http_port) as sock:
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: serve.test\r\nX-Slow: ")  # and never the rest
        response = read_response(sock)
        assert response.status == 408
        assert "not received within 1 s" in json.loads(response.body)["error"]
        assert closed_by_peer(sock)


def test_a_connection_that_sends_nothing_is_closed_with_408(server: ThreadServer) -> None:
    with connect(server.http_port) as sock:
        assert read_response(sock).status == 408


def test_a_kept_alive_connection_may_wait_longer_than_the_header_timeout_between_requests(
    server: ThreadServer,
) -> None:
    # Between requests uvicorn's keep-alive timeout (5 s) applies, not the header deadline (1 s).
    with connect(server.http_port) as sock:
        sock.sendall(request(LIVE))
        assert read_response(sock).status == 200
        time.sleep(1.5)
        sock.sendall(request(LIVE))
        assert read_response(sock).status == 200


def test_pipelined_requests_within_the_limits_are_all_answered(server: ThreadServer) -> None:
    with connect(server.http_port) as sock:
        sock.sendall(request(LIVE) * 5)
        pending = bytearray()
        assert [read_response(sock, pending).status for _ in range(5)] == [200] * 5
