"""The supervisor's answers to its workers: what describes the whole server, and model control on every worker.

Statistics are summed and input statistics merged over the serving workers. A load or unload is
applied on every serving worker, one operation at a time; a load that fails anywhere is undone
everywhere. In explicit model-control mode the supervisor remembers what every worker must have
loaded, so that a worker started later (or restarted) loads the same, and one that started while
an operation ran is brought up to date before it counts as serving.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Protocol

import orjson

from serve.errors import ModelLoadError, ServeError
from serve.ground_truth.document import encode, merge_documents, parse_document
from serve.ground_truth.feedback_codec import decode_outcomes, encode_outcomes
from serve.ground_truth.outcomes import combine
from serve.input_stats.windows import ServerInstance
from serve.metrics.triton_statistics import sum_statistics
from serve.repository.repository import STARTUP
from serve.settings import ServerSettings
from serve.tracing.settings import SettingValue
from serve.workers import ipc
from serve.workers.codec import trace_changes_from_json, trace_changes_to_json, trace_settings_to_json
from serve.workers.merged_input_stats import WorkerDocuments
from serve.workers.messages import (
    A,
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
    ModelSpec,
    ModelStatistics,
    Performance,
    PerformanceAnswer,
    Ready,
    ReloadRollout,
    Request,
    RolloutChanged,
    RolloutEvidence,
    StartupModels,
    StartupModelsAnswer,
    StatisticsAnswer,
    TraceSettingsChanged,
    Unload,
)
from serve.workers.worker import worker_socket

log = logging.getLogger("serve.workers")


def merge_evidence(documents: list[bytes]) -> bytes:
    """The workers' rollout evidence as one document (serve/rollout/evidence.py, work package C's)."""
    try:
        from serve.rollout.evidence import merge_evidence_json
    except ImportError:  # not there yet: one worker's evidence is the whole; several cannot be merged
        return documents[0] if len(documents) == 1 else b"{}"
    merged: bytes = merge_evidence_json(documents)
    return merged


# A load on a worker can take as long as loading a model does.
_APPLY_TIMEOUT_S = 600.0


class WorkerPool(Protocol):
    """What model control asks of the process supervisor."""

    def serving(self) -> list[int]:
        """The indices of the workers that are running and serving."""
        ...

    def is_current(self, index: int, pid: int) -> bool:
        """Whether ``pid`` is worker ``index``'s running process (not one since replaced)."""
        ...

    def mark_serving(self, index: int, pid: int) -> None: ...


