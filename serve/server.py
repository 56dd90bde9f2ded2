"""Runs HTTP (uvicorn) and gRPC (grpc.aio) in one process and one event loop, over one
model repository, and shuts them down in a fixed order."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import grpc
import uvicorn
from grpc_health.v1.health import aio as health_aio
from prometheus_client import CollectorRegistry

from serve.core import InferenceService
from serve.errors import ModelNotFound, NotFound
from serve.events import Observer
from serve.grpc.server import bind_error_reason, create_grpc_server, set_serving
from serve.http.app import create_app
from serve.http.connection import HeaderLimits, limited_protocol
from serve.http.monitoring import monitoring_routes
from serve.memory import return_freed_memory
from serve.metrics.endpoint import create_metrics_app, metrics_route
from serve.metrics.prometheus import PrometheusMetrics
from serve.settings import ServerSettings
from serve.stats.recorder import StatsRecorder
from serve.stats.served_baseline import ServedBaseline
from serve.stats.wiring import InputStatistics

log = logging.getLogger(__name__)


class _Uvicorn(uvicorn.Server):
    # We own the signals: uvicorn would otherwise install its own and re-raise them on exit.
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            await super().startup(sockets)
        except SystemExit:
            # uvicorn logs why and calls sys.exit(), which would skip our shutdown; report it instead.
            raise OSError("the HTTP server failed to start") from None


def bind_http_socket(host: str, port: int) -> socket.socket:
    """Bind the HTTP listening socket ourselves, so that a taken port is an OSError naming it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=4096)
    except OSError as exc:
        raise OSError(exc.errno, f"cannot listen for HTTP on {host}:{port}: {bind_error_reason(exc)}") from None


def _grpc_address(host: str, port: int) -> str:
    # gRPC wants IPv6 literals in brackets ("[::]:8001"); uvicorn takes the bare address.
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


