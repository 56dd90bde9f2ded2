"""Whether a baseline.json fits a model version: the same model, version, ONNX file and features.

One check for the server (which then ignores a misfit baseline), `serve baseline --check`,
`serve validate` and the monitor, so that all four give the same reasons. Free of
onnxruntime: the monitor uses it too.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from serve.input_stats.baseline import BASELINE_FILENAME, Baseline, baseline_mismatches
from serve.types import TensorSpec

_HASH_CHUNK = 1 << 20


@dataclass(slots=True)
class ModelInfo:
    name: str
    version: int
    model_dir: Path
    onnx_path: Path
    onnx_sha256: str
    inputs: list[TensorSpec]  # per row, as the server's statistics see them (wiring.StatsFactory)
    outputs: list[TensorSpec]
    max_batch_size: int
    first_dim: int | None = None  # a model without batching: its inputs' own first dimension (-1 = any)
    categorical: list[str] = field(default_factory=list)
    # The model onnxruntime runs, where it is not the file as it is: the server's in-memory copy with
    # scikit-learn's ZipMap outputs rewritten to tensors. None: the file itself.
    graph: bytes | None = None

    @property
    def version_str(self) -> str:
        return str(self.version)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def baseline_path(model_dir: Path, version: int | str) -> Path:
    """Where ``serve baseline`` writes by default and the server reads: next to config.pbtxt.

    The file names the version and ONNX hash it was computed for; the server and the
    monitor refuse it for any other (``check_baseline``).
    """
    return model_dir / BASELINE_FILENAME


def find_baseline(model_dir: Path, version: int | str) -> Path | None:
    path = baseline_path(model_dir, version)
    return path if path.is_file() else None


def check_baseline(baseline: Baseline, info: ModelInfo) -> list[str]:
    """Why this baseline must not be used for this model version (empty = it fits).

    Stale: the ONNX file changed since the baseline was computed. Mismatched: another
    model or version, or features the model does not yield (``baseline_mismatches``,
    the server's own check).
    """
    problems: list[str] = []
    model = baseline.model
    if model.get("name") not in (None, info.name):
        problems.append(f"baseline is for model '{model.get('name')}', not '{info.name}'")
    if str(model.get("version", info.version)) != info.version_str:
        problems.append(f"baseline is for version {model.get('version')}, not {info.version}")
    recorded = model.get("onnx_sha256")
    if recorded and recorded != info.onnx_sha256:
        problems.append(
            f"stale baseline: {info.onnx_path.name} changed since the baseline was computed "
            f"(sha256 {info.onnx_sha256[:12]}…, baseline has {recorded[:12]}…); run `serve baseline` again"
        )
    problems += baseline_mismatches(baseline, info.inputs, info.outputs)
    tensors = {t.name for t in info.inputs}
    declared = {f.tensor for f in baseline.features if f.role == "input"}
    if tensors - declared:
        problems.append(f"baseline has no features for model inputs {sorted(tensors - declared)}")
    return problems
