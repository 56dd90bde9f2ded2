"""`serve validate`: load every model as the server would and run one inference on each."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TextIO

import numpy as np

from serve.core import InferenceService
from serve.datatypes import numpy_dtype
from serve.errors import ServeError
from serve.input_stats.baseline import BASELINE_FILENAME
from serve.input_stats.wiring import read_baseline
from serve.repository.model_version import READY, ModelVersion
from serve.settings import ServerSettings
from serve.types import InferRequest, InputTensor, TensorSpec


def sample_input(spec: TensorSpec, batching: bool, rng: np.random.Generator) -> np.ndarray:
    """A small input of the right datatype and shape: one row, each variable dimension 1."""
    shape = ([1] if batching else []) + [d if d >= 0 else 1 for d in spec.dims]
    count = int(np.prod(shape)) if shape else 1
    if spec.datatype == "BYTES":
        values = np.empty(count, dtype=object)
        values[:] = [f"sample-{i}".encode() for i in range(count)]
        return values.reshape(shape)
    dtype = numpy_dtype(spec.datatype)
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    if dtype.kind == "b":
        return rng.integers(0, 2, shape).astype(dtype)
    return rng.integers(0, 10, shape).astype(dtype)


def sample_request(model: ModelVersion, seed: int = 0) -> InferRequest:
    rng = np.random.default_rng(seed)
    batching = model.max_batch_size > 0
    inputs = []
    for spec in model.inputs:
        data = sample_input(spec, batching, rng)
        inputs.append(InputTensor(spec.name, spec.datatype, data))
    return InferRequest(model_name=model.name, model_version=model.version_str, inputs=inputs)


async def validate_repository(settings: ServerSettings, root: Path, out: TextIO | None = None) -> int:
    # Looked up per call, not bound as a default at import: tests and callers may swap sys.stdout.
    out = out if out is not None else sys.stdout
    service = InferenceService.create(root, settings)
    repository = service.repository
    rows: list[tuple[str, str, str, str]] = []
    try:
        await repository.load_all()
        for entry in repository.index():
            name, version, state, reason = entry["name"], entry["version"], entry["state"], entry["reason"]
            if state != READY:
                rows.append((name, version or "-", "FAILED", reason))
                continue
            model = repository.get(name, version)
            try:
                response = await service.infer(sample_request(model))
            except ServeError as exc:
                rows.append((name, version, "FAILED", f"inference failed: {exc.message}"))
                continue
            shapes = ", ".join(f"{o.name}{list(o.shape)}" for o in response.outputs)
            baseline, problems = read_baseline(model)
            if problems:
                rows.append((name, version, "FAILED", f"{BASELINE_FILENAME} is not usable: {'; '.join(problems)}"))
            else:
                with_baseline = f"; {BASELINE_FILENAME} fits" if baseline is not None else ""
                notes = "".join(f"; {note}" for note in model.notes)  # e.g. a ZipMap served as a tensor
                rows.append((name, version, "OK", f"inference returned {shapes}{with_baseline}{notes}"))
    finally:
        await service.close()
    if not rows:
        rows.append(("-", "-", "FAILED", f"no models found in {root}"))
    widths = [max(len(r[i]) for r in [("MODEL", "VERSION", "STATUS", "REASON"), *rows]) for i in range(3)]
    header = ("MODEL", "VERSION", "STATUS", "REASON")
    for row in [header, *rows]:
        out.write("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:3])) + "  " + row[3] + "\n")
    failed = sum(1 for r in rows if r[2] != "OK")
    out.write(f"\n{len(rows) - failed} of {len(rows)} model version(s) OK\n")
    return 1 if failed else 0