class Server:
    def __init__(self, settings: ServerSettings, repository_root: Path) -> None:
        self.settings = settings
        # One registry per server, never prometheus_client's global one: tests and embedders get their own.
        self.registry = CollectorRegistry()
        self.metrics = PrometheusMetrics(
            self.registry,
            latency_buckets_s=settings.latency_buckets_s,
            triton_compat=settings.metrics_triton_compat,
        )
        self.stats = InputStatistics(settings) if settings.stats_enabled else None
        observers: list[Observer] = [self.metrics] if self.stats is None else [self.stats, self.metrics]
        self.service = InferenceService.create(
            repository_root,
            settings,
            observers,
            server_name=settings.server_name,
            model_control_explicit=settings.model_control_mode == "explicit",
        )
        self.repository = self.service.repository
        self.metrics.queue_probe = self.service.queue_depths
        self._stop = asyncio.Event()
        self._http: _Uvicorn | None = None
        self._http_task: asyncio.Task[None] | None = None
        self._grpc: grpc.aio.Server | None = None
        self._health: health_aio.HealthServicer | None = None
        self._http_socket: socket.socket | None = None
        self._metrics_http: _Uvicorn | None = None
        self._metrics_task: asyncio.Task[None] | None = None
        self._metrics_socket: socket.socket | None = None
        self.metrics_port = settings.metrics_port
        self.http_port = settings.http_port
        self.grpc_port = settings.grpc_port

    async def start(self) -> None:
        s = self.settings
        if s.model_control_mode == "explicit":
            await self.repository.load_all(s.load_models)
        else:
            await self.repository.load_all()
        # Registered even with --no-stats, so that a client is told why there is nothing.
        extra_routes = [metrics_route(self.metrics), *monitoring_routes(self.stats_recorder, self.served_baseline)]
        app = create_app(self.service, max_request_bytes=s.max_request_bytes, extra_routes=extra_routes)
        self._http_socket = bind_http_socket(s.host, s.http_port)
        self.http_port = self._http_socket.getsockname()[1]
        self._grpc, self._health, self.grpc_port = create_grpc_server(
            self.service,
            address=_grpc_address(s.host, s.grpc_port),
            max_message_bytes=s.max_request_bytes,
            stats_lookup=self.stats_recorder,
            baseline_lookup=self.served_baseline,
        )
        await self._grpc.start()
        config = uvicorn.Config(
            app,
            host=s.host,
            port=s.http_port,
            loop="none",
            http=self._http_protocol(),
            lifespan="off",
            access_log=False,
            # No proxy-header rewriting or Server header: nothing here reads them, and the hot
            # path pays for both on every request.
            proxy_headers=False,
            server_header=False,
            log_config=None,
            timeout_graceful_shutdown=max(1, int(s.shutdown_grace_s)),
            backlog=4096,
        )
        self._http = _Uvicorn(config)
        self._http_task = asyncio.ensure_future(self._http.serve(sockets=[self._http_socket]))
        while not self._http.started:
            if self._http_task.done():
                # uvicorn logged why; _Uvicorn.startup turned its sys.exit() into an OSError.
                with contextlib.suppress(BaseException):
                    self._http_task.result()
                raise OSError(f"HTTP server could not start on {s.host}:{s.http_port}")
            await asyncio.sleep(0.01)
        if s.metrics_port is not None:
            await self._start_metrics_http(s.metrics_port)
        await set_serving(self._health, True)
        log.info(
            "serving %d model version(s): HTTP on %s:%d, gRPC on %s:%d",
            len(self.repository.loaded()),
            s.host,
            self.http_port,
            s.host,
            self.grpc_port,
        )

    async def _start_metrics_http(self, port: int) -> None:
        """--metrics-port: a second, tiny uvicorn server in the same loop that serves only /metrics."""
        s = self.settings
        self._metrics_socket = bind_http_socket(s.host, port)
        self.metrics_port = self._metrics_socket.getsockname()[1]
        config = uvicorn.Config(
            create_metrics_app(self.metrics),
            host=s.host,
            port=self.metrics_port,
            loop="none",
            http=self._http_protocol(),
            lifespan="off",
            access_log=False,
            server_header=False,
            log_config=None,
        )
        self._metrics_http = _Uvicorn(config)
        self._metrics_task = asyncio.ensure_future(self._metrics_http.serve(sockets=[self._metrics_socket]))
        while not self._metrics_http.started:
            if self._metrics_task.done():
                self._metrics_task.result()  # raises why it could not start
                raise OSError(f"metrics server could not start on {s.host}:{port}")
            await asyncio.sleep(0.01)
        log.info("metrics on %s:%d/metrics", s.host, self.metrics_port)

    def _http_protocol(self) -> type[asyncio.Protocol]:
        """uvicorn's httptools protocol with our header limits and header deadline (http/connection.py)."""
        s = self.settings
        return limited_protocol(HeaderLimits(s.max_header_bytes, s.max_headers, s.header_timeout_s))

    def stats_recorder(self, name: str, version: str) -> StatsRecorder:
        model = self.repository.get(name, version)
        if self.stats is None:
            raise ModelNotFound(f"input statistics are not recorded for model '{name}' (the server runs --no-stats)")
        return self.stats.recorder(model)

    def served_baseline(self, name: str, version: str) -> ServedBaseline:
        model = self.repository.get(name, version)
        if self.stats is None:
            raise NotFound(f"model '{name}' has no baseline loaded: the server runs --no-stats and reads none")
        return self.stats.baseline(model)

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
        if self._metrics_http is not None:
            self._metrics_http.should_exit = True
        stops = []
        if self._grpc is not None:
            stops.append(self._grpc.stop(grace))
        if self._http_task is not None:
            stops.append(self._http_task)
        if self._metrics_task is not None:
            stops.append(self._metrics_task)
        if stops:
            await asyncio.gather(*stops, return_exceptions=True)
        if self._http_socket is not None:
            self._http_socket.close()  # uvicorn closes its servers, not a socket it was handed
        if self._metrics_socket is not None:
            self._metrics_socket.close()
        await self.service.close()
        log.info("stopped")


async def run_server(settings: ServerSettings, repository_root: Path) -> None:
    if settings.return_freed_memory:
        return_freed_memory()
    server = Server(settings, repository_root)
    try:
        await server.start()
        await server.wait()
    finally:
        await server.stop()
