"""Building a version's StatsRecorder the way the server does: its baseline.json, if present
and matching the model, else none; a stale or mismatched baseline is logged, never used."""

from __future__ import annotations

import logging
from pathlib import Path

from serve.baseline.model import ModelInfo, check_baseline, file_sha256
from serve.errors import ModelNotFound
from serve.repository.repository import ModelRepository, ModelVersion
from serve.settings import ServerSettings
from serve.stats.baseline import BASELINE_FILENAME, Baseline, BaselineError
from serve.stats.recorder import StatsOptions, StatsRecorder
from serve.stats.windows import ServerInstance
from serve.types import TensorSpec

log = logging.getLogger(__name__)


def read_baseline(
    model: ModelVersion, model_dir: Path, inputs: list[TensorSpec], outputs: list[TensorSpec]
) -> tuple[Baseline | None, list[str]]:
    """The version's baseline.json (None if there is none) and why it must not be used (empty = it fits)."""
    path = model_dir / BASELINE_FILENAME
    if not path.is_file():
        return None, []
    try:
        baseline = Baseline.load(path)
    except (BaselineError, OSError) as exc:
        return None, [str(exc)]
    filename = (model.config.default_model_filename if model.config is not None else "") or "model.onnx"
    onnx_path = model_dir / str(model.version) / filename
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
    return baseline, check_baseline(baseline, info)


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
) -> Baseline | None:
    """The version's baseline.json if it fits the model; otherwise None, with the reasons logged."""
    baseline, problems = read_baseline(model, model_dir, inputs, outputs)
    if problems:
        log.error(
            "model %s version %d: %s is not used: %s",
            model.name,
            model.version,
            BASELINE_FILENAME,
            "; ".join(problems),
        )
        return None
    return baseline


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

    def __call__(self, model: ModelVersion, model_dir: Path) -> StatsRecorder:
        inputs, outputs = row_specs(model)
        baseline = load_baseline(model, model_dir, inputs, outputs)
        return StatsRecorder(
            model.name,
            model.version,
            inputs,
            outputs,
            instance=self.instance,
            baseline=baseline,
            options=self._options,
        )


def recorder_lookup(repository: ModelRepository):  # noqa: ANN201 - returns serve.stats.http.Lookup
    def lookup(name: str, version: str) -> StatsRecorder:
        model = repository.get(name, version)
        if not isinstance(model.sink, StatsRecorder):
            raise ModelNotFound(f"input statistics are not recorded for model '{name}' (the server runs --no-stats)")
        return model.sink

    return lookup
