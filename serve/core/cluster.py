"""Where the core's server-wide answers come from: this process alone, or every worker.

With ``--workers N`` everything a client reads must describe the whole server, and model control
must reach every worker: the supervisor (serve/workers) answers these by asking every worker, and
each worker applies them on its LocalCluster. Without workers the LocalCluster answers directly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import orjson

from serve.core.rollouts import Rollouts
from serve.errors import ModelLoadError
from serve.ground_truth.document import PerformanceDocumentJson
from serve.ground_truth.labels import Label
from serve.ground_truth.outcomes import Outcome
from serve.ground_truth.wiring import GroundTruth
from serve.metrics.triton_statistics import TritonStatistics
from serve.protocol import model_config_pb2 as mc
from serve.repository.repository import ModelRepository
from serve.rollout.evidence import Labelled, evidence_from_bytes
from serve.tracing.settings import SettingValue, TraceSettings


class Cluster(Protocol):
    async def model_statistics(self, name: str, version: str) -> list[dict[str, Any]]:
        """Triton's statistics of the model (or every model), summed over the workers."""
        ...

    async def load_model(
        self, name: str, config: mc.ModelConfig | None, files: dict[str, bytes] | None, actor: str
    ) -> None:
        """Load on every worker; answered once all have, or fails naming which worker failed and why."""
        ...

    async def unload_model(self, name: str, actor: str) -> None:
        """Unload on every worker."""
        ...

    async def rollout_changed(self, name: str) -> None:
        """``<name>/rollout.yaml`` changed: every worker re-reads it before this returns."""
        ...

    async def rollout_evidence(self, name: str) -> bytes:
        """The model's rollout evidence (JSON), merged over the workers."""
        ...

    async def join_labels(self, name: str, version: str, labels: Sequence[Label]) -> list[Outcome]:
        """Each label's outcome, joined on every worker: its prediction may be any worker's."""
        ...

    async def performance(self, name: str, version: str) -> PerformanceDocumentJson:
        """The model's performance document, merged over the workers."""
        ...

    async def trace_settings_changed(self, model: str, changes: Mapping[str, SettingValue]) -> None:
        """Triton's trace settings of ``model`` ("" = global) changed: every worker applies ``changes`` (already
        validated) before this returns, and a worker that starts later applies them as it starts."""
        ...


class LocalCluster:
    """This process's own repository and statistics: the whole server when there are no workers,
    and what a worker applies when the supervisor asks it."""

    def __init__(
        self,
        repository: ModelRepository,
        statistics: TritonStatistics,
        rollouts: Rollouts,
        ground_truth: GroundTruth,
        trace_settings: TraceSettings,
    ) -> None:
        self._repository = repository
        self._trace_settings = trace_settings
        self._statistics = statistics
        self._rollouts = rollouts
        self._ground_truth = ground_truth

    async def model_statistics(self, name: str, version: str) -> list[dict[str, Any]]:
        return self.statistics_now(name, version)

    def statistics_now(self, name: str = "", version: str = "") -> list[dict[str, Any]]:
        if name:
            if version:
                models = [self._repository.get(name, version)]
            else:
                self._repository.get(name)  # raises for an unknown or unready model
                models = self._repository.ready_versions(name)
        else:
            models = self._repository.loaded()
        return [self._statistics.as_dict(m) for m in models]

    async def load_model(
        self, name: str, config: mc.ModelConfig | None, files: dict[str, bytes] | None, actor: str
    ) -> None:
        outcome = await self._repository.load_model(name, config_override=config, files=files, actor=actor)
        if outcome.error or outcome.failed:
            reasons = [outcome.error] if outcome.error else [f"version {v.version}: {v.reason}" for v in outcome.failed]
            serving = ", ".join(v.version_str for v in outcome.after)
            kept = f"; version(s) {serving} keep serving" if serving else ""
            raise ModelLoadError(f"failed to load '{name}': {'; '.join(reasons)}{kept}")

    async def unload_model(self, name: str, actor: str) -> None:
        await self._repository.unload_model(name, actor=actor)

    async def rollout_changed(self, name: str) -> None:
        self._rollouts.reload(name)

    async def rollout_evidence(self, name: str) -> bytes:
        """The rollout's evidence with each version's labels (the accuracy gate's), joined in this process."""
        raw = self._rollouts.local_evidence(name)
        labels = self._ground_truth.wrong_predictions(name)
        if not labels or raw == b"{}":  # nothing labelled, or no rollout evidence kept (a bare core)
            return raw
        evidence = evidence_from_bytes(raw)
        for version, (rows, wrong) in labels.items():
            evidence.labels[int(version)] = Labelled(rows, wrong)
        return orjson.dumps(evidence.to_json())

    async def join_labels(self, name: str, version: str, labels: Sequence[Label]) -> list[Outcome]:
        return self._ground_truth.join(name, version, labels)

    async def performance(self, name: str, version: str) -> PerformanceDocumentJson:
        return self._ground_truth.document(name, version)

    async def trace_settings_changed(self, model: str, changes: Mapping[str, SettingValue]) -> None:
        self._trace_settings.update(model, changes)
