"""uvicorn inside the caller's event loop, on a socket the caller bound: the one way serve runs an
HTTP server (the main one, --metrics-port's, the supervisor's)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator
from typing import Any

import uvicorn
from starlette.types import ASGIApp


class InLoopUvicorn(uvicorn.Server):
    # The caller owns the signals: uvicorn would otherwise install its own and re-raise them on exit.
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            await super().startup(sockets)
        except SystemExit:
            # uvicorn logs why and calls sys.exit(), which would skip our shutdown; report it instead.
            raise OSError("the HTTP server failed to start") from None


def serve_uvicorn(app: ASGIApp, sock: socket.socket, **options: Any) -> tuple[InLoopUvicorn, asyncio.Task[None]]:
    """Start serving ``app`` on ``sock`` in the running loop; ``options`` are uvicorn.Config's."""
    host, port = sock.getsockname()[:2]
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="none",  # ours, already running
        lifespan="off",
        access_log=False,
        # No proxy-header rewriting or Server header: nothing here reads them, and the hot path
        # pays for both on every request.
        proxy_headers=False,
        server_header=False,
        log_config=None,
        **options,
    )
    server = InLoopUvicorn(config)
    return server, asyncio.ensure_future(server.serve(sockets=[sock]))


async def start_uvicorn(
    app: ASGIApp, sock: socket.socket, *, what: str, **options: Any
) -> tuple[InLoopUvicorn, asyncio.Task[None]]:
    """serve_uvicorn, returning once it listens; OSError naming ``what`` and the address if it cannot."""
    server, task = serve_uvicorn(app, sock, **options)
    while not server.started:
        if task.done():
            # uvicorn logged why; InLoopUvicorn.startup turned its sys.exit() into an OSError.
            with contextlib.suppress(BaseException):
                task.result()
            host, port = sock.getsockname()[:2]
            raise OSError(f"{what} could not start on {host}:{port}")
        await asyncio.sleep(0.01)
    return server, task
