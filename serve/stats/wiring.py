"""Building a version's StatsRecorder the way the server does: its baseline.json, if present
and matching the model, else none; a stale or mismatched baseline is logged, never used."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from serve.errors import ModelNotFound
from serve.repository.repository import ModelRepository, ModelVersion
from serve.settings import ServerSettings
from serve.stats.baseline import Baseline, BaselineError, baseline_mismatches
from serve.stats.recorder import StatsOptions, StatsRecorder
from serve.stats.windows import ServerInstance
from serve.types import TensorSpec

log = logging.getLogger(__name__)

BASELINE_FILENAME = "baseline.json"


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_baseline(model: ModelVersion, model_dir: Path, inputs: list[TensorSpec], outputs: list[TensorSpec]
                  ) -> Baseline | None:
    path = model_dir / BASELINE_FILENAME
    if not path.is_file():
        return None
    try:
        baseline = Baseline.load(path)
    except (BaselineError, OSError) as exc:
        log.error("model %s version %d: %s ignored: %s", model.name, model.version, BASELINE_FILENAME, exc)
        return None
    problems = baseline_mismatches(baseline, inputs, outputs)
    recorded_hash = (baseline.model or {}).get("onnx_sha256")
    if recorded_hash and model.config is not None:
        onnx_path = model_dir / str(model.version) / (model.config.default_model_filename or "model.onnx")
        if onnx_path.is_file() and _file_sha256(onnx_path) != recorded_hash:
            problems.append(f"it was computed for another ONNX file (sha256 {recorded_hash[:12]}…)")
    if problems:
        log.error(
            "model %s version %d: %s is stale and is not used: %s",
            model.name, model.version, BASELINE_FILENAME, "; ".join(problems),
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
        # Rows are the first axis of every array the batcher hands over; a model that does not
        # batch has its own first dimension there instead.
        batching = model.max_batch_size > 0

        def row_specs(specs: list[TensorSpec]) -> list[TensorSpec]:
            return specs if batching else [TensorSpec(s.name, s.datatype, s.dims[1:]) for s in specs]

        inputs, outputs = row_specs(model.inputs), row_specs(model.outputs)
        baseline = load_baseline(model, model_dir, inputs, outputs)
        return StatsRecorder(
            model.name, model.version, inputs, outputs,
            instance=self.instance, baseline=baseline, options=self._options,
        )


def recorder_lookup(repository: ModelRepository):  # noqa: ANN201 - returns serve.stats.http.Lookup
    def lookup(name: str, version: str) -> StatsRecorder:
        model = repository.get(name, version)
        if not isinstance(model.sink, StatsRecorder):
            raise ModelNotFound(f"input statistics are not recorded for model '{name}' (the server runs --no-stats)")
        return model.sink

    return lookup
