"""Scans a Triton-layout model repository, loads and unloads model versions, reports their state.

    <root>/<model>/config.pbtxt        optional
    <root>/<model>/<version>/model.onnx

A model that fails to load is listed with its reason and never stops the others.
Model names are single path components, so no path built here leaves the root.
"""

from __future__ import annotations

import asyncio
import logging
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import onnxruntime as ort

from serve.batching.batcher import Batcher, BatchObserver
from serve.datatypes import CONFIG_TO_OIP, numpy_dtype
from serve.errors import InvalidInput, ModelLoadError, ModelNotFound, ModelNotReady, ServeError
from serve.metrics.statistics import InferenceStatistics
from serve.protocol import model_config_pb2 as mc
from serve.repository import model_config as cfg
from serve.repository.labels import read_labels
from serve.repository.mlflow import MlflowModel, check_signature, read_mlmodel, signature_outputs
from serve.runtime.model_file import prepare_model
from serve.runtime.onnx_runner import OnnxRunner
from serve.runtime.providers import CUDA
from serve.settings import ServerSettings
from serve.types import TensorSpec

log = logging.getLogger(__name__)

_MODEL_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}$")

READY = "READY"
LOADING = "LOADING"
UNLOADING = "UNLOADING"
UNAVAILABLE = "UNAVAILABLE"


@dataclass(slots=True)
class ModelVersion:
    name: str
    version: int
    state: str = LOADING
    reason: str = ""
    config: mc.ModelConfig | None = None
    inputs: list[TensorSpec] = field(default_factory=list)
    outputs: list[TensorSpec] = field(default_factory=list)
    runner: OnnxRunner | None = None
    batcher: Batcher | None = None
    stats: InferenceStatistics = field(default_factory=InferenceStatistics)
    sink: BatchSink | None = None
    load_seconds: float = 0.0
    # Class labels by output name, for the classification extension (label_filename, ZipMap labels).
    labels: dict[str, list[str]] = field(default_factory=dict)
    # How the model is served, shown in model metadata "parameters" (ZipMap rewrite, MLflow lineage).
    parameters: dict[str, str] = field(default_factory=dict)
    # The same for people: logged at load and shown by `serve validate`.
    notes: list[str] = field(default_factory=list)

    @property
    def version_str(self) -> str:
        return str(self.version)

    @property
    def max_batch_size(self) -> int:
        return self.config.max_batch_size if self.config is not None else 0


ObserverFactory = Callable[[ModelVersion], BatchObserver | None]


class BatchSink(Protocol):
    """Sees every executed batch of one version (input statistics); submit never blocks."""

    def submit(self, inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]) -> None: ...

    def close(self, timeout_s: float = 5.0) -> None: ...


# Called once a version has loaded, with its directory; None = no sink for it.
SinkFactory = Callable[[ModelVersion, Path], BatchSink | None]


class _FanOut:
    def __init__(self, observers: list[BatchObserver]) -> None:
        self._observers = observers

    def on_execution(self, *args: object) -> None:
        for observer in self._observers:
            observer.on_execution(*args)  # type: ignore[arg-type]


def valid_model_name(name: str) -> bool:
    return bool(_MODEL_NAME.match(name)) and name not in (".", "..")


