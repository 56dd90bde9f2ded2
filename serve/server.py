"""The composition root: builds a server (registry, core, observers, HTTP on uvicorn and gRPC) from
settings and a role, and runs it in the caller's event loop until told to stop, then shuts it
down in a fixed order. `serve run`, each worker and the tests all build their server here.

With ``--workers N`` the supervisor (serve/workers) runs N of these; each is then given a
WorkerRole: the HTTP listening socket it shares with the others, a gRPC port it binds with
SO_REUSEPORT, and the Cluster through which it answers for the whole server."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import signal
import socket
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
from prometheus_client import CollectorRegistry
from starlette.types import ASGIApp

from serve.access_log import AccessLog
from serve.core import InferenceService
from serve.core.rollout_parts import RolloutParts
from serve.errors import ModelNotFound, NotFound
from serve.events import Observer
from serve.ground_truth.wiring import GroundTruth
from serve.grpc.auth import BearerAuthInterceptor
from serve.grpc.caller_trace import CallerTraceInterceptor
from serve.grpc.drain import DrainGate
from serve.grpc.frontends import choose_frontend
from serve.grpc.handoff.front import HandoffFront as HandoffFront  # the supervisor runs the one grpc_front builds
from serve.grpc.handoff.worker import HandoffListener
from serve.grpc.health import ServiceHealth
from serve.grpc.server import create_grpc_server, set_serving
from serve.http.app import create_app
from serve.http.auth import BearerAuth
from serve.http.caller_trace import CallerTrace
from serve.http.connection import HeaderLimits, limited_protocol
from serve.http.input_stats_routes import monitoring_routes
from serve.input_stats.recorder import StatsRecorder
from serve.input_stats.served_baseline import ServedBaseline
from serve.input_stats.wiring import InputStatistics, StatsDocuments, local_documents
from serve.listening import bind_http_socket
from serve.memory import return_freed_memory
from serve.metrics.endpoint import create_metrics_app, metrics_route
from serve.metrics.prometheus import PrometheusMetrics
from serve.payload_log.wiring import PayloadLogger, payload_logger
from serve.repository.poller import RepositoryPoller
from serve.repository.repository import ModelRepository
from serve.roles import SINGLE_PROCESS, Role
from serve.roles import GrpcHandoff as GrpcHandoff  # serve/workers builds its role from here
from serve.roles import WorkerRole as WorkerRole
from serve.rollout.plan_file import FILE_NAME as ROLLOUT_FILE
from serve.security.tls import TlsFiles, load_tls
from serve.security.tokens import TokenStore
from serve.settings import ServerSettings
from serve.tracing.options import tracing_options
from serve.tracing.settings import TraceSettings
from serve.uvicorn_server import InLoopUvicorn, start_uvicorn

if TYPE_CHECKING:  # imported when tracing is on, and only then (_tracing)
    from serve.tracing.spans import Tracer

log = logging.getLogger(__name__)

# How often a worker copies its queue gauges into the shared metric files between scrapes.
_GAUGE_REFRESH_S = 1.0
# After the batchers have answered every accepted request: how long each transport may take to send
# the last answers before it closes what is left.
_FLUSH_S = 2.0
# Before grpc's shutdown (grpc/drain.py): no call may have arrived for this long, so that each client
# that got its answer has sent its next call (held) ...
_GRPC_QUIET_S = 0.25
# ... waiting at most this long for it (clients that do not wait for answers never go quiet).
_GRPC_QUIET_MAX_S = 2.0
# After the transports stopped: time for the payload log to hand its last events to its sink.
_PAYLOAD_FLUSH_S = 5.0
# ... and for the last spans to reach the trace exporter (which may be down: it never holds the exit longer).
_TRACE_FLUSH_S = 5.0
# After grpc's shutdown began: time for its GOAWAY to leave before the held calls are answered.
_GRPC_GOAWAY_S = 0.1


def _grpc_address(host: str, port: int) -> str:
    # gRPC wants IPv6 literals in brackets ("[::]:8001"); uvicorn takes the bare address.
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


@dataclass(frozen=True)
class InputStatsAccess:
    """This process's input statistics of a model version, or why there are none."""

    repository: ModelRepository
    stats: InputStatistics | None

    def recorder(self, name: str, version: str) -> StatsRecorder:
        model = self.repository.get(name, version)
        if self.stats is None:
            raise ModelNotFound(f"input statistics are not recorded for model '{name}' (the server runs --no-stats)")
        return self.stats.recorder(model)

    def baseline(self, name: str, version: str) -> ServedBaseline:
        model = self.repository.get(name, version)
        if self.stats is None:
            raise NotFound(f"model '{name}' has no baseline loaded: the server runs --no-stats and reads none")
        return self.stats.baseline(model)