class ModelControl:
    """A SupervisorHandler (messages.py)."""

    def __init__(
        self, settings: ServerSettings, count: int, run_dir: Path, pool: WorkerPool, instance: ServerInstance
    ) -> None:
        self._count = count
        self._run_dir = run_dir
        self._pool = pool
        self.documents = WorkerDocuments(instance)
        self._lock = asyncio.Lock()  # one model-control operation at a time, on every worker
        self._desired: dict[str, ModelSpec] = {}  # explicit mode: what every worker must have loaded
        # Trace settings changed through the API, per model ("" = global), merged: a worker that starts later
        # applies them too, so that every worker answers the same settings.
        self._trace: dict[str, dict[str, SettingValue]] = {}
        self._generation = 0
        if settings.model_control_mode == "explicit":
            self._desired = {name: ModelSpec(name) for name in settings.load_models}

    # ---- what describes the whole server -----------------------------------------------------------
    async def statistics(self, request: ModelStatistics) -> StatisticsAnswer:
        answers = await self._ask_serving(request)
        return StatisticsAnswer(orjson.dumps(sum_statistics(orjson.loads(a.document) for a in answers)))

    async def input_stats(self, request: InputStats) -> InputStatsAnswer:
        answers = await self._ask_serving(Export(request.name, request.version))
        return InputStatsAnswer(self.documents.combine([a.document for a in answers], request.since))

    async def rollout_evidence(self, request: RolloutEvidence) -> EvidenceAnswer:
        answers = await self._ask_serving(ExportEvidence(request.name))
        return EvidenceAnswer(merge_evidence([a.document for a in answers]))

    async def join_labels(self, request: JoinLabels) -> JoinAnswer:
        answers = await self._ask_serving(request)
        return JoinAnswer(encode_outcomes(combine([decode_outcomes(a.outcomes) for a in answers])))

    async def performance(self, request: Performance) -> PerformanceAnswer:
        answers = await self._ask_serving(request)
        documents = [parse_document(a.document) for a in answers]
        return PerformanceAnswer(encode(merge_documents(documents)))

    async def rollout_changed(self, request: RolloutChanged) -> Done:
        """A rollout.yaml was written: every serving worker re-reads it (a worker that starts later reads it
        when it loads the model)."""
        await self._ask_serving(ReloadRollout(request.name))
        return Done()

    async def trace_settings_changed(self, request: TraceSettingsChanged) -> Done:
        """Applied on every serving worker (it was validated where it came in) and kept for those that start
        later; one change at a time, like model control, so that every worker applies them in the same order."""
        async with self._lock:
            failed = await self._apply_everywhere(ApplyTraceSettings(request.model, request.changes))
            self._trace.setdefault(request.model, {}).update(trace_changes_from_json(request.changes))
            self._generation += 1
        if failed:
            index, error = failed[0]
            raise type(error)(f"worker {index} did not apply the trace settings: {error.message}")
        return Done()

    async def _ask_serving(self, request: Request[A]) -> list[A]:
        indices = self._serving()
        return list(await asyncio.gather(*(ipc.call(self._socket(i), request) for i in indices)))

    # ---- workers starting --------------------------------------------------------------------------
    async def startup_models(self, request: StartupModels) -> StartupModelsAnswer:
        return StartupModelsAnswer(self._generation, tuple(self._desired.values()), trace_settings_to_json(self._trace))

    async def ready(self, request: Ready) -> Done:
        if not self._pool.is_current(request.index, request.pid):
            return Done()
        async with self._lock:
            if request.generation != self._generation:
                await self._sync(request.index)
            self._pool.mark_serving(request.index, request.pid)
        return Done()

    async def _sync(self, index: int) -> None:
        """Model control changed while this worker was starting: bring it to what the others have."""
        path = self._socket(index)
        loaded = await ipc.call(path, Loaded())
        for name in set(loaded.models) - set(self._desired):
            await ipc.call(path, ApplyUnload(name, STARTUP), timeout_s=_APPLY_TIMEOUT_S)
        for spec in self._desired.values():
            await ipc.call(path, ApplyLoad(spec, STARTUP), timeout_s=_APPLY_TIMEOUT_S)
        for model, changes in self._trace.items():
            await ipc.call(path, ApplyTraceSettings(model, trace_changes_to_json(changes)))

    # ---- model control -----------------------------------------------------------------------------
    async def load(self, request: Load) -> Done:
        async with self._lock:
            name = request.spec.name
            failed = await self._apply_everywhere(ApplyLoad(request.spec, request.actor))
            if failed:
                await self._restore(name)
                reasons = "; ".join(f"worker {index}: {error.message}" for index, error in failed)
                raise ModelLoadError(
                    f"failed to load '{name}' on {len(failed)} of {self._count} workers ({reasons}); "
                    "every worker keeps what it served before"
                )
            self._desired[name] = request.spec
            self._generation += 1
        return Done()

    async def unload(self, request: Unload) -> Done:
        async with self._lock:
            failed = await self._apply_everywhere(ApplyUnload(request.name, request.actor))
            if failed:
                index, error = failed[0]
                raise type(error)(f"worker {index}: {error.message}")
            self._desired.pop(request.name, None)
            self._generation += 1
        return Done()

    async def _apply_everywhere(
        self, request: ApplyLoad | ApplyUnload | ApplyTraceSettings
    ) -> list[tuple[int, ServeError]]:
        indices = self._serving()

        async def apply(index: int) -> ServeError | None:
            try:
                await ipc.call(self._socket(index), request, timeout_s=_APPLY_TIMEOUT_S)
            except ServeError as exc:
                return exc
            return None

        outcomes = await asyncio.gather(*(apply(i) for i in indices))
        return [(i, e) for i, e in zip(indices, outcomes, strict=True) if e is not None]

    async def _restore(self, name: str) -> None:
        """After a load that failed somewhere, put every worker back to the previous state of ``name``."""
        previous = self._desired.get(name)
        request = ApplyLoad(previous, STARTUP) if previous is not None else ApplyUnload(name, STARTUP)
        for index, error in await self._apply_everywhere(request):
            log.error("worker %d: could not restore model %s: %s", index, name, error.message)

    def _serving(self) -> list[int]:
        indices = self._pool.serving()
        if not indices:
            raise ipc.PeerUnavailable("no worker is serving")
        return indices

    def _socket(self, index: int) -> Path:
        return worker_socket(self._run_dir, index)
