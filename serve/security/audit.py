"""The audit log: one JSON line per model lifecycle event and per repository API call.

Lines are appended (O_APPEND, one write each, so worker processes sharing the file do not
interleave) and fsync'd before the event goes on. Events:

- ``load``: a version is loaded and warmed and takes traffic;
- ``unload``: a version takes no more traffic (asked for, dropped by the version policy,
  replaced by a reload of itself, or the server stopping: actor ``shutdown``);
- ``load_failed``: a version, or the model as a whole (its config; no version: ``version`` "")
  failed to load;
- ``version_switch``: a load changed the version that requests without a version go to (the
  newest ready one), from ``from_version`` to ``version``;
- ``config_change``: a load's config hash differs from the one this version last loaded with,
  or, for a version not loaded before, from the model's last load;
- ``api_call``: an admin API call (``action`` index, load, unload, the rollout_* changes or trace_setting) and
  its ``outcome``:
  ``ok``, ``error`` (with ``reason``) or ``denied`` (refused by token auth, before it ran);
- ``rollout_decision``: the rollout analyser changed a model's plan (``decision`` advance, promote or
  rollback) on the evidence of ``version``: each gate's ``measured`` value, its ``thresholds`` and its
  ``samples`` per arm, the plan's new ``phase`` and ``revision``, and the ``reason`` it states.

Every line has ``time`` (UTC, ISO 8601), ``event``, ``actor`` (a token identity, ``anonymous``
without auth, ``startup``, ``poll``, ``shutdown``), ``model`` and ``pid``; with tracing on, a call whose caller
sent a W3C ``traceparent`` also ``trace_id`` (the caller's trace); model events also
``version``, ``onnx_sha256`` and ``config_sha256``. The operator rotates the file: once it is
moved away, the next line opens a new one at the configured path.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path

import orjson

from serve.repository.model_version import LoadOutcome, ModelVersion, VersionListener
from serve.trace_context import CALLER_TRACE_ID

log = logging.getLogger(__name__)

OK = "ok"
ERROR = "error"
DENIED = "denied"
UNAUTHENTICATED = "unauthenticated"  # the actor of a call refused for a missing or unknown token
_MAX_NAME = 200  # a refused call's model name is the caller's text: kept, but not without bound


def _utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


class AuditFile:
    """Appends lines to ``path``; reopens it when it was moved away (rotation)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = self._open()

    def _open(self) -> int:
        try:
            return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        except OSError as exc:
            reason = os.strerror(exc.errno).lower() if exc.errno else str(exc)
            raise OSError(exc.errno, f"cannot open the audit log {self.path}: {reason}") from None

    def _rotated(self) -> bool:
        try:
            on_disk = os.stat(self.path)
        except FileNotFoundError:
            return True
        held = os.fstat(self._fd)
        return (on_disk.st_dev, on_disk.st_ino) != (held.st_dev, held.st_ino)

    def write(self, line: bytes) -> None:
        if self._rotated():
            os.close(self._fd)
            self._fd = self._open()
        os.write(self._fd, line)
        os.fsync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class AuditLog(VersionListener):
    def __init__(self, path: Path, *, clock: Callable[[], str] = _utc_now) -> None:
        self._file = AuditFile(path)
        self._clock = clock
        self._pid = os.getpid()
        self._configs: dict[tuple[str, int], str] = {}  # the config hash each version last loaded with
        self._model_configs: dict[str, str] = {}  # and each model's last load

    @property
    def path(self) -> Path:
        return self._file.path

    def _write(self, event: str, actor: str, model: str, **fields: object) -> None:
        record = {"time": self._clock(), "event": event, "actor": actor, "model": model, **fields, "pid": self._pid}
        caller_trace = CALLER_TRACE_ID.get()
        if caller_trace:
            record["trace_id"] = caller_trace
        try:
            self._file.write(orjson.dumps(record) + b"\n")
        except OSError:
            # Serving goes on; the operator sees why the audit log stopped.
            log.exception("cannot write the audit log %s", self._file.path)

    def _version_event(self, event: str, version: ModelVersion, **fields: str) -> None:
        self._write(
            event,
            version.actor,
            version.name,
            version=version.version_str,
            onnx_sha256=version.onnx_sha256,
            config_sha256=version.config_sha256,
            **fields,
        )

    # ---- repository listener ---------------------------------------------------------------
    def attached(self, version: ModelVersion) -> None:
        self._version_event("load", version)
        key = (version.name, version.version)
        previous = self._configs.get(key) or self._model_configs.get(version.name)
        if previous is not None and previous != version.config_sha256:
            self._version_event("config_change", version, previous_config_sha256=previous)
        self._configs[key] = self._model_configs[version.name] = version.config_sha256

    async def detached(self, version: ModelVersion) -> None:
        self._version_event("unload", version)

    def load_finished(self, outcome: LoadOutcome) -> None:
        if outcome.error:
            self._write("load_failed", outcome.actor, outcome.name, version="", reason=outcome.error)
        for failed in outcome.failed:
            self._version_event("load_failed", failed, reason=failed.reason)
        before = max(outcome.before, key=lambda v: v.version, default=None)
        after = max(outcome.after, key=lambda v: v.version, default=None)
        if before is not None and after is not None and before.version != after.version:
            self._version_event("version_switch", after, from_version=before.version_str)

    # ---- repository API ----------------------------------------------------------------------
    def api_call(self, action: str, actor: str, model: str, outcome: str, reason: str = "") -> None:
        fields = {"action": action, "outcome": outcome}
        if reason:
            fields["reason"] = reason
        self._write("api_call", actor, model[:_MAX_NAME], **fields)

    # ---- rollouts ------------------------------------------------------------------------------
    def rollout_decision(
        self,
        model: str,
        decision: str,
        *,
        version: int,
        phase: str,
        revision: int,
        measured: Mapping[str, float | None],
        thresholds: Mapping[str, float],
        samples: Mapping[str, Mapping[str, int]],
        reason: str,
        actor: str,
    ) -> None:
        """A change the analyser made: gates are keyed by name; ``samples`` per gate by arm
        (``primary``, ``candidate``). A value that is not finite is written as null."""
        self._write(
            "rollout_decision",
            actor,
            model,
            decision=decision,
            version=str(version),
            phase=phase,
            revision=revision,
            measured={name: _finite(value) for name, value in measured.items()},
            thresholds=dict(thresholds),
            samples={name: dict(arms) for name, arms in samples.items()},
            reason=reason,
        )

    def close(self) -> None:
        self._file.close()


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None
