"""The supervisor's own metrics, and the HTTP server that shows every process's (``--metrics-port``).

The supervisor writes its two metrics to the shared multiprocess files like any worker, so a scrape
of any worker shows them; the optional metrics port serves the merged files from the supervisor,
which stays up while workers restart.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge

from serve.listening import bind_http_socket
from serve.metrics.endpoint import create_metrics_app
from serve.metrics.prometheus import PrometheusMetrics
from serve.uvicorn_server import InLoopUvicorn, serve_uvicorn

log = logging.getLogger("serve.workers")


class SupervisorMetrics:
    def __init__(self) -> None:
        registry = CollectorRegistry()  # written to the shared files; scraped through the workers
        self._restarts = Counter(
            "serve_worker_restarts", "Worker processes restarted after they died, by cause", ["reason"],
            registry=registry,
        )  # fmt: skip
        self._serving = Gauge(
            "serve_workers", "Worker processes serving", registry=registry, multiprocess_mode="livemax"
        )

    def restarted(self, reason: str) -> None:
        self._restarts.labels(reason).inc()

    def serving(self, count: int) -> None:
        self._serving.set(count)


class MetricsServer:
    """Every process's metrics, merged from the shared files, on a port of their own."""

    def __init__(self) -> None:
        self._server: InLoopUvicorn | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self, host: str, port: int, metrics_dir: Path, *, triton_compat: bool) -> None:
        sock = bind_http_socket(host, port)
        metrics = PrometheusMetrics(
            CollectorRegistry(), triton_compat=triton_compat, process_metrics=False, multiprocess_dir=metrics_dir
        )
        self._server, self._task = serve_uvicorn(create_metrics_app(metrics), sock)
        log.info("metrics on %s:%d/metrics", host, sock.getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            await asyncio.gather(self._task, return_exceptions=True)
