"""Input statistics as the server records them: one StatsRecorder per loaded version, with the
version's baseline.json when it fits the model (a stale or mismatched one is logged, never used),
fed every batch that ran. What was made of the file is kept per version and served
(served_baseline.py)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from serve.errors import ModelLoadError, ModelNotFound, NotFound
from serve.events import Execution, Observer, VersionKey
from serve.input_stats import served_baseline as served
from serve.input_stats.baseline import BASELINE_FILENAME, Baseline, BaselineError
from serve.input_stats.baseline_fit import ModelInfo, check_baseline, file_sha256
from serve.input_stats.recorder import StatsOptions, StatsRecorder
from serve.input_stats.served_baseline import ServedBaseline
from serve.input_stats.windows import ServerInstance
from serve.paths import confined
from serve.repository.repository import ModelVersion, VersionListener
from serve.settings import ServerSettings

log = logging.getLogger(__name__)

# lookup(model name, version or "" for the default version) -> that version's recorder; raises
# ModelNotFound / ModelNotReady like the repository does.
StatsLookup = Callable[[str, str], StatsRecorder]
# documents(model name, version, since) -> the statistics document as JSON, for the whole server.
# Both adapters serve statistics through it.
StatsDocuments = Callable[[str, str, int], Awaitable[bytes]]


def local_documents(lookup: StatsLookup) -> StatsDocuments:
    """Documents of this process's recorders, built in a worker thread: a large one must not stall the loop."""

    async def documents(name: str, version: str, since: int) -> bytes:
        recorder = lookup(name, version)
        return await asyncio.to_thread(recorder.export_json, since)

    return documents


def judge_baseline(model: ModelVersion) -> ServedBaseline:
    """The version's baseline.json, its exact bytes and whether it may be used (and why not).

    ModelLoadError when the file is outside the model directory (a symlink out)."""
    # Outside the model directory (a symlink out) is not a baseline that does not fit: it fails the load.
    path = confined(model.model_dir, BASELINE_FILENAME, what="baseline file")
    if not path.is_file():
        return ServedBaseline(model.name, model.version, served.MISSING)
    try:
        data = path.read_bytes()
        baseline = Baseline.from_bytes(data, BASELINE_FILENAME)
    except (BaselineError, OSError) as exc:
        return ServedBaseline(model.name, model.version, served.UNREADABLE, problems=(str(exc),))
    assert model.model_path is not None
    inputs, outputs = model.row_specs()
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
    problems = tuple(check_baseline(baseline, info))
    declared = baseline.model
    ours = declared.get("name") in (None, model.name) and str(declared.get("version", model.version)) == str(
        model.version
    )
    if not problems:
        status = served.OK
    elif ours and declared.get("onnx_sha256") not in (None, "", info.onnx_sha256):
        status = served.STALE  # this model's baseline, computed for an earlier ONNX file
    else:
        status = served.MISMATCHED
    return ServedBaseline(model.name, model.version, status, data, baseline, info.onnx_sha256, problems)


def read_baseline(model: ModelVersion) -> tuple[Baseline | None, list[str]]:
    """The version's baseline.json (None if there is none) and why it must not be used (empty = it fits)."""
    try:
        judged = judge_baseline(model)
    except ModelLoadError as exc:
        return None, [exc.message]
    return judged.baseline, list(judged.problems)


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
        self._baselines: dict[VersionKey, ServedBaseline] = {}

    def attached(self, version: ModelVersion) -> None:
        inputs, outputs = version.row_specs()
        judged = judge_baseline(version)
        if judged.problems:
            log.error(
                "model %s version %d: %s is not used: %s",
                version.name,
                version.version,
                BASELINE_FILENAME,
                "; ".join(judged.problems),
            )
        self._baselines[version.key] = judged
        try:
            recorder = StatsRecorder(
                version.name,
                version.version,
                inputs,
                outputs,
                instance=self.instance,
                baseline=judged.baseline if judged.usable else None,
                options=self._options,
            )
        except Exception:  # statistics are an add-on: the model serves without them
            log.exception("model %s version %d: statistics not recorded", version.name, version.version)
            return
        self._recorders[version.key] = recorder

    async def detached(self, version: ModelVersion) -> None:
        self._baselines.pop(version.key, None)
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

    def baseline(self, version: ModelVersion) -> ServedBaseline:
        """The baseline the version bins against; NotFound saying why when there is none to use."""
        judged = self._baselines.get(version.key)
        if judged is None:
            raise NotFound(f"model '{version.name}' version {version.version} has no baseline loaded")
        return judged.require()
