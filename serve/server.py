"""Runs HTTP (uvicorn) and gRPC (grpc.aio) in one process and one event loop, over one
model repository, and shuts them down in a fixed order."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Iterator
from pathlib import Path

import uvicorn

from serve.core import InferenceService
from serve.grpc.server import create_grpc_server, set_serving
from serve.http.app import create_app
from serve.repository.repository import ModelRepository
from serve.settings import ServerSettings

log = logging.getLogger(__name__)


class _Uvicorn(uvicorn.Server):
    # We own the signals: uvicorn would otherwise install its own and re-raise them on exit.
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class Server:
    def __init__(self, settings: ServerSettings, repository_root: Path) -> None:
        self.settings = settings
        self.repository = ModelRepository(repository_root, settings)
        self.service = InferenceService(
            self.repository,
            server_name=settings.server_name,
            model_control_explicit=settings.model_control_mode == "explicit",
        )
        self._stop = asyncio.Event()
        self._http: _Uvicorn | None = None
        self._http_task: asyncio.Task[None] | None = None
        self._grpc = None
        self._health = None
        self.http_port = settings.http_port
        self.grpc_port = settings.grpc_port

    async def start(self) -> None:
        s = self.settings
        if s.model_control_mode == "explicit":
            await self.repository.load_all(s.load_models)
        else:
            await self.repository.load_all()
        app = create_app(self.service, max_request_bytes=s.max_request_bytes)
        self._grpc, self._health, self.grpc_port = create_grpc_server(
            self.service, address=f"{s.host}:{s.grpc_port}", max_message_bytes=s.max_request_bytes
        )
        await self._grpc.start()
        config = uvicorn.Config(
            app,
            host=s.host,
            port=s.http_port,
            loop="none",
            http="httptools",
            lifespan="off",
            access_log=False,
            log_config=None,
            timeout_graceful_shutdown=max(1, int(s.shutdown_grace_s)),
            backlog=4096,
        )
        self._http = _Uvicorn(config)
        self._http_task = asyncio.ensure_future(self._http.serve())
        while not self._http.started:
            if self._http_task.done():
                # uvicorn logs the bind error and exits its serve() with SystemExit.
                with contextlib.suppress(BaseException):
                    self._http_task.result()
                raise OSError(f"HTTP server could not listen on {s.host}:{s.http_port}")
            await asyncio.sleep(0.01)
        await set_serving(self._health, True)
        log.info(
            "serving %d model version(s): HTTP on %s:%d, gRPC on %s:%d",
            len(self.repository.loaded()), s.host, s.http_port, s.host, self.grpc_port,
        )

    def request_stop(self) -> None:
        self._stop.set()

    async def wait(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.request_stop)
        await self._stop.wait()

    async def stop(self) -> None:
        """Not ready, stop accepting, drain both protocols, close batchers, release sessions."""
        grace = self.settings.shutdown_grace_s
        self.service.shutting_down = True
        if self._health is not None:
            await set_serving(self._health, False)
        if self._http is not None:
            self._http.should_exit = True
        stops = []
        if self._grpc is not None:
            stops.append(self._grpc.stop(grace))
        if self._http_task is not None:
            stops.append(self._http_task)
        if stops:
            await asyncio.gather(*stops, return_exceptions=True)
        await self.repository.close()
        log.info("stopped")


async def run_server(settings: ServerSettings, repository_root: Path) -> None:
    server = Server(settings, repository_root)
    try:
        await server.start()
        await server.wait()
    finally:
        await server.stop()
