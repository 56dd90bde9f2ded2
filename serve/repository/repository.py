"""Scans a Triton-layout model repository, loads and unloads model versions, reports their state.

    <root>/<model>/config.pbtxt        optional
    <root>/<model>/<version>/model.onnx

With ``settings.model_name`` (``--model-name``) only that model is served, and the root may
also be a bare model directory or one model's directory (layout.py says which is which).
A model that fails to load is listed with its reason and never stops the others.
Model names are single path components of a documented character set (``valid_model_name``), and
every file a model's load opens is checked, symlinks resolved, to be inside that model's
directory, which must be inside the root (serve/paths.py); files sent with a load request live in
a private temporary directory, which is then that model's directory. Nothing is fetched from a URL.

The repository knows models, versions and sessions, nothing about serving them: listeners
(the core's batchers, metrics, statistics) attach to a version once it is loaded and warmed,
before it takes traffic, and detach in reverse order once it takes no more, before its
sessions close.
"""

from __future__ import annotations

import asyncio
import logging
import re
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import onnxruntime as ort

from serve.cpus import resolve_workers
from serve.errors import InvalidInput, ModelLoadError, ModelNotFound, ModelNotReady, ServeError
from serve.events import VersionKey
from serve.paths import confined
from serve.protocol import model_config_pb2 as mc
from serve.repository import config_file
from serve.repository import model_config as cfg
from serve.repository.digests import config_sha256, file_sha256
from serve.repository.labels import read_labels
from serve.repository.layout import (
    ModelLayout,
    missing_versions,
    parse_version,
    single_model,
    triton_model,
)
from serve.repository.mlflow import MlflowModel, check_signature, read_mlmodel, signature_outputs
from serve.repository.warmup import warm_up
from serve.runtime.model_file import prepare_model
from serve.runtime.onnx_runner import OnnxRunner
from serve.runtime.probe import check_in_child
from serve.runtime.providers import CUDA
from serve.settings import ServerSettings
from serve.types import TensorSpec

log = logging.getLogger(__name__)

# Model names: 1 to 128 of ASCII letters, digits, '_', '.', '-', not starting with '.' or '-' (so
# never '.', '..' or a hidden file), and never a path separator (README, "Model names").
_MODEL_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}$")

READY = "READY"
LOADING = "LOADING"
UNLOADING = "UNLOADING"
UNAVAILABLE = "UNAVAILABLE"
# The reason of a version unloaded on purpose (its policy no longer chooses it, its model was unloaded,
# the server stops): retired, not failing, so nothing should alert on it.
UNLOADED = "unloaded"

# Who asks for a load or unload (the audit log's "actor"): a token identity, or one of these.
STARTUP = "startup"  # the models loaded when the server starts
ANONYMOUS = "anonymous"  # a repository API call on a server without token auth
POLL = "poll"  # the repository poller (--model-control-mode poll)
SHUTDOWN = "shutdown"  # the unloads of a server stopping


@dataclass(slots=True, eq=False)
class ModelVersion:
    name: str
    version: int
    model_dir: Path
    key: VersionKey = field(init=False)
    state: str = LOADING
    reason: str = ""
    config: mc.ModelConfig | None = None
    inputs: list[TensorSpec] = field(default_factory=list)
    outputs: list[TensorSpec] = field(default_factory=list)
    runner: OnnxRunner | None = None
    load_seconds: float = 0.0
    model_path: Path | None = None  # the ONNX file this version was loaded from
    # Class labels by output name, for the classification extension (label_filename, ZipMap labels).
    labels: dict[str, list[str]] = field(default_factory=dict)
    # How the model is served, shown in model metadata "parameters" (ZipMap rewrite, MLflow lineage).
    parameters: dict[str, str] = field(default_factory=dict)
    # The same for people: logged at load and shown by `serve validate`.
    notes: list[str] = field(default_factory=list)
    actor: str = ANONYMOUS  # who loaded it, or, once it unloads, who unloaded it
    onnx_sha256: str = ""  # of the ONNX file (model_path), hex; set before the session is built
    config_sha256: str = ""  # of the completed config (digests.py)

    def __post_init__(self) -> None:
        self.key = VersionKey.new(self.name, str(self.version))

    @property
    def version_str(self) -> str:
        return str(self.version)

    @property
    def retired(self) -> bool:
        return self.state == UNAVAILABLE and self.reason == UNLOADED

    @property
    def max_batch_size(self) -> int:
        return self.config.max_batch_size if self.config is not None else 0


