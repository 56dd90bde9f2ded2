"""``serve run --workers N``: N worker processes behind one HTTP and one gRPC port, and the parent
that runs them.

Sockets. HTTP: the supervisor binds and listens once and every worker inherits that socket, so
connections wait in one accept queue and whichever worker is free takes the next; a worker that
dies loses only the connections it had accepted, and none queued behind it (with SO_REUSEPORT
each socket has its own queue, and the kernel hashes connections to them whatever their load;
``--worker-http-socket reuseport`` selects that for comparison). gRPC: grpcio binds its own
listener and cannot adopt one, so each worker binds the port with SO_REUSEPORT; the supervisor
holds a bound, not listening, socket on it so that the port is decided once (port 0 included). A
client's one connection then reaches one worker. With ``--grpc-frontend native`` (and no TLS) the
supervisor instead terminates gRPC itself and hands each ModelInfer call to the least busy worker
(serve/grpc/handoff), so one connection's calls reach every worker.

The supervisor restarts a worker that dies (exit, signal, the OOM killer) with growing back-off,
logging the cause and counting it in ``serve_worker_restarts_total``; one worker's crash never
takes down the others. SIGTERM or SIGINT is forwarded to every worker, each drains as a single
server does, and the supervisor exits 0 once all have stopped. That is all it does itself: the
workers' questions about the whole server are answered by model_control.py, on the control
socket it opens, and its own metrics are in supervisor_metrics.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import shutil
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from serve import settings as settings_module
from serve.cpus import resolve_workers
from serve.input_stats.windows import ServerInstance
from serve.listening import bind_http_socket
from serve.metrics.multiprocess import forget_process
from serve.server import HandoffFront, grpc_front, grpc_handed_off
from serve.settings import ServerSettings
from serve.workers import ipc
from serve.workers.messages import SUPERVISOR_REQUESTS, SupervisorRequest, answer_supervisor_request
from serve.workers.model_control import ModelControl
from serve.workers.rundir import METRICS_DIR_ENVIRONMENT, metrics_dir
from serve.workers.supervisor_metrics import MetricsServer, SupervisorMetrics
from serve.workers.worker import (
    ENV_GRPC_HANDOFF,
    ENV_HTTP_FD,
    ENV_INDEX,
    ENV_RUN_DIR,
    supervisor_socket,
    worker_socket,
)

log = logging.getLogger("serve.workers")

FIRST_BACKOFF_S = 0.5
MAX_BACKOFF_S = 30.0
# A worker that ran this long before dying starts its restarts from the first back-off again.
HEALTHY_AFTER_S = 60.0
# How long the supervisor waits for a worker to start (load its models) before giving up at start.
START_TIMEOUT_S = 600.0


def describe_exit(returncode: int) -> tuple[str, str]:
    """(metric reason, words for the log) for a worker's exit status."""
    if returncode < 0:
        name = signal.Signals(-returncode).name
        if -returncode == signal.SIGKILL:
            return "signal", f"killed by {name} (the kernel's OOM killer sends SIGKILL too)"
        return "signal", f"killed by {name}"
    return "exit", f"exited with code {returncode}"


@dataclass
class WorkerProcess:
    index: int
    process: asyncio.subprocess.Process
    started_at: float
    ready: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def pid(self) -> int:
        return self.process.pid


