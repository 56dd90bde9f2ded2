"""Kept-alive HTTP connections when the server stops (serve/http/connection.py).

uvicorn runs in the test's loop with serve's protocol, and its shutdown is started directly, as
serve's does at SIGTERM: a connection between two requests is given the next one, answered with
``Connection: close``, and one that stays idle is closed a moment later.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Iterator

import uvicorn
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from serve.http.connection import IDLE_DRAIN_S, HeaderLimits, limited_protocol

REQUEST = b"GET /hello HTTP/1.1\r\nHost: test\r\n\r\n"


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:  # the test's process keeps its own handlers
        yield


async def _hello(_: object) -> PlainTextResponse:
    return PlainTextResponse("hello")


@contextlib.asynccontextmanager
async def _running() -> AsyncIterator[tuple[_Server, int]]:
    sock = socket.create_server(("127.0.0.1", 0))
    config = uvicorn.Config(
        Starlette(routes=[Route("/hello", _hello)]),
        loop="none",
        lifespan="off",
        log_config=None,
        access_log=False,
        http=limited_protocol(HeaderLimits(8192, 100, 5.0)),
    )
    server = _Server(config)
    task = asyncio.ensure_future(server.serve(sockets=[sock]))
    while not server.started:
        assert not task.done(), "uvicorn did not start"
        await asyncio.sleep(0.01)
    try:
        yield server, sock.getsockname()[1]
    finally:
        server.should_exit = True
        await task
        sock.close()


async def _response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    status_line, *lines = head.decode("latin-1").split("\r\n")[:-2]
    headers = {name.lower(): value.strip() for name, value in (line.split(":", 1) for line in lines)}
    body = await reader.readexactly(int(headers["content-length"]))
    return int(status_line.split()[1]), headers, body


async def test_a_request_on_its_way_as_the_server_stops_is_answered_with_connection_close() -> None:
    async with _running() as (server, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(REQUEST)
        assert (await _response(reader))[0] == 200  # the connection is kept alive, idle
        stopping = asyncio.ensure_future(server.shutdown())
        await asyncio.sleep(0)  # the shutdown has reached the connection; the next request arrives now
        writer.write(REQUEST)
        status, headers, body = await _response(reader)
        assert (status, body, headers.get("connection")) == (200, b"hello", "close")
        assert await asyncio.wait_for(reader.read(), 5) == b""  # then closed, by the server
        await stopping
        writer.close()


async def test_an_idle_kept_alive_connection_is_closed_once_no_request_came_when_the_server_stops() -> None:
    async with _running() as (server, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(REQUEST)
        await _response(reader)
        loop = asyncio.get_running_loop()
        began = loop.time()
        stopping = asyncio.ensure_future(server.shutdown())
        assert await asyncio.wait_for(reader.read(), IDLE_DRAIN_S + 5) == b""
        assert loop.time() - began >= IDLE_DRAIN_S * 0.9  # not at once: a request may have been on its way
        await stopping
        writer.close()
