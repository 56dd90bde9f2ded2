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
import functools
import logging
import os
import signal
import socket
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import orjson

from serve import settings as settings_module
from serve.errors import ServeError
from serve.ground_truth.document import PerformanceDocumentJson, encode, parse_document
from serve.ground_truth.feedback_codec import decode_outcomes, encode_labels, encode_outcomes
from serve.ground_truth.labels import Label, parse_feedback
from serve.ground_truth.outcomes import Outcome
from serve.memory import return_freed_memory
from serve.protocol import model_config_pb2 as mc
from serve.repository.repository import STARTUP
from serve.server import GrpcHandoff, Server, WorkerRole, build_server
from serve.settings import ServerSettings
from serve.tracing.settings import SettingValue
from serve.workers import ipc
from serve.workers.codec import trace_changes_from_json, trace_changes_to_json, trace_settings_from_json
from serve.workers.messages import (
    WORKER_REQUESTS,
    ApplyLoad,
    ApplyTraceSettings,
    ApplyUnload,
    Done,
    EvidenceAnswer,
    Export,
    ExportEvidence,
    InputStats,
    InputStatsAnswer,
    JoinAnswer,
    JoinLabels,
    Load,
    Loaded,
    LoadedAnswer,
    ModelSpec,
    ModelStatistics,
    Performance,
    PerformanceAnswer,
    Ready,
    ReloadRollout,
    RolloutChanged,
    RolloutEvidence,
    StartupModels,
    StartupModelsAnswer,
    StatisticsAnswer,
    TraceSettingsChanged,
    Unload,
    answer_worker_request,
)

ENV_INDEX = "SERVE_WORKER_INDEX"
ENV_RUN_DIR = "SERVE_RUN_DIR"
# Set when the supervisor runs the gRPC front end and hands ModelInfer calls to the workers (serve/grpc/handoff).
ENV_GRPC_HANDOFF = "SERVE_WORKER_GRPC_HANDOFF"
ENV_HTTP_FD = "SERVE_WORKER_HTTP_FD"

log = logging.getLogger("serve.workers")


def supervisor_socket(run_dir: Path) -> Path:
    return run_dir / "supervisor.sock"


def worker_socket(run_dir: Path, index: int) -> Path:
    return run_dir / f"worker-{index}.sock"


class SupervisorLink:
    """The Cluster a worker's core uses: every answer about the whole server comes from the supervisor."""

    def __init__(self, run_dir: Path) -> None:
        self._path = supervisor_socket(run_dir)

    async def model_statistics(self, name: str, version: str) -> list[dict[str, object]]:
        answer = await ipc.call(self._path, ModelStatistics(name, version))
        entries: list[dict[str, object]] = orjson.loads(answer.document)
        return entries

    async def load_model(
        self, name: str, config: mc.ModelConfig | None, files: dict[str, bytes] | None, actor: str
    ) -> None:
        # A load on every worker takes as long as the slowest one; give it the time a load can take.
        await ipc.call(self._path, Load(ModelSpec.of(name, config, files), actor), timeout_s=600)

    async def unload_model(self, name: str, actor: str) -> None:
        await ipc.call(self._path, Unload(name, actor), timeout_s=600)

    async def rollout_changed(self, name: str) -> None:
        await ipc.call(self._path, RolloutChanged(name))

    async def rollout_evidence(self, name: str) -> bytes:
        return (await ipc.call(self._path, RolloutEvidence(name))).document

    async def join_labels(self, name: str, version: str, labels: Sequence[Label]) -> list[Outcome]:
        answer = await ipc.call(self._path, JoinLabels(name, version, encode_labels(labels)))
        return decode_outcomes(answer.outcomes)

    async def performance(self, name: str, version: str) -> PerformanceDocumentJson:
        return parse_document((await ipc.call(self._path, Performance(name, version))).document)

    async def trace_settings_changed(self, model: str, changes: Mapping[str, SettingValue]) -> None:
        await ipc.call(self._path, TraceSettingsChanged(model, trace_changes_to_json(changes)))

    async def input_stats(self, name: str, version: str, since: int) -> bytes:
        return (await ipc.call(self._path, InputStats(name, version, since))).document

    async def startup_models(self) -> StartupModelsAnswer:
        return await ipc.call(self._path, StartupModels())

    async def ready(self, index: int, generation: int) -> None:
        await ipc.call(self._path, Ready(index, os.getpid(), generation))


