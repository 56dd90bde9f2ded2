"""Input statistics as the server records them: one StatsRecorder per loaded version, with the
version's baseline.json when it fits the model (a stale or mismatched one is logged, never used),
fed every batch that ran."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from serve.errors import ModelNotFound
from serve.events import Execution, Observer, VersionKey
from serve.repository.repository import ModelVersion, VersionListener
from serve.settings import ServerSettings
from serve.stats.baseline import BASELINE_FILENAME, Baseline, BaselineError
from serve.stats.baseline_fit import ModelInfo, check_baseline, file_sha256
from serve.stats.recorder import StatsOptions, StatsRecorder
from serve.stats.windows import ServerInstance
from serve.types import TensorSpec

log = logging.getLogger(__name__)

# lookup(model name, version or "" for the default version) -> that version's recorder; raises
# ModelNotFound / ModelNotReady like the repository does. Both adapters serve statistics through it.
StatsLookup = Callable[[str, str], StatsRecorder]


def row_specs(model: ModelVersion) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Inputs and outputs per row, as the batcher hands them over: rows are the first axis of
    every array, which for a model that does not batch is its own first dimension."""
    if model.max_batch_size > 0:
        return model.inputs, model.outputs

    def per_row(specs: list[TensorSpec]) -> list[TensorSpec]:
        return [TensorSpec(s.name, s.datatype, s.dims[1:]) for s in specs]

    return per_row(model.inputs), per_row(model.outputs)


def read_baseline(model: ModelVersion) -> tuple[Baseline | None, list[str]]:
    """The version's baseline.json (None if there is none) and why it must not be used (empty = it fits)."""
    path = model.model_dir / BASELINE_FILENAME
    if not path.is_file():
        return None, []
    try:
        baseline = Baseline.load(path)
    except (BaselineError, OSError) as exc:
        return None, [str(exc)]
    inputs, outputs = row_specs(model)
    info = ModelInfo(
        name=model.name,
        version=model.version,
        model_dir=model.model_dir,
        onnx_path=model.model_path,
        onnx_sha256=file_sha256(model.model_path),
        inputs=inputs,
        outputs=outputs,
        max_batch_size=model.max_batch_size,
    )
    # The same check as `serve baseline --check` and the monitor, so all three give the same reasons.
    return baseline, check_baseline(baseline, info)


def load_baseline(model: ModelVersion) -> Baseline | None:
    """The version's baseline.json if it fits the model; otherwise None, with the reasons logged."""
    baseline, problems = read_baseline(model)
    if problems:
        log.error(
            "model %s version %d: %s is not used: %s", model.name, model.version, BASELINE_FILENAME, "; ".join(problems)
        )
        return None
    return baseline


class InputStatistics(Observer, VersionListener):
    """One StatsRecorder per loaded version, fed by every batch that ran."""

    def __init__(self, settings: ServerSettings, instance: ServerInstance | None = None) -> None:
        self.instance = instance or ServerInstance.create()
        self._options = StatsOptions(
            window_s=settings.stats_window_s,
            horizon_s=settings.stats_horizon_s,
            sample_rate=settings.stats_sample_rate,
            queue_size=settings.stats_queue_size,
        )
        self._recorders: dict[VersionKey, StatsRecorder] = {}

    def attached(self, version: ModelVersion) -> None:
        inputs, outputs = row_specs(version)
        try:
            recorder = StatsRecorder(
                version.name,
                version.version,
                inputs,
                outputs,
                instance=self.instance,
                baseline=load_baseline(version),
                options=self._options,
            )
        except Exception:  # statistics are an add-on: the model serves without them
            log.exception("model %s version %d: statistics not recorded", version.name, version.version)
            return
        self._recorders[version.key] = recorder

    async def detached(self, version: ModelVersion) -> None:
        recorder = self._recorders.pop(version.key, None)
        if recorder is not None:
            await asyncio.to_thread(recorder.close)

    def on_execution(self, execution: Execution) -> None:
        if execution.error is None:
            recorder = self._recorders.get(execution.key)
            if recorder is not None:
                recorder.submit(execution.inputs, execution.outputs)

    def recorder(self, version: ModelVersion) -> StatsRecorder:
        recorder = self._recorders.get(version.key)
        if recorder is None:
            raise ModelNotFound(f"input statistics are not recorded for model '{version.name}'")
        return recorder
