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

This module decides what loads and when (version policy, locks, replacing and retiring versions);
where a model's files are is directories.py, building one version builder.py, the version records
and listeners model_version.py.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from serve.errors import InvalidInput, ModelLoadError, ModelNotFound, ModelNotReady, ServeError
from serve.protocol import model_config_pb2 as mc
from serve.repository import config_file
from serve.repository import model_config as cfg
from serve.repository.builder import build_version
from serve.repository.digests import config_sha256
from serve.repository.directories import ModelDirectories, valid_model_name
from serve.repository.layout import ModelLayout, missing_versions, parse_version
from serve.repository.model_version import (
    ANONYMOUS,
    LOADING,
    POLL,
    READY,
    SHUTDOWN,
    STARTUP,
    UNAVAILABLE,
    UNLOADED,
    UNLOADING,
    LoadOutcome,
    ModelVersion,
    VersionListener,
)
from serve.repository.uploads import write_uploaded_files
from serve.settings import ServerSettings

# The version records and listeners live in model_version.py; importers of this module find them here too.
__all__ = [
    "ANONYMOUS", "LOADING", "POLL", "READY", "SHUTDOWN", "STARTUP", "UNAVAILABLE", "UNLOADED", "UNLOADING",
    "LoadOutcome", "ModelRepository", "ModelVersion", "VersionListener", "valid_model_name",
]  # fmt: skip

log = logging.getLogger(__name__)


class ModelRepository:
    def __init__(
        self,
        root: Path,
        settings: ServerSettings,
        *,
        listeners: Sequence[VersionListener] = (),
    ) -> None:
        self._directories = ModelDirectories(root, settings.model_name or None)
        self.root = self._directories.root
        self._settings = settings
        self._listeners = list(listeners)
        check = settings.model_load_check
        self._check_in_child = check == "child" or (check == "auto" and settings.model_control_mode != "none")
        self._versions: dict[str, dict[int, ModelVersion]] = {}
        self._model_errors: dict[str, str] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        # A config sent with a load request holds, as in Triton, until a load sends another or an
        # unload; a plain load in between keeps it.
        self._configs: dict[str, mc.ModelConfig] = {}

    # ---- discovery -------------------------------------------------------------------------
    def model_names(self) -> list[str]:
        return sorted(set(self._versions) | set(self._model_errors) | self._directories.found())

    def model_dir(self, name: str) -> Path:
        """The directory of model ``name`` (its config.pbtxt and baseline.json); ModelNotFound if not served."""
        return self._directories.layout(name).directory

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
                if config_override is None:
                    raise InvalidInput("loading a model from files needs the 'config' parameter too")
                self._directories.use_uploaded(name, write_uploaded_files(name, files))
            layout = self._directories.layout(name)
            if not layout.directory.is_dir():
                where = self._directories.what_is_there()
                raise ModelNotFound(f"model '{name}' is not in the model repository{where}")
            self._model_errors.pop(name, None)
            try:
                plan = self._plan(name, layout, config_override)
            except ServeError as exc:
                return self._config_failed(name, actor, before, exc)
            current = self._versions.setdefault(name, {})
            failed = await self._load_chosen(plan, current, actor)
            if any(current[v].state == READY for v in plan.chosen):
                # Traffic has moved to what the policy chooses: now the rest retire, draining their queues.
                await self._unload_versions(name, [v for v in current if v not in plan.chosen], actor)
            elif before:
                serving = ", ".join(v.version_str for v in before)
                log.error("model %s: no chosen version loaded; version(s) %s keep serving", name, serving)
            if sent is not None and any(v.state == READY for v in current.values()):
                self._configs[name] = sent  # only a config that loaded holds for the next plain loads
            outcome = LoadOutcome(name, actor, before, tuple(self.ready_versions(name)), tuple(failed))
            self._finished(outcome)
            return outcome

    def _plan(self, name: str, layout: ModelLayout, config_override: mc.ModelConfig | None) -> _LoadPlan:
        """The model's config, checked, and the versions its policy chooses; a ServeError says why not."""
        layout = layout.inside(self._directories.confining(name))
        raw, from_file = (
            (config_override, True) if config_override is not None else config_file.read_config(layout.directory)
        )
        if config_override is None and not layout.named_by_directory and raw.name not in ("", name):
            log.info("model %s: config.pbtxt names it '%s'; serving it as '%s' (--model-name)", name, raw.name, name)
            raw.name = name
        config_file.check_supported(raw)
        policy = config_file.version_policy(raw)
        available = layout.versions()
        chosen = policy.select(available)
        if not available:
            raise ModelLoadError(missing_versions(layout.directory, name, raw.default_model_filename))
        if not chosen:
            raise ModelLoadError(f"no version directory matches the version policy (found {available})")
        return _LoadPlan(name, layout, raw, from_file, chosen)

    def _config_failed(self, name: str, actor: str, before: tuple[ModelVersion, ...], exc: ServeError) -> LoadOutcome:
        """A load whose config or versions could not be read: what served before serves on."""
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

    async def _load_chosen(self, plan: _LoadPlan, current: dict[int, ModelVersion], actor: str) -> list[ModelVersion]:
        """Load each chosen version; a new load replaces a ready one only once it is ready itself.
        Returns the versions that failed."""
        failed: list[ModelVersion] = []
        for version in plan.chosen:
            old = current.get(version)
            entry = ModelVersion(plan.name, version, plan.layout.directory, actor=actor)
            current[version] = entry if old is None or old.state != READY else old
            new = await self._load_version(entry, plan)
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
        return failed

    async def _load_version(self, entry: ModelVersion, plan: _LoadPlan) -> ModelVersion:
        started = time.perf_counter()
        self._notify(entry)
        try:
            built = await asyncio.to_thread(
                build_version,
                entry,
                plan.layout,
                plan.raw,
                plan.from_file,
                self._settings,
                load_in_child=self._check_in_child,
            )
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
            self._directories.forget_uploaded(name)

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
        self._directories.remove_uploaded()

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


@dataclass(frozen=True, slots=True)
class _LoadPlan:
    """What one load of a model will load: its layout, its config as read, and the versions chosen."""

    name: str
    layout: ModelLayout
    raw: mc.ModelConfig
    from_file: bool  # whether the config came from a file (or a load request) rather than defaults
    chosen: list[int]