class Supervisor:
    def __init__(self, settings: ServerSettings, repository_root: Path, run_dir: Path) -> None:
        self.settings = settings
        self.root = repository_root
        self.count = resolve_workers(settings.workers)
        self.run_dir = run_dir
        self.metrics_dir = metrics_dir(run_dir)
        self._workers: dict[int, WorkerProcess] = {}
        self._restarts: dict[int, int] = {}
        self._stopping = False
        self._starting = True
        self._start_failure: str | None = None
        self._stop = asyncio.Event()
        self._http_socket: socket.socket | None = None
        self._grpc_socket: socket.socket | None = None
        self._hands_off = False  # whether the supervisor serves the gRPC port, handing calls to the workers
        self._front: HandoffFront | None = None  # the front end that does, once every worker serves
        self.model_control = ModelControl(settings, self.count, run_dir, self, ServerInstance.create())
        self._control: ipc.ControlServer[SupervisorRequest] | None = None
        self._metrics = SupervisorMetrics()
        self._metrics_server = MetricsServer()
        self._watchers: set[asyncio.Task[None]] = set()
        self.http_port = settings.http_port
        self.grpc_port = settings.grpc_port

    # ---- start and stop ------------------------------------------------------------------------
    async def run(self) -> int:
        try:
            await self._start()
            await self._stop.wait()
        finally:
            await self._shut_down()
        return 0

    async def _start(self) -> None:
        s = self.settings
        shared = s.worker_http_socket == "shared"
        self._http_socket = bind_http_socket(s.host, s.http_port, reuse_port=not shared)
        self.http_port = self._http_socket.getsockname()[1]
        if not shared:
            self._http_socket.close()  # it only chose the port: each worker binds its own
            self._http_socket = None
        self._grpc_socket = _reserve_port(s.host, s.grpc_port)
        self.grpc_port = self._grpc_socket.getsockname()[1]
        self._hands_off = grpc_handed_off(s, self.count)
        self._control = ipc.ControlServer(
            supervisor_socket(self.run_dir),
            SUPERVISOR_REQUESTS,
            functools.partial(answer_supervisor_request, self.model_control),
        )
        await self._control.start()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self._stop.set)
        for index in range(self.count):
            await self._spawn(index)
        await self._wait_started()
        if self._hands_off:
            # Bound only now, so that until every worker serves a client is refused, not left waiting.
            self._front = grpc_front(s, self.count, self.run_dir, self.grpc_port)
            self._front.start()
        if s.metrics_port is not None:
            await self._metrics_server.start(
                s.host, s.metrics_port, self.metrics_dir, triton_compat=s.metrics_triton_compat
            )
        grpc_mode = "one front end, calls handed to every worker" if self._front else "SO_REUSEPORT"
        log.info(
            "serving with %d worker processes: HTTP on %s:%d (%s socket), gRPC on %s:%d (%s); run directory %s",
            self.count, s.host, self.http_port, s.worker_http_socket, s.host, self.grpc_port, grpc_mode, self.run_dir,
        )  # fmt: skip

    async def _wait_started(self) -> None:
        """Every worker serving, or the first one's reason for not starting (then nothing is restarted)."""
        everyone: asyncio.Future[list[bool]] = asyncio.ensure_future(
            asyncio.gather(*(w.ready.wait() for w in self._workers.values()))
        )
        stop: asyncio.Future[bool] = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait((everyone, stop), timeout=START_TIMEOUT_S, return_when="FIRST_COMPLETED")
        finally:
            stop.cancel()
            everyone.cancel()
        self._starting = False
        if self._start_failure is not None:
            raise OSError(self._start_failure)
        if not self._stop.is_set() and len(self.serving()) < self.count:
            raise OSError(f"the workers did not start within {START_TIMEOUT_S:.0f} s")

    async def _spawn(self, index: int) -> None:
        s = self.settings
        settings = settings_module.to_environment(s)
        settings["SERVE_MODEL_REPOSITORY"] = str(self.root)
        settings["SERVE_HTTP_PORT"] = str(self.http_port)
        settings["SERVE_GRPC_PORT"] = str(self.grpc_port)
        if self._hands_off:
            settings[ENV_GRPC_HANDOFF] = "1"
        env = {k: v for k, v in os.environ.items() if not k.startswith(settings_module.ENV_PREFIX)}
        env.update(settings)
        env[ENV_INDEX] = str(index)
        env[ENV_RUN_DIR] = str(self.run_dir)
        env[METRICS_DIR_ENVIRONMENT] = str(self.metrics_dir)
        pass_fds: tuple[int, ...] = ()
        if self._http_socket is not None:
            env[ENV_HTTP_FD] = str(self._http_socket.fileno())
            pass_fds = (self._http_socket.fileno(),)
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "serve.workers.worker", env=env, pass_fds=pass_fds
        )
        worker = WorkerProcess(index, process, time.monotonic())
        self._workers[index] = worker
        watcher = asyncio.ensure_future(self._watch(worker))
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)
        log.info("worker %d started (pid %d)", index, process.pid)

    async def _watch(self, worker: WorkerProcess) -> None:
        returncode = await worker.process.wait()
        forget_process(worker.pid, self.metrics_dir)
        worker_socket(self.run_dir, worker.index).unlink(missing_ok=True)
        self._metrics.serving(sum(1 for w in self._workers.values() if w.ready.is_set() and w is not worker))
        if self._stopping:
            return
        reason, words = describe_exit(returncode)
        if self._starting and not worker.ready.is_set():
            # A worker that cannot start (a taken port, a broken install) would fail again: stop.
            self._start_failure = f"worker {worker.index} could not start: it {words}; see its log above"
            self._stop.set()
            return
        self._metrics.restarted(reason)
        ran_s = time.monotonic() - worker.started_at
        restarts = 0 if ran_s >= HEALTHY_AFTER_S else self._restarts.get(worker.index, 0)
        delay = min(MAX_BACKOFF_S, FIRST_BACKOFF_S * 2**restarts)
        self._restarts[worker.index] = restarts + 1
        log.error(
            "worker %d (pid %d) %s after %.1f s; restarting it in %.1f s", worker.index, worker.pid, words, ran_s, delay
        )
        await asyncio.sleep(delay)
        if not self._stopping:
            await self._spawn(worker.index)

    async def _shut_down(self) -> None:
        self._stopping = True
        if self._http_socket is not None:
            # Stop the shared port listening, for every worker at once, before any worker is told to
            # stop (no worker will be started again). Each worker stops accepting at once on SIGTERM,
            # and its keep-alive clients, told "Connection: close", reconnect: while another worker
            # still listened, or this copy held the socket open, they queued for nobody and were
            # reset when it closed. Now they are refused.
            with contextlib.suppress(OSError):
                self._http_socket.shutdown(socket.SHUT_RD)
            self._http_socket.close()
            self._http_socket = None
        # The front end refuses new calls from now on ("shutting down") and closes its port once every call it
        # handed over is answered; the workers answer them as they drain.
        front_stopped = (
            asyncio.ensure_future(asyncio.to_thread(self._front.stop, self.settings.shutdown_grace_s + 5))
            if self._front is not None
            else None
        )
        workers = [w for w in self._workers.values() if w.process.returncode is None]
        for worker in workers:
            with contextlib.suppress(ProcessLookupError):
                worker.process.send_signal(signal.SIGTERM)
        if workers:
            # Each worker drains within its grace period; allow for loading and closing around it.
            _, stuck = await asyncio.wait(
                [asyncio.ensure_future(w.process.wait()) for w in workers],
                timeout=self.settings.shutdown_grace_s + 15,
            )
            for worker in workers:
                if worker.process.returncode is None:
                    log.error("worker %d (pid %d) did not stop in time; killing it", worker.index, worker.pid)
                    with contextlib.suppress(ProcessLookupError):
                        worker.process.kill()
                    await worker.process.wait()
        if front_stopped is not None:
            await front_stopped
        for watcher in list(self._watchers):
            watcher.cancel()
        await self._metrics_server.stop()
        if self._control is not None:
            await self._control.close()
        for sock in (self._http_socket, self._grpc_socket):
            if sock is not None:
                sock.close()
        shutil.rmtree(self.run_dir, ignore_errors=True)
        log.info("stopped")

    # ---- what model control asks (model_control.WorkerPool) ----------------------------------------
    def serving(self) -> list[int]:
        return [w.index for w in self._workers.values() if w.ready.is_set() and w.process.returncode is None]

    def is_current(self, index: int, pid: int) -> bool:
        worker = self._workers.get(index)
        return worker is not None and worker.pid == pid

    def mark_serving(self, index: int, pid: int) -> None:
        worker = self._workers.get(index)
        if worker is not None and worker.pid == pid:  # not replaced while model control brought it up to date
            worker.ready.set()
            self._metrics.serving(len(self.serving()))
            log.info("worker %d (pid %d) is serving", worker.index, worker.pid)


def _reserve_port(host: str, port: int) -> socket.socket:
    """A bound, not listening, SO_REUSEPORT socket: it fixes the gRPC port every worker will bind."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot listen for gRPC on {host}:{port}: {exc.strerror}") from None
    return sock


async def run_supervisor(settings: ServerSettings, repository_root: Path, run_dir: Path) -> int:
    return await Supervisor(settings, repository_root, run_dir).run()