@dataclass(frozen=True, slots=True)
class LoadOutcome:
    """What one load of a model did, told to listeners once it ends (the audit log reads it)."""

    name: str
    actor: str
    before: tuple[ModelVersion, ...]  # the versions serving when the load began
    after: tuple[ModelVersion, ...]  # the versions serving when it ended
    failed: tuple[ModelVersion, ...] = ()  # versions that failed to load: UNAVAILABLE, with their reason
    error: str = ""  # why the model as a whole did not load (its config, no version); "" if it did


class VersionListener:
    """Told about every version's life; the defaults do nothing.

    ``attached``: loaded and warmed, about to take traffic (raise a ServeError to fail the load).
    ``detached``: takes no new traffic; once every listener has returned, its sessions close.
    ``changed``: any change of state (LOADING, READY, UNLOADING, UNAVAILABLE; ``retired`` when unloaded
    on purpose rather than failed).
    ``load_finished``: a load of a model has ended, whatever it did (after its attaches and detaches).
    ``ModelVersion.actor`` says who asked for the load or unload.
    """

    def attached(self, version: ModelVersion) -> None:
        return None

    async def detached(self, version: ModelVersion) -> None:
        return None

    def changed(self, version: ModelVersion) -> None:
        return None

    def load_finished(self, outcome: LoadOutcome) -> None:
        return None


def valid_model_name(name: str) -> bool:
    return bool(_MODEL_NAME.match(name)) and name not in (".", "..")


