"""Triton's model_warmup: run the configured sample requests on a freshly loaded version before it
takes traffic, so the first real request does not pay for lazy initialisation."""

from __future__ import annotations

from pathlib import Path, PurePath

import numpy as np

from serve.datatypes import CONFIG_TO_OIP, numpy_dtype
from serve.errors import ModelLoadError, ServeError
from serve.paths import confined
from serve.protocol import model_config_pb2 as mc
from serve.runtime.onnx_runner import OnnxRunner

WARMUP_DIRECTORY = "warmup"


def warm_up(runner: OnnxRunner, config: mc.ModelConfig, model_dir: Path) -> None:
    rng = np.random.default_rng(0)
    for warmup in config.model_warmup:
        batch = max(1, warmup.batch_size)
        feeds: dict[str, np.ndarray] = {}
        for input_name, spec in warmup.inputs.items():
            datatype = CONFIG_TO_OIP.get(mc.DataType.Name(spec.data_type), "")
            if not datatype or datatype == "BF16":
                raise ModelLoadError(f"model_warmup '{warmup.name}': unsupported data_type for '{input_name}'")
            shape = ([batch] if config.max_batch_size > 0 else []) + [int(d) for d in spec.dims]
            feeds[input_name] = _warmup_tensor(datatype, shape, spec, rng, model_dir, warmup.name, input_name)
        try:
            for _ in range(max(1, warmup.count)):
                runner.run_sync(feeds)
        except ServeError as exc:
            raise ModelLoadError(f"model_warmup '{warmup.name}' failed: {exc.message}") from None


def _warmup_tensor(
    datatype: str,
    shape: list[int],
    spec: mc.ModelWarmup.Input,
    rng: np.random.Generator,
    model_dir: Path,
    warmup_name: str,
    input_name: str,
) -> np.ndarray:
    count = int(np.prod(shape)) if shape else 1
    kind = spec.WhichOneof("input_data_type")
    if datatype == "BYTES":
        values = np.empty(count, dtype=object)
        values[:] = [b"" if kind == "zero_data" else str(i).encode() for i in range(count)]
        return values.reshape(shape)
    dtype = numpy_dtype(datatype)
    if kind == "zero_data":
        return np.zeros(shape, dtype=dtype)
    if kind == "random_data":
        if dtype.kind == "f":
            return rng.random(shape).astype(dtype)
        if dtype.kind == "b":
            return rng.integers(0, 2, shape).astype(dtype)
        return rng.integers(0, 100, shape).astype(dtype)
    # Triton reads input_data_file from the model directory's warmup/ folder.
    entry = spec.input_data_file
    what = f"model_warmup '{warmup_name}': input_data_file"
    path = confined(model_dir, PurePath(WARMUP_DIRECTORY, entry), what=what, shown=entry)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        reason = "not found" if isinstance(exc, FileNotFoundError) else type(exc).__name__
        raise ModelLoadError(f"{what} '{entry}' cannot be read ({reason})") from None
    itemsize = dtype.itemsize
    if len(raw) != count * itemsize:
        raise ModelLoadError(
            f"model_warmup '{warmup_name}': {entry} holds {len(raw) // itemsize} elements, "
            f"input '{input_name}' needs {count}"
        )
    return np.frombuffer(raw, dtype=dtype.newbyteorder("<")).reshape(shape)