@dataclass(frozen=True)
class Transports:
    """What both transports serve, built before they listen."""

    app: ASGIApp
    interceptors: list[grpc.aio.ServerInterceptor]
    grpc_gate: DrainGate
    stats_documents: StatsDocuments
    tls: TlsFiles | None
    tokens: TokenStore | None


def build_server(settings: ServerSettings, repository_root: Path, role: Role = SINGLE_PROCESS) -> Server:
    """The one place a server is wired: `serve run`, each worker and the tests call this."""
    # Before any model loads: a bad certificate or tokens file stops the start at once.
    tls = load_tls(settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file)
    tokens = TokenStore(settings.auth_tokens_file) if settings.auth_tokens_file is not None else None
    # One registry per server, never prometheus_client's global one: tests and embedders get their own.
    metrics = PrometheusMetrics(
        CollectorRegistry(),
        latency_buckets_s=settings.latency_buckets_s,
        triton_compat=settings.metrics_triton_compat,
        multiprocess_dir=role.metrics_dir(),
    )
    stats = InputStatistics(settings) if settings.stats_enabled else None
    rollouts = RolloutParts(metrics.registry, shadow_max_in_flight=settings.shadow_max_in_flight)
    # Predictions are kept per the statistics' windows, so that realized and input statistics line up.
    ground_truth = GroundTruth(
        window_s=settings.stats_window_s,
        retention_s=settings.feedback_retention_s,
        max_rows=settings.feedback_max_rows,
    )
    observers: list[Observer] = [metrics, rollouts.evidence, ground_truth]
    if stats is not None:
        observers.insert(0, stats)
    payloads = payload_logger(settings, metrics.registry)
    if payloads is not None:
        observers.append(payloads)
    trace_settings, tracer = _tracing(settings)
    if tracer is not None:
        observers.append(tracer)
    if settings.access_log:
        observers.append(AccessLog())
    service = InferenceService.create(
        repository_root,
        settings,
        observers,
        server_name=settings.server_name,
        model_control=settings.model_control_mode,
        cluster=role.cluster,
        mirror_of=rollouts.mirror_of,
        tracer=tracer,
        trace_settings=trace_settings,
    )
    rollouts.attach(service, metrics.rollouts, decides=role.decides_rollouts and settings.rollout_decider == "server")
    metrics.queue_probe = service.queue_depths
    access = InputStatsAccess(service.repository, stats)
    documents = role.input_stats(local_documents(access.recorder))
    # Registered even with --no-stats, so that a client is told why there is nothing.
    extra_routes = [metrics_route(metrics), *monitoring_routes(documents, access.baseline)]
    app = create_app(service, max_request_bytes=settings.max_request_bytes, extra_routes=extra_routes)
    gate = DrainGate()
    interceptors: list[grpc.aio.ServerInterceptor] = [gate]
    if tokens is not None:
        app = BearerAuth(app, tokens, protect_inference=settings.auth_inference, audit=service.audit)
        guard = BearerAuthInterceptor(tokens, protect_inference=settings.auth_inference, audit=service.audit)
        interceptors.append(guard)
    if tracer is not None:  # the audit log's trace_id: the caller's trace of an admin call
        app = CallerTrace(app)
        interceptors.append(CallerTraceInterceptor())
    transports = Transports(app, interceptors, gate, documents, tls, tokens)
    return Server(settings, role, service, metrics, stats, access, transports, rollouts, payloads, tracer)


