"""Request inputs for load tests, generated from a model's metadata and encoded once, ahead of the load.

Shared by the locustfile and the benchmark matrix so that both send the same bodies. A load client should
spend its CPU sending, not encoding: every body here is built before the first timed request.

Shapes: the batch dimension (when the model batches, i.e. ``max_batch_size > 0``) becomes
``rows_per_request``; any other variable dimension (-1) becomes 1.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from serve.codecs.bytes_tensor import serialize_bytes_tensor
from serve.datatypes import JSON_UNSUPPORTED, OIP_TO_WIRE_DTYPE, numpy_dtype

PROTOCOLS = ("http", "http-json", "grpc")
GRPC_INFER_METHOD = "/inference.GRPCInferenceService/ModelInfer"


@dataclass(frozen=True)
class InputSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]  # as in the metadata: -1 for a variable dimension, batch dimension included


@dataclass(frozen=True)
class ModelSpec:
    name: str
    inputs: tuple[InputSpec, ...]
    max_batch_size: int

    @property
    def batches(self) -> bool:
        return self.max_batch_size > 0


@dataclass(frozen=True)
class EncodedRequest:
    body: bytes
    headers: Mapping[str, str]  # HTTP only; empty for gRPC
    rows: int


def model_spec(metadata: Mapping[str, Any], config: Mapping[str, Any] | None) -> ModelSpec:
    """From the metadata JSON (``GET /v2/models/{m}``) and config JSON (``.../config``, may be missing)."""
    inputs = tuple(
        InputSpec(str(i["name"]), str(i["datatype"]), tuple(int(d) for d in i["shape"])) for i in metadata["inputs"]
    )
    if config is not None and "max_batch_size" in config:
        max_batch = int(config["max_batch_size"])
    else:
        # Without a config, a leading -1 on every input is the best sign that the model batches.
        max_batch = 0 if not inputs or any(not i.shape or i.shape[0] != -1 for i in inputs) else 1 << 30
    return ModelSpec(str(metadata["name"]), inputs, max_batch)


def request_shape(model: ModelSpec, spec: InputSpec, rows: int) -> list[int]:
    if model.batches:
        return [rows, *(d if d >= 0 else 1 for d in spec.shape[1:])]
    return [d if d >= 0 else 1 for d in spec.shape]


def rows_per_request(model: ModelSpec, rows: int) -> int:
    """Rows one request carries: ``rows`` for a batching model, else each request is one sample."""
    return rows if model.batches else 1


def random_tensor(datatype: str, shape: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    dtype = numpy_dtype(datatype)
    if datatype == "BYTES":
        flat = [f"item-{v}".encode() for v in rng.integers(0, 1_000_000, int(np.prod(shape)))]
        return np.array(flat, dtype=object).reshape(shape)
    if datatype == "BOOL":
        return rng.integers(0, 2, shape).astype(np.bool_)
    if dtype.kind == "u":
        return rng.integers(0, 100, shape).astype(dtype)
    if dtype.kind == "i":
        return rng.integers(-50, 50, shape).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


def random_inputs(model: ModelSpec, rows: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {s.name: random_tensor(s.datatype, request_shape(model, s, rows), rng) for s in model.inputs}


def load_input_file(path: Path, model: ModelSpec) -> dict[str, np.ndarray]:
    """Arrays to replay, first axis = rows (samples for a model that does not batch).

    ``.npz`` maps input names to arrays; ``.npy`` and ``.csv`` (one row per line, optional header) feed the
    model's first input, and the other inputs are generated.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
        unknown = set(arrays) - {s.name for s in model.inputs}
        if unknown:
            raise ValueError(f"{path}: arrays {sorted(unknown)} are not inputs of model '{model.name}'")
        return arrays
    first = model.inputs[0]
    if suffix == ".npy":
        return {first.name: np.load(path, allow_pickle=False)}
    if suffix == ".csv":
        return {first.name: _read_csv(path, first.datatype)}
    raise ValueError(f"{path}: expected a .npy, .npz or .csv file")


def _read_csv(path: Path, datatype: str) -> np.ndarray:
    with path.open(newline="") as f:
        rows = [row for row in csv.reader(f) if row]
    if not rows:
        raise ValueError(f"{path}: no rows")
    if datatype != "BYTES" and not _is_numeric_row(rows[0]):
        rows = rows[1:]  # a header line
    if len({len(r) for r in rows}) != 1:
        raise ValueError(f"{path}: rows have different numbers of columns")
    text = np.array(rows, dtype=str)
    if datatype == "BYTES":
        encoded: np.ndarray = np.vectorize(str.encode, otypes=[object])(text)
        return encoded
    if datatype == "BOOL":
        return np.isin(np.char.lower(text), ["1", "true", "yes"])
    return text.astype(numpy_dtype(datatype))


