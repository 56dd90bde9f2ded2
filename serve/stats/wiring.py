"""Building a version's StatsRecorder the way the server does: its baseline.json, if present
and matching the model, else none; a stale or mismatched baseline is logged, never used.
What was made of the file is kept per recorder and served (served_baseline.py)."""

from __future__ import annotations

import logging
import weakref
from pathlib import Path

from serve.baseline.model import ModelInfo, check_baseline, file_sha256
from serve.errors import ModelNotFound, NotFound
from serve.repository.repository import ModelRepository, ModelVersion
from serve.settings import ServerSettings
from serve.stats import served_baseline as served
from serve.stats.baseline import BASELINE_FILENAME, Baseline, BaselineError
from serve.stats.http import Lookup
from serve.stats.recorder import StatsOptions, StatsRecorder
from serve.stats.served_baseline import BaselineLookup, ServedBaseline
from serve.stats.windows import ServerInstance
from serve.types import TensorSpec

log = logging.getLogger(__name__)


def judge_baseline(
    model: ModelVersion, model_dir: Path, inputs: list[TensorSpec], outputs: list[TensorSpec]
) -> ServedBaseline:
    """The version's baseline.json, its exact bytes and whether it may be used (and why not)."""
    path = model_dir / BASELINE_FILENAME
    if not path.is_file():
        return ServedBaseline(model.name, model.version, served.MISSING)
    try:
        data = path.read_bytes()
        baseline = Baseline.from_bytes(data, BASELINE_FILENAME)
    except (BaselineError, OSError) as exc:
        return ServedBaseline(model.name, model.version, served.UNREADABLE, problems=(str(exc),))
    filename = (model.config.default_model_filename if model.config is not None else "") or "model.onnx"
    onnx_path = model.path or model_dir / str(model.version) / filename
    info = ModelInfo(
        name=model.name,
        version=model.version,
        model_dir=model_dir,
        onnx_path=onnx_path,
        onnx_sha256=file_sha256(onnx_path),
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


def read_baseline(
    model: ModelVersion, model_dir: Path, inputs: list[TensorSpec], outputs: list[TensorSpec]
) -> tuple[Baseline | None, list[str]]:
    """The version's baseline.json (None if there is none) and why it must not be used (empty = it fits)."""
    judged = judge_baseline(model, model_dir, inputs, outputs)
    return judged.baseline, list(judged.problems)


def row_specs(model: ModelVersion) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Inputs and outputs per row, as the batcher hands them over: rows are the first axis of
    every array, which for a model that does not batch is its own first dimension."""
    if model.max_batch_size > 0:
        return model.inputs, model.outputs

    def per_row(specs: list[TensorSpec]) -> list[TensorSpec]:
        return [TensorSpec(s.name, s.datatype, s.dims[1:]) for s in specs]

    return per_row(model.inputs), per_row(model.outputs)


def load_baseline(
    model: ModelVersion, model_dir: Path, inputs: list[TensorSpec], outputs: list[TensorSpec]
) -> ServedBaseline:
    """The version's baseline.json as judged; when it is there but unusable, the reasons are logged."""
    judged = judge_baseline(model, model_dir, inputs, outputs)
    if judged.problems:
        log.error(
            "model %s version %d: %s is not used: %s",
            model.name,
            model.version,
            model_dir / BASELINE_FILENAME,
            "; ".join(judged.problems),
        )
    return judged


class StatsFactory:
    """The repository's sink factory: one StatsRecorder per loaded version."""

    def __init__(self, settings: ServerSettings, instance: ServerInstance | None = None) -> None:
        self.instance = instance or ServerInstance.create()
        self._options = StatsOptions(
            window_s=settings.stats_window_s,
            horizon_s=settings.stats_horizon_s,
            sample_rate=settings.stats_sample_rate,
            queue_size=settings.stats_queue_size,
        )
        # Per recorder (so per loaded version), the baseline it bins against or why none; weak, so an
        # unloaded version's recorder is not kept alive by this.
        self._baselines: weakref.WeakKeyDictionary[StatsRecorder, ServedBaseline] = weakref.WeakKeyDictionary()

    def __call__(self, model: ModelVersion, model_dir: Path) -> StatsRecorder:
        inputs, outputs = row_specs(model)
        judged = load_baseline(model, model_dir, inputs, outputs)
        recorder = StatsRecorder(
            model.name,
            model.version,
            inputs,
            outputs,
            instance=self.instance,
            baseline=judged.baseline if judged.usable else None,
            options=self._options,
        )
        self._baselines[recorder] = judged
        return recorder

    def served_baseline(self, recorder: StatsRecorder) -> ServedBaseline | None:
        return self._baselines.get(recorder)


def _recorder(repository: ModelRepository, name: str, version: str) -> StatsRecorder:
    model = repository.get(name, version)
    if not isinstance(model.sink, StatsRecorder):
        raise ModelNotFound(f"input statistics are not recorded for model '{name}' (the server runs --no-stats)")
    return model.sink


def recorder_lookup(repository: ModelRepository) -> Lookup:
    def lookup(name: str, version: str) -> StatsRecorder:
        return _recorder(repository, name, version)

    return lookup


def baseline_lookup(repository: ModelRepository, factory: StatsFactory | None) -> BaselineLookup:
    """The baseline each loaded version bins against; NotFound saying why when there is none to use."""

    def lookup(name: str, version: str) -> ServedBaseline:
        model = repository.get(name, version)
        if factory is None:
            raise NotFound(f"model '{name}' has no baseline loaded: the server runs --no-stats and reads none")
        judged = factory.served_baseline(model.sink) if isinstance(model.sink, StatsRecorder) else None
        if judged is None:
            raise NotFound(
                f"model '{name}' version {model.version} has no baseline loaded: its statistics recorder "
                "could not be created (see the server log)"
            )
        return judged.require()

    return lookup
