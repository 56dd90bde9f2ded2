"""One worker process: a Server given its role by the supervisor (``python -m serve.workers.worker``).

The supervisor passes the settings as SERVE_* variables, the worker's index, the run directory
(its Unix sockets and the shared metric files) and the HTTP listening socket's descriptor. The
worker answers the supervisor on ``worker-<index>.sock`` (its own statistics, model control
applied here) and asks it, through ``supervisor.sock``, for everything that describes the whole
server.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import logging
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

from serve import settings as settings_module
from serve.errors import ServeError
from serve.memory import return_freed_memory
from serve.protocol import model_config_pb2 as mc
from serve.repository.repository import STARTUP
from serve.server import Server, WorkerRole, build_server
from serve.settings import ServerSettings
from serve.workers import ipc

ENV_INDEX = "SERVE_WORKER_INDEX"
ENV_RUN_DIR = "SERVE_RUN_DIR"
ENV_HTTP_FD = "SERVE_WORKER_HTTP_FD"

log = logging.getLogger("serve.workers")


def supervisor_socket(run_dir: Path) -> Path:
    return run_dir / "supervisor.sock"


def worker_socket(run_dir: Path, index: int) -> Path:
    return run_dir / f"worker-{index}.sock"


def encode_load(name: str, config: mc.ModelConfig | None, files: dict[str, bytes] | None) -> dict[str, Any]:
    return {
        "name": name,
        "config": base64.b64encode(config.SerializeToString()).decode() if config is not None else None,
        "files": {key: base64.b64encode(value).decode() for key, value in (files or {}).items()},
    }


def decode_load(message: dict[str, Any]) -> tuple[str, mc.ModelConfig | None, dict[str, bytes] | None]:
    config = None
    if message.get("config") is not None:
        config = mc.ModelConfig()
        config.ParseFromString(base64.b64decode(message["config"]))
    files = {key: base64.b64decode(value) for key, value in (message.get("files") or {}).items()}
    return str(message["name"]), config, files or None


class SupervisorLink:
    """The Cluster a worker's core uses: every answer about the whole server comes from the supervisor."""

    def __init__(self, run_dir: Path) -> None:
        self._path = supervisor_socket(run_dir)

    async def model_statistics(self, name: str, version: str) -> list[dict[str, Any]]:
        reply, _ = await ipc.call(self._path, {"op": "statistics", "name": name, "version": version})
        models: list[dict[str, Any]] = reply["models"]
        return models

    async def load_model(
        self, name: str, config: mc.ModelConfig | None, files: dict[str, bytes] | None, actor: str
    ) -> None:
        # A load on every worker takes as long as the slowest one; give it the time a load can take.
        await ipc.call(self._path, {"op": "load", "actor": actor, **encode_load(name, config, files)}, timeout_s=600)

    async def unload_model(self, name: str, actor: str) -> None:
        await ipc.call(self._path, {"op": "unload", "name": name, "actor": actor}, timeout_s=600)

    async def input_stats(self, name: str, version: str, since: int) -> bytes:
        _, body = await ipc.call(self._path, {"op": "input_stats", "name": name, "version": version, "since": since})
        return body

    async def startup_models(self) -> tuple[int, list[dict[str, Any]]]:
        reply, _ = await ipc.call(self._path, {"op": "startup_models"})
        return int(reply["generation"]), list(reply["models"])

    async def ready(self, index: int, generation: int) -> None:
        await ipc.call(self._path, {"op": "ready", "index": index, "pid": os.getpid(), "generation": generation})


class WorkerControl:
    """Answers the supervisor's requests with this worker's own state."""

    def __init__(self, server: Server) -> None:
        self._server = server

    async def handle(self, message: dict[str, Any], body: bytes) -> tuple[dict[str, Any], bytes]:
        op = message.get("op")
        service = self._server.service
        if op == "statistics":
            return {"models": service.local.statistics_now(message["name"], message["version"])}, b""
        if op == "export":
            recorder = self._server.stats_recorder(message["name"], message["version"])
            return {}, await asyncio.to_thread(recorder.export_json, 0)
        if op == "apply_load":
            await service.local.load_model(*decode_load(message), actor=str(message.get("actor", STARTUP)))
            return {}, b""
        if op == "apply_unload":
            await service.local.unload_model(message["name"], actor=str(message.get("actor", STARTUP)))
            return {}, b""
        if op == "loaded":
            return {"models": sorted({m.name for m in service.repository.loaded()})}, b""
        raise ServeError(f"unknown control request {op!r}")


async def run_worker(settings: ServerSettings, root: Path, index: int, run_dir: Path, http_fd: int | None) -> None:
    if settings.return_freed_memory:
        return_freed_memory()
    link = SupervisorLink(run_dir)
    http_socket = socket.socket(fileno=http_fd) if http_fd is not None else None
    server = build_server(settings, root, WorkerRole(index, link, http_socket))
    server.capture_signals(signals=(signal.SIGTERM,))
    control = ipc.ControlServer(worker_socket(run_dir, index), WorkerControl(server).handle)
    await control.start()
    try:
        generation, models = await link.startup_models()
        explicit = settings.model_control_mode == "explicit"
        await server.start(load_models=[] if explicit else None)
        for spec in models if explicit else []:
            try:
                await server.service.local.load_model(*decode_load(spec), actor=STARTUP)
            except ServeError as exc:
                log.error("worker %d: model %s did not load: %s", index, spec["name"], exc.message)
        await link.ready(index, generation)
        await server.wait()
    finally:
        await server.stop()
        await control.close()


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:
        return asyncio.new_event_loop()


def main() -> int:
    # Ctrl-C reaches every process of the group; the supervisor turns it into one SIGTERM each.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    settings = settings_module.from_arguments(argparse.Namespace(), os.environ)
    index = int(os.environ[ENV_INDEX])
    logging.basicConfig(
        level=getattr(logging, settings.log_level.upper()),
        format=f"%(asctime)s %(levelname)s [worker {index}] %(name)s: %(message)s",
        stream=sys.stderr,
    )
    assert settings.model_repository is not None, "the supervisor resolves the repository"
    http_fd = int(os.environ[ENV_HTTP_FD]) if os.environ.get(ENV_HTTP_FD) else None
    loop = _new_loop()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(
            run_worker(settings, settings.model_repository, index, Path(os.environ[ENV_RUN_DIR]), http_fd)
        )
    except OSError as exc:
        log.error("%s", exc)
        return 1
    finally:
        loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