class WorkerControl:
    """Answers the supervisor's requests with this worker's own state (a WorkerHandler)."""

    def __init__(self, server: Server) -> None:
        self._server = server

    async def statistics(self, request: ModelStatistics) -> StatisticsAnswer:
        entries = self._server.service.local.statistics_now(request.name, request.version)
        return StatisticsAnswer(orjson.dumps(entries))

    async def export(self, request: Export) -> InputStatsAnswer:
        recorder = self._server.stats_recorder(request.name, request.version)
        return InputStatsAnswer(await asyncio.to_thread(recorder.export_json, 0))

    async def apply_load(self, request: ApplyLoad) -> Done:
        await _apply_load(self._server, request.spec, request.actor)
        return Done()

    async def apply_unload(self, request: ApplyUnload) -> Done:
        await self._server.service.local.unload_model(request.name, actor=request.actor)
        return Done()

    async def loaded(self, request: Loaded) -> LoadedAnswer:
        return LoadedAnswer(tuple(sorted({m.name for m in self._server.service.repository.loaded()})))

    async def reload_rollout(self, request: ReloadRollout) -> Done:
        await self._server.service.local.rollout_changed(request.name)
        return Done()

    async def export_evidence(self, request: ExportEvidence) -> EvidenceAnswer:
        return EvidenceAnswer(await self._server.service.local.rollout_evidence(request.name))

    async def join_labels(self, request: JoinLabels) -> JoinAnswer:
        labels = parse_feedback(request.labels)
        outcomes = await self._server.service.local.join_labels(request.name, request.version, labels)
        return JoinAnswer(encode_outcomes(outcomes))

    async def performance(self, request: Performance) -> PerformanceAnswer:
        document = await self._server.service.local.performance(request.name, request.version)
        return PerformanceAnswer(encode(document))

    async def apply_trace_settings(self, request: ApplyTraceSettings) -> Done:
        await self._server.service.local.trace_settings_changed(request.model, trace_changes_from_json(request.changes))
        return Done()


async def _apply_load(server: Server, spec: ModelSpec, actor: str) -> None:
    await server.service.local.load_model(spec.name, spec.model_config(), spec.model_files(), actor=actor)


async def run_worker(settings: ServerSettings, root: Path, index: int, run_dir: Path, http_fd: int | None) -> None:
    if settings.return_freed_memory:
        return_freed_memory()
    link = SupervisorLink(run_dir)
    http_socket = socket.socket(fileno=http_fd) if http_fd is not None else None
    handoff = GrpcHandoff.of_worker(run_dir, index) if os.environ.get(ENV_GRPC_HANDOFF) else None
    server = build_server(settings, root, WorkerRole(index, link, http_socket, handoff))
    server.capture_signals(signals=(signal.SIGTERM,))
    handler = WorkerControl(server)
    control = ipc.ControlServer(
        worker_socket(run_dir, index), WORKER_REQUESTS, functools.partial(answer_worker_request, handler)
    )
    await control.start()
    try:
        startup = await link.startup_models()
        explicit = settings.model_control_mode == "explicit"
        await server.start(load_models=[] if explicit else None)
        for spec in startup.models if explicit else ():
            try:
                await _apply_load(server, spec, STARTUP)
            except ServeError as exc:
                log.error("worker %d: model %s did not load: %s", index, spec.name, exc.message)
        for model, changes in trace_settings_from_json(startup.trace_settings).items():
            await server.service.local.trace_settings_changed(model, changes)
        await link.ready(index, startup.generation)
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