def _tracing(settings: ServerSettings) -> tuple[TraceSettings, Tracer | None]:
    """The trace settings, and the tracer when tracing is on: only then is the OpenTelemetry SDK imported."""
    options = tracing_options(settings.trace, os.environ)
    if options is None:
        return TraceSettings(enabled=False, sampler_ratio=None), None
    from serve.tracing.spans import Tracer

    trace_settings = TraceSettings(enabled=True, sampler_ratio=options.sampler.root_ratio)
    return trace_settings, Tracer(options, trace_settings)


def grpc_handed_off(settings: ServerSettings, workers: int) -> bool:
    """Whether the supervisor of ``workers`` serves the gRPC port with the hand-off front end (serve/grpc/handoff),
    rather than each worker serving it (grpc.aio, TLS, or one worker)."""
    # The Rust front end has no TLS yet: with TLS each worker serves the port on grpc.aio.
    return settings.grpc_frontend == "native" and workers > 1 and settings.tls_cert_file is None


def grpc_front(settings: ServerSettings, workers: int, run_dir: Path, port: int) -> HandoffFront:
    """The hand-off front end on ``port``, which the supervisor has reserved with SO_REUSEPORT."""
    return HandoffFront(
        _grpc_address(settings.host, port),
        [GrpcHandoff.of_worker(run_dir, index).calls for index in range(workers)],
        fallback_socket=GrpcHandoff.of_worker(run_dir, 0).fallback,
        max_message_bytes=settings.max_request_bytes,
        reuse_port=True,
    )