class ModelRepository:
    def __init__(
        self,
        root: Path,
        settings: ServerSettings,
        *,
        observer_factory: ObserverFactory | None = None,
        on_state_change: Callable[[ModelVersion], None] | None = None,
        sink_factory: SinkFactory | None = None,
    ) -> None:
        self.root = root.resolve()
        self._settings = settings
        self._observer_factory = observer_factory
        self._on_state_change = on_state_change
        self._sink_factory = sink_factory
        self._versions: dict[str, dict[int, ModelVersion]] = {}
        self._model_errors: dict[str, str] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._overrides: dict[str, Path] = {}  # models loaded from files sent with a load request

    # ---- discovery -------------------------------------------------------------------------
    def model_names(self) -> list[str]:
        names = set(self._versions) | set(self._model_errors)
        if self.root.is_dir():
            for entry in self.root.iterdir():
                if entry.is_dir() and valid_model_name(entry.name):
                    names.add(entry.name)
        return sorted(names)

    def _model_dir(self, name: str) -> Path:
        if not valid_model_name(name):
            raise ModelNotFound(f"'{name}' is not a valid model name")
        return self._overrides.get(name, self.root / name)

    # ---- loading ---------------------------------------------------------------------------
    async def load_all(self, names: list[str] | None = None) -> None:
        for name in names if names is not None else self.model_names():
            await self.load_model(name)

    async def load_model(
        self, name: str, *, config_override: mc.ModelConfig | None = None, files: dict[str, bytes] | None = None
    ) -> None:
        """(Re)load a model: versions chosen by its version policy are loaded, others unloaded."""
        if not valid_model_name(name):
            raise InvalidInput(f"'{name}' is not a valid model name")
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            if files:
                self._overrides[name] = self._write_override(name, files, config_override)
            model_dir = self._model_dir(name)
            if not model_dir.is_dir():
                raise ModelNotFound(f"model '{name}' is not in the model repository")
            self._model_errors.pop(name, None)
            try:
                raw, from_file = (config_override, True) if config_override is not None else cfg.read_config(model_dir)
                cfg.check_supported(raw)
                policy = cfg.version_policy(raw)
                available = sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())
                chosen = policy.select(available)
                if not chosen:
                    raise ModelLoadError(
                        f"no version directory matches the version policy (found {available or 'none'})"
                    )
            except ServeError as exc:
                self._model_errors[name] = exc.message
                log.error("model %s failed to load: %s", name, exc.message)
                await self._unload_versions(name, list(self._versions.get(name, {})))
                return
            current = self._versions.setdefault(name, {})
            await self._unload_versions(name, [v for v in current if v not in chosen])
            for version in chosen:
                old = current.get(version)
                entry = ModelVersion(name, version)
                current[version] = entry if old is None or old.state != READY else old
                new = await self._load_version(entry, model_dir, raw, from_file)
                if old is not None and old.state == READY and new.state == READY:
                    current[version] = new
                    await self._close_version(old)
                elif new.state == READY or old is None or old.state != READY:
                    current[version] = new
                self._notify(current[version])

    async def _load_version(
        self, entry: ModelVersion, model_dir: Path, raw: mc.ModelConfig, from_file: bool
    ) -> ModelVersion:
        started = time.perf_counter()
        try:
            built = await asyncio.to_thread(self._build, entry.name, entry.version, model_dir, raw, from_file)
        except ServeError as exc:
            entry.state, entry.reason = UNAVAILABLE, exc.message
            log.error("model %s version %d failed to load: %s", entry.name, entry.version, exc.message)
            return entry
        except Exception as exc:  # a broken file can raise anything; the server must go on
            entry.state, entry.reason = UNAVAILABLE, f"{type(exc).__name__}: {exc}"
            log.exception("model %s version %d failed to load", entry.name, entry.version)
            return entry
        runner, config = built.runner, built.config
        entry.runner, entry.config = runner, config
        entry.labels, entry.parameters, entry.notes = built.labels, built.parameters, built.notes
        for note in built.notes:
            log.info("model %s version %d: %s", entry.name, entry.version, note)
        entry.inputs = cfg.tensor_specs(config.input)
        entry.outputs = cfg.tensor_specs(config.output)
        observers: list[BatchObserver] = [entry.stats]
        if self._observer_factory is not None:
            extra = self._observer_factory(entry)
            if extra is not None:
                observers.append(extra)
        if self._sink_factory is not None:
            try:
                entry.sink = self._sink_factory(entry, model_dir)
            except Exception:  # statistics are an add-on: the model serves without them
                log.exception("model %s version %d: statistics not recorded", entry.name, entry.version)
        entry.batcher = Batcher(
            runner.run,
            cfg.batching_policy(config, runner.instance_count),
            name=f"{entry.name}:{entry.version}",
            observer=_FanOut(observers),
            on_batch=entry.sink.submit if entry.sink is not None else None,
        )
        entry.batcher.start()
        entry.load_seconds = time.perf_counter() - started
        entry.state, entry.reason = READY, ""
        log.info(
            "model %s version %d ready in %.2fs on %s (max_batch_size %d, %d instance(s))",
            entry.name,
            entry.version,
            entry.load_seconds,
            runner.providers[0],
            config.max_batch_size,
            runner.instance_count,
        )
        return entry

    def _build(self, name: str, version: int, model_dir: Path, raw: mc.ModelConfig, from_file: bool) -> _Built:
        version_dir = model_dir / str(version)
        mlmodel = read_mlmodel(version_dir)  # an MLflow model directory names its ONNX file
        filename = mlmodel.model_file if mlmodel else (raw.default_model_filename or cfg.DEFAULT_MODEL_FILENAME)
        path = version_dir / filename
        if not path.is_file():
            raise ModelLoadError(f"{version}/{filename} not found")
        options = cfg.runtime_options(
            raw,
            allow_spinning=self._settings.ort_allow_spinning,
            intra_op_threads=self._settings.ort_intra_op_threads,
        )
        prepared = prepare_model(path, version_dir, rewrite_zipmap=cfg.rewrites_zipmap(raw))
        runner = OnnxRunner(path, options, graph=prepared.graph, external_data_dir=prepared.external_data_dir)
        try:
            if mlmodel is not None:
                check_signature(mlmodel, runner.inputs, runner.outputs)
            config = cfg.complete_config(
                raw,
                name=name,
                from_file=from_file,
                inputs=runner.inputs,
                outputs=runner.outputs,
                default_max_batch_size=self._settings.default_max_batch_size,
                cuda_available=CUDA in ort.get_available_providers(),
            )
            cfg.batching_policy(config, runner.instance_count)  # a bad policy fails the load, here
            batching = config.max_batch_size > 0
            runner.reshape_scalars(
                cfg.scalars_as_one(config.input, runner.inputs, batching),
                cfg.scalars_as_one(config.output, runner.outputs, batching),
            )
            built = _Built(runner, config)
            if mlmodel is not None:
                _apply_mlflow(mlmodel, raw, config, built)
            for zipmap in prepared.zipmaps:
                built.labels[zipmap.output] = list(zipmap.labels)
                built.notes.append(
                    f"ZipMap output '{zipmap.output}' is served as FP32 [-1, {zipmap.classes}] "
                    f"(its input '{zipmap.source}'), with the ZipMap's class labels"
                )
            if prepared.zipmaps:
                built.parameters["zipmap_outputs"] = ",".join(z.output for z in prepared.zipmaps)
            built.labels.update(read_labels(config, model_dir))
            _warm_up(runner, config, model_dir)
        except BaseException:
            runner.close()
            raise
        return built

    def _write_override(self, name: str, files: dict[str, bytes], config: mc.ModelConfig | None) -> Path:
        if config is None:
            raise InvalidInput("loading a model from files needs the 'config' parameter too")
        base = Path(tempfile.mkdtemp(prefix=f"serve-{name}-"))
        for rel, content in files.items():
            target = (base / rel).resolve()
            if base not in target.parents:
                shutil.rmtree(base, ignore_errors=True)
                raise InvalidInput(f"file parameter 'file:{rel}' points outside the model directory")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
        return base

    # ---- unloading -------------------------------------------------------------------------
    async def unload_model(self, name: str) -> None:
        if name not in self._versions and name not in self._model_errors:
            if not (self.root / name).is_dir() or not valid_model_name(name):
                raise ModelNotFound(f"model '{name}' is not in the model repository")
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            await self._unload_versions(name, list(self._versions.get(name, {})))
            self._model_errors.pop(name, None)
            override = self._overrides.pop(name, None)
            if override is not None:
                shutil.rmtree(override, ignore_errors=True)

    async def _unload_versions(self, name: str, versions: list[int]) -> None:
        current = self._versions.get(name, {})
        for version in versions:
            entry = current.get(version)
            if entry is None:
                continue
            entry.state, entry.reason = UNLOADING, ""
            self._notify(entry)
            await self._close_version(entry)
            entry.state, entry.reason = UNAVAILABLE, "unloaded"
            self._notify(entry)
            del current[version]

    async def _close_version(self, entry: ModelVersion) -> None:
        if entry.batcher is not None:
            await entry.batcher.close(self._settings.shutdown_grace_s)
        if entry.runner is not None:
            await asyncio.to_thread(entry.runner.close)
        if entry.sink is not None:
            await asyncio.to_thread(entry.sink.close)

    async def close(self) -> None:
        for name in list(self._versions):
            await self._unload_versions(name, list(self._versions[name]))
        for path in self._overrides.values():
            shutil.rmtree(path, ignore_errors=True)

    def _notify(self, entry: ModelVersion) -> None:
        if self._on_state_change is not None:
            self._on_state_change(entry)

    # ---- lookup ----------------------------------------------------------------------------
    def get(self, name: str, version: str = "") -> ModelVersion:
        versions = self._versions.get(name)
        if not versions:
            if name in self._model_errors:
                raise ModelNotReady(f"model '{name}' is not ready: {self._model_errors[name]}")
            raise ModelNotFound(f"model '{name}' is not found")
        if version:
            if not version.isdigit():
                raise ModelNotFound(f"model '{name}' has no version '{version}' (versions are integers)")
            entry = versions.get(int(version))
            if entry is None:
                raise ModelNotFound(f"model '{name}' has no version {version}")
        else:
            ready = [v for v in versions.values() if v.state == READY]
            entry = max(ready, key=lambda v: v.version) if ready else max(versions.values(), key=lambda v: v.version)
        if entry.state != READY:
            reason = f": {entry.reason}" if entry.reason else ""
            raise ModelNotReady(f"model '{name}' version {entry.version} is {entry.state.lower()}{reason}")
        return entry

    def ready_versions(self, name: str) -> list[ModelVersion]:
        return sorted((v for v in self._versions.get(name, {}).values() if v.state == READY), key=lambda v: v.version)

    def loaded(self) -> list[ModelVersion]:
        return [v for versions in self._versions.values() for v in versions.values() if v.state == READY]

    def all_ready(self) -> bool:
        if self._model_errors:
            return False
        return all(v.state == READY for versions in self._versions.values() for v in versions.values())

    def index(self, ready_only: bool = False) -> list[dict[str, str]]:
        rows: list[dict[str, str]] = []
        for name in self.model_names():
            versions = self._versions.get(name, {})
            if name in self._model_errors:
                rows.append({"name": name, "version": "", "state": UNAVAILABLE, "reason": self._model_errors[name]})
            elif not versions:
                rows.append({"name": name, "version": "", "state": UNAVAILABLE, "reason": "unloaded"})
            for version in sorted(versions):
                entry = versions[version]
                rows.append({"name": name, "version": str(version), "state": entry.state, "reason": entry.reason})
        if ready_only:
            rows = [r for r in rows if r["state"] == READY]
        return rows