class ModelRepository:
    def __init__(
        self,
        root: Path,
        settings: ServerSettings,
        *,
        listeners: Sequence[VersionListener] = (),
    ) -> None:
        self.root = root.resolve()
        self._settings = settings
        self._listeners = list(listeners)
        check = settings.model_load_check
        self._check_in_child = check == "child" or (check == "auto" and settings.model_control_mode != "none")
        self._versions: dict[str, dict[int, ModelVersion]] = {}
        self._model_errors: dict[str, str] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._overrides: dict[str, Path] = {}  # models loaded from files sent with a load request
        # A config sent with a load request holds, as in Triton, until a load sends another or an
        # unload; a plain load in between keeps it.
        self._configs: dict[str, mc.ModelConfig] = {}
        self.only = settings.model_name or None  # --model-name: the one model served (layout.py)

    # ---- discovery -------------------------------------------------------------------------
    def model_names(self) -> list[str]:
        names = set(self._versions) | set(self._model_errors)
        if self.only is not None:
            names.add(self.only)
        elif self.root.is_dir():
            for entry in self.root.iterdir():
                if entry.is_dir() and valid_model_name(entry.name):
                    names.add(entry.name)
        return sorted(names)

    def _layout(self, name: str) -> ModelLayout:
        if not valid_model_name(name):
            raise ModelNotFound(f"'{name}' is not a valid model name")
        if name in self._overrides:
            return triton_model(self._overrides[name])
        if self.only is not None:
            if name != self.only:
                raise ModelNotFound(f"model '{name}' is not served here: this server serves only '{self.only}'")
            return single_model(self.root, name)  # read again each time: a reload sees files as they are now
        return triton_model(self.root / name)

    def model_dir(self, name: str) -> Path:
        """The directory of model ``name`` (its config.pbtxt and baseline.json); ModelNotFound if not served."""
        return self._layout(name).directory

    def _what_is_there(self) -> str:
        """With --model-name, what the root holds instead (a misnamed model is the usual mistake)."""
        if self.only is None:
            return ""
        held = sorted(p.name for p in self.root.iterdir() if p.is_dir()) if self.root.is_dir() else []
        return (
            ": with --model-name the repository must hold a model file (model.onnx), numbered version "
            f"directories, or a directory '{self.only}'; it holds " + (", ".join(held) or "no directory")
        )

    # ---- loading ---------------------------------------------------------------------------
    async def load_all(self, names: list[str] | None = None, *, actor: str = STARTUP) -> None:
        """Load ``names`` (None, or a name "*" as in Triton's --load-model=*, loads every model)."""
        if names is None or "*" in names:
            names = self.model_names()
        for name in names:
            await self.load_model(name, actor=actor)

    async def load_model(
        self,
        name: str,
        *,
        config_override: mc.ModelConfig | None = None,
        files: dict[str, bytes] | None = None,
        actor: str = ANONYMOUS,
    ) -> LoadOutcome:
        """(Re)load a model: versions chosen by its version policy are loaded, others unloaded.

        What serves keeps serving until its replacement is loaded and warmed: new versions load
        first and only then are the ones the policy no longer chooses retired (their queues drain);
        a version that fails to load, or a config that cannot be read, leaves what served before
        serving, with the failure in the index, the log and the listeners' outcome.
        """
        if not valid_model_name(name):
            raise InvalidInput(f"'{name}' is not a valid model name")
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            before = tuple(self.ready_versions(name))
            sent = config_override
            if config_override is None:
                config_override = self._configs.get(name)
            if files:
                self._overrides[name] = self._write_override(name, files, config_override)
            layout = self._layout(name)
            model_dir = layout.directory
            if not model_dir.is_dir():
                raise ModelNotFound(f"model '{name}' is not in the model repository{self._what_is_there()}")
            self._model_errors.pop(name, None)
            try:
                layout = layout.inside(self._overrides.get(name, self.root))
                model_dir = layout.directory
                raw, from_file = (
                    (config_override, True) if config_override is not None else config_file.read_config(model_dir)
                )
                if config_override is None and not layout.named_by_directory and raw.name not in ("", name):
                    log.info(
                        "model %s: config.pbtxt names it '%s'; serving it as '%s' (--model-name)", name, raw.name, name
                    )
                    raw.name = name
                config_file.check_supported(raw)
                policy = config_file.version_policy(raw)
                available = layout.versions()
                chosen = policy.select(available)
                if not available:
                    raise ModelLoadError(missing_versions(model_dir, name, raw.default_model_filename))
                if not chosen:
                    raise ModelLoadError(f"no version directory matches the version policy (found {available})")
            except ServeError as exc:
                if before:
                    serving = ", ".join(v.version_str for v in before)
                    log.error("model %s failed to reload, version(s) %s keep serving: %s", name, serving, exc.message)
                    self._model_errors[name] = f"the last load failed: {exc.message}"
                else:
                    log.error("model %s failed to load: %s", name, exc.message)
                    self._model_errors[name] = exc.message
                outcome = LoadOutcome(name, actor, before, before, error=exc.message)
                self._finished(outcome)
                return outcome
            current = self._versions.setdefault(name, {})
            failed: list[ModelVersion] = []
            for version in chosen:
                old = current.get(version)
                entry = ModelVersion(name, version, model_dir, actor=actor)
                current[version] = entry if old is None or old.state != READY else old
                new = await self._load_version(entry, layout, raw, from_file)
                if new.state != READY:
                    failed.append(new)
                if old is not None and old.state == READY and new.state == READY:
                    current[version] = new
                    old.actor = actor
                    await self._close_version(old)
                elif new.state == READY or old is None or old.state != READY:
                    current[version] = new
                else:  # the reload failed: the previous load serves on, and says so
                    old.reason = f"serving the previous load; the last reload failed: {new.reason}"
                self._notify(current[version])
            if any(current[v].state == READY for v in chosen):
                # Traffic has moved to what the policy chooses: now the rest retire, draining their queues.
                await self._unload_versions(name, [v for v in current if v not in chosen], actor)
            elif before:
                serving = ", ".join(v.version_str for v in before)
                log.error("model %s: no chosen version loaded; version(s) %s keep serving", name, serving)
            if sent is not None and any(v.state == READY for v in current.values()):
                self._configs[name] = sent  # only a config that loaded holds for the next plain loads
            outcome = LoadOutcome(name, actor, before, tuple(self.ready_versions(name)), tuple(failed))
            self._finished(outcome)
            return outcome

    async def _load_version(
        self, entry: ModelVersion, layout: ModelLayout, raw: mc.ModelConfig, from_file: bool
    ) -> ModelVersion:
        started = time.perf_counter()
        self._notify(entry)
        try:
            built = await asyncio.to_thread(self._build, entry, layout, raw, from_file)
        except ServeError as exc:
            return self._failed(entry, exc.message)
        except Exception as exc:  # a broken file can raise anything; the server must go on
            log.exception("model %s version %d failed to load", entry.name, entry.version)
            return self._failed(entry, f"{type(exc).__name__}: {exc}")
        runner, config = built.runner, built.config
        entry.runner, entry.config, entry.model_path = runner, config, built.path
        entry.config_sha256 = config_sha256(config)
        entry.labels, entry.parameters, entry.notes = built.labels, built.parameters, built.notes
        for note in built.notes:
            log.info("model %s version %d: %s", entry.name, entry.version, note)
        entry.inputs = cfg.tensor_specs(config.input)
        entry.outputs = cfg.tensor_specs(config.output)
        attached: list[VersionListener] = []
        try:
            for listener in self._listeners:
                listener.attached(entry)
                attached.append(listener)
        except ServeError as exc:
            await self._detach(entry, attached)
            await asyncio.to_thread(runner.close)
            entry.runner = None
            return self._failed(entry, exc.message)
        entry.load_seconds = time.perf_counter() - started
        entry.state, entry.reason = READY, ""
        log.info(
            "model %s version %d ready in %.2fs on %s (max_batch_size %d, %d instance(s) with %d "
            "onnxruntime intra-op thread(s) each)",
            entry.name, entry.version, entry.load_seconds, runner.providers[0],
            config.max_batch_size, runner.instance_count, runner.intra_op_threads,
        )  # fmt: skip
        return entry

    def _failed(self, entry: ModelVersion, reason: str) -> ModelVersion:
        entry.state, entry.reason = UNAVAILABLE, reason
        log.error("model %s version %d failed to load: %s", entry.name, entry.version, reason)
        return entry

    def _build(self, entry: ModelVersion, layout: ModelLayout, raw: mc.ModelConfig, from_file: bool) -> _Built:
        version_dir = layout.version_dir(entry.version)
        mlmodel = read_mlmodel(version_dir)  # an MLflow model directory names its ONNX file
        path = (
            version_dir / mlmodel.model_file  # read_mlmodel checked it stays in the version directory
            if mlmodel
            else layout.model_file(entry.version, raw.default_model_filename)
        )
        if not path.is_file():
            raise ModelLoadError(f"{path.relative_to(layout.directory).as_posix()} not found")
        entry.onnx_sha256 = file_sha256(path)  # before the session: a file that fails to load is traced too
        options = cfg.runtime_options(
            raw,
            allow_spinning=self._settings.ort_allow_spinning,
            intra_op_threads=self._settings.ort_intra_op_threads,
            workers=resolve_workers(self._settings.workers),
        )
        prepared = prepare_model(path, version_dir, rewrite_zipmap=cfg.rewrites_zipmap(raw))
        if self._check_in_child:
            check_in_child(path.name, prepared.graph, prepared.external_data_dir)
        runner = OnnxRunner(
            path,
            options,
            graph=prepared.graph,
            external_data_dir=prepared.external_data_dir,
            unknown_rank=prepared.unknown_rank,
        )
        try:
            if mlmodel is not None:
                check_signature(mlmodel, runner.inputs, runner.outputs)
            config = cfg.complete_config(
                raw,
                name=entry.name,
                from_file=from_file,
                inputs=runner.inputs,
                outputs=runner.outputs,
                default_max_batch_size=self._settings.default_max_batch_size,
                cuda_available=CUDA in ort.get_available_providers(),
            )
            batching = config.max_batch_size > 0
            runner.reshape_scalars(
                cfg.scalars_as_one(config.input, runner.inputs, batching),
                cfg.scalars_as_one(config.output, runner.outputs, batching),
            )
            built = _Built(runner, config, path)
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
            built.labels.update(read_labels(config, entry.model_dir))
            warm_up(runner, config, entry.model_dir)
        except BaseException:
            runner.close()
            raise
        return built

    def _write_override(self, name: str, files: dict[str, bytes], config: mc.ModelConfig | None) -> Path:
        if config is None:
            raise InvalidInput("loading a model from files needs the 'config' parameter too")
        # Uploaded files never go into the repository (it may be read-only, and is the operator's): a
        # private directory (mode 0700) per load is that model's directory, and nothing leaves it.
        base = Path(tempfile.mkdtemp(prefix=f"serve-{name}-")).resolve()
        try:
            for rel, content in files.items():
                try:
                    target = confined(base, rel, what="file parameter", shown=f"file:{rel}")
                except ModelLoadError as exc:
                    raise InvalidInput(exc.message) from None
                if target == base:
                    raise InvalidInput(f"file parameter 'file:{rel}' names no file")
                try:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(content)
                except OSError as exc:  # a name too long, or a file where another needs a directory
                    reason = exc.strerror or type(exc).__name__
                    raise InvalidInput(f"file parameter 'file:{rel}' cannot be written: {reason}") from None
        except BaseException:
            shutil.rmtree(base, ignore_errors=True)
            raise
        previous = self._overrides.pop(name, None)
        if previous is not None:  # the versions loaded from it hold their sessions, not its files
            shutil.rmtree(previous, ignore_errors=True)
        return base

    # ---- unloading -------------------------------------------------------------------------
    async def unload_model(self, name: str, *, actor: str = ANONYMOUS) -> None:
        if name not in self._versions and name not in self._model_errors:
            if not self.model_dir(name).is_dir():
                raise ModelNotFound(f"model '{name}' is not in the model repository")
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            await self._unload_versions(name, list(self._versions.get(name, {})), actor)
            self._model_errors.pop(name, None)
            self._configs.pop(name, None)
            override = self._overrides.pop(name, None)
            if override is not None:
                shutil.rmtree(override, ignore_errors=True)

    async def _unload_versions(self, name: str, versions: list[int], actor: str) -> None:
        current = self._versions.get(name, {})
        for version in versions:
            entry = current.get(version)
            if entry is None:
                continue
            entry.actor = actor
            entry.state, entry.reason = UNLOADING, ""
            self._notify(entry)
            await self._close_version(entry)
            entry.state, entry.reason = UNAVAILABLE, UNLOADED
            self._notify(entry)
            del current[version]

    async def _close_version(self, entry: ModelVersion) -> None:
        await self._detach(entry, self._listeners)
        if entry.runner is not None:
            await asyncio.to_thread(entry.runner.close)
            entry.runner = None

    async def _detach(self, entry: ModelVersion, listeners: list[VersionListener]) -> None:
        # Reverse order of attaching: the batcher drains before the statistics behind it close.
        for listener in reversed(listeners):
            try:
                await listener.detached(entry)
            except Exception:  # one listener's failure must not keep the sessions open
                log.exception("model %s version %d: %s failed to detach", entry.name, entry.version, listener)

    async def close(self) -> None:
        for name in list(self._versions):
            await self._unload_versions(name, list(self._versions[name]), SHUTDOWN)
        for path in self._overrides.values():
            shutil.rmtree(path, ignore_errors=True)

    def _finished(self, outcome: LoadOutcome) -> None:
        for listener in self._listeners:
            try:
                listener.load_finished(outcome)
            except Exception:
                log.exception("model %s: %s failed on the end of a load", outcome.name, listener)

    def _notify(self, entry: ModelVersion) -> None:
        for listener in self._listeners:
            try:
                listener.changed(entry)
            except Exception:
                log.exception("model %s version %d: %s failed on a state change", entry.name, entry.version, listener)

    # ---- lookup ----------------------------------------------------------------------------
    def get(self, name: str, version: str = "") -> ModelVersion:
        number = parse_version(version) if version else None  # a malformed version is the client's mistake
        versions = self._versions.get(name)
        if not versions:
            if name in self._model_errors:
                raise ModelNotReady(f"model '{name}' is not ready: {self._model_errors[name]}")
            raise ModelNotFound(f"Request for unknown model: '{name}' is not found")
        if number is not None:
            entry = versions.get(number)
            if entry is None:
                raise ModelNotFound(f"Request for unknown model: '{name}' version {version} is not found")
        elif len(versions) == 1:  # the common case: what the rule below picks, without a scan
            (entry,) = versions.values()
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
        """Every model serves some version (one whose newest load failed still serves the one before)."""
        return not self.not_serving()

    def not_serving(self) -> list[dict[str, str]]:
        """The index rows of every model that serves no version: what keeps the server from being ready."""
        rows: list[dict[str, str]] = []
        for name in sorted(set(self._versions) | set(self._model_errors)):
            if not any(v.state == READY for v in self._versions.get(name, {}).values()):
                rows += self._index_rows(name)
        return rows

    def index(self, ready_only: bool = False) -> list[dict[str, str]]:
        rows = [row for name in self.model_names() for row in self._index_rows(name)]
        if ready_only:
            rows = [r for r in rows if r["state"] == READY]
        return rows

    def _index_rows(self, name: str) -> list[dict[str, str]]:
        """One model's rows of the repository index: its versions, or one row saying why it has none."""
        versions = self._versions.get(name, {})
        rows: list[dict[str, str]] = []
        if name in self._model_errors:
            rows.append({"name": name, "version": "", "state": UNAVAILABLE, "reason": self._model_errors[name]})
        elif not versions:
            rows.append({"name": name, "version": "", "state": UNAVAILABLE, "reason": UNLOADED})
        for version in sorted(versions):
            entry = versions[version]
            rows.append({"name": name, "version": str(version), "state": entry.state, "reason": entry.reason})
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
    path: Path  # the ONNX file it was loaded from
    labels: dict[str, list[str]] = field(default_factory=dict)
    parameters: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