class Server:
    """A built server: start() loads the models and listens, in the running loop; stop() drains it."""

    def __init__(
        self,
        settings: ServerSettings,
        role: Role,
        service: InferenceService,
        metrics: PrometheusMetrics,
        stats: InputStatistics | None,
        input_stats: InputStatsAccess,
        transports: Transports,
        rollouts: RolloutParts,
        payloads: PayloadLogger | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        self.settings = settings
        self.payloads = payloads
        self.tracer = tracer
        self.rollouts = rollouts
        self.role = role
        self.service = service
        self.repository = service.repository
        self.metrics = metrics
        self.registry = metrics.registry
        self.stats = stats
        self.input_stats = input_stats
        self.transports = transports
        self.stats_documents = transports.stats_documents
        self._grpc_gate = transports.grpc_gate
        self._stop = asyncio.Event()
        self._gauge_task: asyncio.Task[None] | None = None
        self._poller: RepositoryPoller | None = None
        self._http: InLoopUvicorn | None = None
        self._http_task: asyncio.Task[None] | None = None
        self._http_socket: socket.socket | None = None
        self._grpc: grpc.aio.Server | None = None
        self._grpc_handoff: HandoffListener | None = None
        self._health: ServiceHealth | None = None
        self._metrics_http: InLoopUvicorn | None = None
        self._metrics_task: asyncio.Task[None] | None = None
        self._metrics_socket: socket.socket | None = None
        self.metrics_port = settings.metrics_port
        self.http_port = settings.http_port
        self.grpc_port = settings.grpc_port
        self._grpc_frontend = "grpc.aio"

    async def start(self, load_models: list[str] | None = None) -> None:
        """Load the models (``load_models``, else what the settings say) and start listening."""
        await self._load_models(load_models)
        self._start_poller()
        self.rollouts.start()
        self._http_socket = self.role.listen_http(self.settings.host, self.settings.http_port)
        self.http_port = self._http_socket.getsockname()[1]
        await self._start_grpc()
        await self._start_http(self._http_socket)
        if self.settings.metrics_port is not None and self.role.serves_metrics_port:
            await self._start_metrics_http(self.settings.metrics_port)
        if self.role.metrics_dir() is not None:
            self._gauge_task = asyncio.ensure_future(self._refresh_gauges())
        await set_serving(self.health, True)
        self._announce()

    @property
    def health(self) -> ServiceHealth:
        """The gRPC health service, once start() has built the gRPC server."""
        assert self._health is not None, "the server has not started"
        return self._health

    async def _load_models(self, load_models: list[str] | None) -> None:
        s = self.settings
        if load_models is not None:
            await self.repository.load_all(load_models)
        elif s.model_control_mode == "explicit":
            await self.repository.load_all(s.load_models)
        else:
            await self.repository.load_all()

    def _start_poller(self) -> None:
        if self.settings.model_control_mode == "poll":
            # A changed rollout.yaml is re-read, not a reload of the model: every replica and worker converges
            # on it within one poll.
            followers = {ROLLOUT_FILE: self.service.rollouts.reload}
            self._poller = RepositoryPoller(self.repository, self.settings.repository_poll_secs, followers)
            self._poller.mark_loaded()
            self._poller.start()

    async def _start_grpc(self) -> None:
        s, tls, handoff = self.settings, self.transports.tls, self.role.grpc_handoff
        frontend = choose_frontend("aio" if handoff else s.grpc_frontend, tls=tls is not None)
        if frontend.fallback_reason:
            log.warning("%s", frontend.fallback_reason)
        self._grpc_frontend = "grpc.aio" if frontend.name == "aio" else "pygrpc-native"
        self._grpc, self._health, port = create_grpc_server(
            self.service,
            address=f"unix:{handoff.fallback}" if handoff else _grpc_address(s.host, s.grpc_port),
            max_message_bytes=s.max_request_bytes,
            stats_lookup=self.stats_documents,
            baseline_lookup=self.input_stats.baseline,
            reuse_port=self.role.reuse_port and handoff is None,
            tls=tls,
            interceptors=self.transports.interceptors,
            frontend=frontend,
        )
        await self._grpc.start()
        if handoff is not None:
            await self._start_grpc_handoff(handoff)
        else:
            self.grpc_port = port

    async def _start_grpc_handoff(self, handoff: GrpcHandoff) -> None:
        """Take the ModelInfer calls the supervisor's front end hands over; it serves the port (grpc_front)."""
        s = self.settings
        self._grpc_handoff = HandoffListener(
            self.service,
            handoff.calls,
            max_message_bytes=s.max_request_bytes,
            tokens=self.transports.tokens,
            protect_inference=s.auth_inference,
        )
        await self._grpc_handoff.start()
        self._grpc_frontend = "calls handed over by the supervisor's front end"

    async def _start_http(self, sock: socket.socket) -> None:
        tls = self.transports.tls
        self._http, self._http_task = await start_uvicorn(
            self.transports.app,
            sock,
            what="HTTP server",
            http=self._http_protocol(),
            # Counted from the signal, like the batchers' grace: it must outlast their last answers.
            timeout_graceful_shutdown=math.ceil(self.settings.shutdown_grace_s + _FLUSH_S),
            backlog=4096,
            **(tls.uvicorn_options() if tls is not None else {}),
        )

    async def _start_metrics_http(self, port: int) -> None:
        """--metrics-port: a second, tiny uvicorn server in the same loop that serves only /metrics."""
        self._metrics_socket = bind_http_socket(self.settings.host, port)
        self.metrics_port = self._metrics_socket.getsockname()[1]
        self._metrics_http, self._metrics_task = await start_uvicorn(
            create_metrics_app(self.metrics), self._metrics_socket, what="metrics server", http=self._http_protocol()
        )
        log.info("metrics on %s:%d/metrics", self.settings.host, self.metrics_port)

    def _announce(self) -> None:
        s, tls, tokens = self.settings, self.transports.tls, self.transports.tokens
        if tls is not None:
            log.info("TLS on HTTP and gRPC%s", "; client certificates required" if tls.mutual else "")
        if tokens is not None:
            log.info(
                "token auth: %d token(s) from %s; %s",
                len(tokens),
                tokens.path,
                "every call but health needs one" if s.auth_inference else "model control needs an admin token",
            )
        log.info(
            "serving %d model version(s): HTTP on %s:%d, gRPC on %s:%d (%s)",
            len(self.repository.loaded()),
            s.host,
            self.http_port,
            s.host,
            self.grpc_port,
            self._grpc_frontend,
        )

    async def _refresh_gauges(self) -> None:
        # Other workers' scrapes read this worker's queue gauges from its file: keep it current.
        while True:
            self.metrics.refresh()
            await asyncio.sleep(_GAUGE_REFRESH_S)

    def _http_protocol(self) -> type[asyncio.Protocol]:
        """uvicorn's httptools protocol with our header limits and header deadline (http/connection.py)."""
        s = self.settings
        return limited_protocol(HeaderLimits(s.max_header_bytes, s.max_headers, s.header_timeout_s))

    def stats_recorder(self, name: str, version: str) -> StatsRecorder:
        return self.input_stats.recorder(name, version)

    def request_stop(self) -> None:
        self._stop.set()

    def capture_signals(self, signals: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT)) -> None:
        """Turn ``signals`` into a clean stop. Called before start(): a SIGTERM that arrives while
        models load must not kill the process with the default action (exit -15, nothing drained)."""
        loop = asyncio.get_running_loop()
        for sig in signals:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.request_stop)

    async def wait(self) -> None:
        await self._stop.wait()

    async def stop(self) -> None:
        """Shut down in a fixed order, losing nothing that was accepted.

        Readiness goes false; new HTTP requests are answered 503 with ``Connection: close`` and HTTP
        stops accepting connections (http/connection.py); new gRPC calls are held (grpc/drain.py).
        Every batcher runs what it has queued within --shutdown-grace-s and answers what is still
        waiting at the deadline UNAVAILABLE. Then grpc stops, which sends GOAWAY, and the held calls
        are answered UNAVAILABLE; the transports close once every answer is sent, so no call that a
        client sent is cancelled or reset; sessions are released.
        """
        self.service.shutting_down = True
        self._grpc_gate.close()
        if self._gauge_task is not None:
            self._gauge_task.cancel()
        if self._poller is not None:
            await self._poller.close()
        await self.rollouts.close()
        if self._health is not None:
            await set_serving(self._health, False)
        if self._http is not None:
            self._stop_listening(self._http)
            self._http.should_exit = True
        if self._metrics_http is not None:
            self._metrics_http.should_exit = True
        # Drain the batchers first: every accepted request gets its answer (or UNAVAILABLE) ...
        await self.service.close()
        # ... then stop the transports, gRPC once its clients have all sent the call they will send
        # before they read its GOAWAY.
        stops: list[Awaitable[None]] = []
        if self._grpc is not None:
            stops.append(self._stop_grpc(self._grpc))
        if self._grpc_handoff is not None:
            stops.append(self._grpc_handoff.stop())  # the answers to the calls handed over go out first
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
        if self.payloads is not None:  # every answer is out: its events are the last to log
            if not await asyncio.to_thread(self.payloads.close, _PAYLOAD_FLUSH_S):
                log.warning("payload log: not every event reached its sink within %.0f s", _PAYLOAD_FLUSH_S)
        if self.tracer is not None:  # after the batchers and the transports: the last spans have ended
            await asyncio.to_thread(self.tracer.close, _TRACE_FLUSH_S)
        log.info("stopped")

    def _stop_listening(self, http: InLoopUvicorn) -> None:
        """Refuse new HTTP connections now, before any connection is told to close: uvicorn would stop
        listening only at its next tick, and clients that a ``Connection: close`` sends to reconnect
        would meanwhile queue for a listener that then closes on them (a reset, not a refusal). A
        worker's socket is shared: the supervisor stops it listening for every worker at once."""
        for server in getattr(http, "servers", ()):  # set by uvicorn's startup, if it got that far
            server.close()

    async def _stop_grpc(self, server: grpc.aio.Server) -> None:
        gate = self._grpc_gate
        if not await gate.quiet(_GRPC_QUIET_S, _GRPC_QUIET_MAX_S):
            log.warning("gRPC calls kept arriving while stopping; some sent as it stops may be cancelled")
        stopping = asyncio.ensure_future(server.stop(_FLUSH_S))
        await asyncio.sleep(_GRPC_GOAWAY_S)
        if gate.held:
            log.info("answering %d gRPC call(s) that arrived while stopping", gate.held)
        gate.release()
        await stopping


async def run_server(settings: ServerSettings, repository_root: Path) -> None:
    """`serve run` without workers: until SIGTERM or SIGINT."""
    if settings.return_freed_memory:
        return_freed_memory()
    server = build_server(settings, repository_root)
    server.capture_signals()
    try:
        await server.start()
        await server.wait()
    finally:
        await server.stop()