def _apply_mlflow(mlmodel: MlflowModel, raw: mc.ModelConfig, config: mc.ModelConfig, built: _Built) -> None:
    config.default_model_filename = mlmodel.model_file
    served = signature_outputs(mlmodel)
    if served is not None and not raw.output:  # config.pbtxt outputs, where given, win
        by_name = {o.name: o for o in config.output}
        kept = [mc.ModelOutput() for _ in served]
        for copy, name in zip(kept, served, strict=True):
            copy.CopyFrom(by_name[name])
        del config.output[:]
        config.output.extend(kept)
    built.parameters.update(mlmodel.lineage)
    run = mlmodel.lineage.get("mlflow_run_id", "unknown")
    built.notes.append(f"MLflow model from run {run}, {mlmodel.model_file}")


@dataclass(slots=True)
class _Built:
    runner: OnnxRunner
    config: mc.ModelConfig
    labels: dict[str, list[str]] = field(default_factory=dict)
    parameters: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _warm_up(runner: OnnxRunner, config: mc.ModelConfig, model_dir: Path) -> None:
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
    path = (model_dir / "warmup" / spec.input_data_file).resolve()
    if model_dir.resolve() not in path.parents:
        raise ModelLoadError(f"model_warmup '{warmup_name}': input_data_file leaves the model directory")
    try:
        data = np.fromfile(path, dtype=dtype.newbyteorder("<"))
    except OSError as exc:
        raise ModelLoadError(f"model_warmup '{warmup_name}': {exc}") from None
    if data.size != count:
        raise ModelLoadError(
            f"model_warmup '{warmup_name}': {path.name} holds {data.size} elements, input '{input_name}' needs {count}"
        )
    return data.reshape(shape)