def _is_numeric_row(row: Sequence[str]) -> bool:
    return all(_is_number(cell) or cell.strip().lower() in ("true", "false") for cell in row)


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def replay_inputs(
    model: ModelSpec,
    arrays: Mapping[str, np.ndarray],
    rows: int,
    rng: np.random.Generator,
    limit: int = 100_000,
) -> list[dict[str, np.ndarray]]:
    """Split file arrays into per-request inputs of ``rows`` rows; inputs not in the file are generated."""
    per_request = rows_per_request(model, rows)
    total = min(len(a) for a in arrays.values())
    if total == 0:
        raise ValueError("the input file has no rows")
    starts = range(0, max(total - per_request, 0) + 1, per_request)
    requests = []
    for start in islice(starts, limit):
        inputs = random_inputs(model, rows, rng)
        for spec in model.inputs:
            if spec.name not in arrays:
                continue
            chunk = arrays[spec.name][start : start + per_request]
            target = request_shape(model, spec, len(chunk))
            if model.batches:
                # Keep the file's own row shape when it does not fit the model: the server will say why.
                inputs[spec.name] = chunk.reshape(target) if chunk.size == np.prod(target) else chunk
            else:
                sample = chunk[0]
                inputs[spec.name] = sample.reshape(target) if sample.size == np.prod(target) else sample
        requests.append(inputs)
    return requests


def _wire_bytes(datatype: str, array: np.ndarray) -> bytes:
    if datatype == "BYTES":
        return serialize_bytes_tensor(array)
    return np.ascontiguousarray(array, dtype=OIP_TO_WIRE_DTYPE[datatype]).tobytes()


def _json_data(datatype: str, array: np.ndarray) -> list[Any]:
    flat = array.reshape(-1)
    if datatype == "BYTES":
        return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in flat]
    return flat.tolist()


def encode(model: ModelSpec, inputs: Mapping[str, np.ndarray], protocol: str, rows: int) -> EncodedRequest:
    datatypes = {s.name: s.datatype for s in model.inputs}
    if protocol == "http-json":
        bad = [n for n in inputs if datatypes[n] in JSON_UNSUPPORTED]
        if bad:  # fail before the load starts rather than with a 400 per request
            raise ValueError(f"inputs {bad} are {datatypes[bad[0]]}, not JSON-encodable; use http or grpc")
        body = orjson.dumps({"inputs": [
            {"name": n, "shape": list(a.shape), "datatype": datatypes[n], "data": _json_data(datatypes[n], a)}
            for n, a in inputs.items()
        ]})  # fmt: skip
        return EncodedRequest(body, {"Content-Type": "application/json"}, rows)
    raw = {n: _wire_bytes(datatypes[n], a) for n, a in inputs.items()}
    if protocol == "http":
        header = orjson.dumps({
            "inputs": [
                {"name": n, "shape": list(a.shape), "datatype": datatypes[n],
                 "parameters": {"binary_data_size": len(raw[n])}}
                for n, a in inputs.items()
            ],
            "parameters": {"binary_data_output": True},
        })  # fmt: skip
        headers = {
            "Content-Type": "application/octet-stream",
            "Inference-Header-Content-Length": str(len(header)),
        }
        return EncodedRequest(header + b"".join(raw.values()), headers, rows)
    if protocol == "grpc":
        from serve.protocol import grpc_service_pb2 as pb

        request = pb.ModelInferRequest(model_name=model.name)
        for n, a in inputs.items():
            request.inputs.add(name=n, datatype=datatypes[n], shape=list(a.shape))
            request.raw_input_contents.append(raw[n])
        return EncodedRequest(request.SerializeToString(), {}, rows)
    raise ValueError(f"unknown protocol '{protocol}'; expected one of {', '.join(PROTOCOLS)}")


def build_requests(
    model: ModelSpec,
    protocol: str,
    rows: int = 1,
    *,
    count: int = 16,
    seed: int = 0,
    input_file: Path | None = None,
    max_requests: int = 100_000,
) -> list[EncodedRequest]:
    """Pre-encoded requests to cycle through: ``count`` random ones, or every chunk of ``input_file``."""
    if rows < 1:
        raise ValueError("rows per request must be at least 1")
    rng = np.random.default_rng(seed)
    per_request = rows_per_request(model, rows)
    if input_file is not None:
        arrays = load_input_file(input_file, model)
        inputs_list = replay_inputs(model, arrays, rows, rng, max_requests)
    else:
        inputs_list = [random_inputs(model, rows, rng) for _ in range(count)]
    return [encode(model, inputs, protocol, per_request) for inputs in inputs_list]


def grpc_metadata_as_json(metadata: Any, config: Any | None) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """gRPC ModelMetadataResponse / ModelConfigResponse as the HTTP JSON that ``model_spec`` reads."""
    meta = {
        "name": metadata.name,
        "inputs": [{"name": i.name, "datatype": i.datatype, "shape": list(i.shape)} for i in metadata.inputs],
    }
    cfg = None if config is None else {"max_batch_size": config.config.max_batch_size}
    return meta, cfg
