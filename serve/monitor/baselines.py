"""Which baseline the monitor compares each model version with, where it came from, and whether it may be used.

Sources, in order: ``--baseline FILE`` (the file names its model and version),
``--model-repository DIR`` (``<model>/baseline.json``, where the server reads it too), and,
for a version neither has, **the servers**: the baseline.json a server loaded, which it
serves with its SHA-256 and the hash of its ONNX file (``GET …/baseline``). A baseline is
**not used** — reported instead — when it is for another model or version, when the
model's ONNX file no longer has the hash recorded in it (stale: the model changed since the
baseline was computed; the repository's file, or the file the server loaded), or when a
server's bytes do not have the hash it sent. One check (``_check``) judges every source.

This module reads files and parses config.pbtxt itself (protobuf only): the monitor imports
nothing that pulls in onnxruntime or the server.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict

from serve.errors import ServeError
from serve.input_stats.baseline import BASELINE_FILENAME, Baseline, BaselineError
from serve.input_stats.baseline_fit import file_sha256
from serve.repository import config_file

log = logging.getLogger("serve.monitor")

OK = "ok"
MISSING = "missing"
STALE = "stale"
INVALID = "invalid"

FILE = "file"  # BaselineEntry.source: a --baseline file or the repository's baseline.json
SERVER = "server"  # served by a replica (GET /v2/models/{m}/versions/{v}/baseline)


class BaselineJson(TypedDict):
    status: str
    source: str | None
    path: str | None
    sha256: str | None
    problems: list[str]


@dataclass(slots=True)
class BaselineEntry:
    status: str
    baseline: Baseline | None = None
    path: str | None = None  # where it came from: a file path, or the server's URL for the baseline
    problems: list[str] = field(default_factory=list)
    source: str | None = None  # FILE or SERVER; None when there is none

    @property
    def usable(self) -> bool:
        return self.status == OK and self.baseline is not None

    def to_json(self) -> BaselineJson:
        return {
            "status": self.status,
            "source": self.source,
            "path": self.path,
            "sha256": self.baseline.sha256 if self.baseline is not None else None,
            "problems": self.problems,
        }


@dataclass(frozen=True, slots=True)
class _Served:
    baseline: Baseline
    url: str
    model_sha256: str  # of the ONNX file the server loaded
    order: int  # newer fetches win when nothing else decides


class BaselineRegistry:
    def __init__(self, repository: Path | None = None, files: list[Path] | None = None) -> None:
        self.repository = repository
        self._explicit: dict[tuple[str, str], tuple[Path, Baseline]] = {}
        for path in files or []:
            baseline = Baseline.load(path)  # a broken --baseline file is an error at start
            key = (str(baseline.model.get("name", "")), str(baseline.model.get("version", "")))
            if not key[0]:
                raise BaselineError(f"{path}: the baseline names no model")
            self._explicit[key] = (path, baseline)
        self._cache: dict[Path, tuple[tuple[int, int], BaselineEntry]] = {}
        self._hashes: dict[Path, tuple[tuple[int, int], str]] = {}
        self._reported: set[tuple[str, str, str]] = set()
        self._served: dict[tuple[str, str], dict[str, _Served]] = {}  # (model, version) → sha256 → baseline
        self._refused: dict[tuple[str, str], BaselineEntry] = {}  # the last served baseline that failed to parse
        self._server_reasons: dict[tuple[str, str], str] = {}  # why the servers have none to serve
        self._fetches = 0

    # ------------------------------------------------------------ baselines from servers

    def wants_from_server(self, model: str, version: str, sha256: str) -> bool:
        """Whether the baseline with this hash, which a server bins against, should be fetched from it."""
        if sha256 in self._served.get((model, version), {}):
            return False
        return self._lookup_local(model, version).status == MISSING

    def add_from_server(self, model: str, version: str, url: str, data: bytes, sha256: str, model_sha256: str) -> None:
        """A baseline as a server served it: ``sha256`` and ``model_sha256`` are what it said they are."""
        key = (model, version)
        actual = hashlib.sha256(data).hexdigest()
        if actual != sha256:
            self._refused[key] = BaselineEntry(
                INVALID,
                path=url,
                source=SERVER,
                problems=[f"the baseline from {url} does not have the SHA-256 the server sent ({actual[:12]}…, "
                          f"not {sha256[:12]}…): damaged in transit or not the file the server uses"],
            )  # fmt: skip
            return
        try:
            baseline = Baseline.from_bytes(data, url)
        except BaselineError as exc:
            self._refused[key] = BaselineEntry(INVALID, path=url, source=SERVER, problems=[str(exc)])
            return
        self._fetches += 1
        self._served.setdefault(key, {})[actual] = _Served(baseline, url, model_sha256, self._fetches)
        self._refused.pop(key, None)
        self._server_reasons.pop(key, None)
        log.info("baseline for %s version %s (sha256 %s…) taken from %s", model, version, actual[:12], url)

    def note_server_reason(self, model: str, version: str, url: str, reason: str) -> None:
        """Why a server has no baseline to serve for this version (its 404 message), for the report."""
        self._server_reasons[(model, version)] = f"{url}: {reason}"

    # ------------------------------------------------------------ lookup

    def get(self, model: str, version: str, preferred: Sequence[str] = ()) -> BaselineEntry:
        """The baseline to compare ``model`` ``version`` with; of several from servers, the first of
        ``preferred`` (hashes the replicas bin against, most used first), else the newest."""
        entry = self._lookup_local(model, version)
        if entry.status == MISSING:
            entry = self._lookup_served(model, version, preferred) or entry
        if entry.status != OK:
            marker = (model, version, entry.status)
            if marker not in self._reported:  # once per model version and status, not every poll
                self._reported.add(marker)
                log.warning(
                    "baseline for %s version %s is %s: %s",
                    model,
                    version,
                    entry.status,
                    "; ".join(entry.problems) or "none found",
                )
        return entry

    def _lookup_served(self, model: str, version: str, preferred: Sequence[str]) -> BaselineEntry | None:
        key = (model, version)
        held = self._served.get(key, {})
        chosen = next((held[s] for s in preferred if s in held), None)
        if chosen is None and held:
            chosen = max(held.values(), key=lambda s: s.order)
        if chosen is None:
            refused = self._refused.get(key)
            if refused is not None:
                return BaselineEntry(refused.status, path=refused.path, source=SERVER, problems=list(refused.problems))
            reason = self._server_reasons.get(key)
            if reason is None:
                return None
            return BaselineEntry(MISSING, problems=[self._local_absence(model), f"the server has none: {reason}"])
        entry = BaselineEntry(OK, chosen.baseline, chosen.url, source=SERVER)
        return self._check(model, version, entry, chosen.model_sha256 or None)

    def _local_absence(self, model: str) -> str:
        if self.repository is None:
            return "no --baseline file or --model-repository for this model"
        return f"no {BASELINE_FILENAME} under {self.repository / model}; run `serve baseline`"

    def _lookup_local(self, model: str, version: str) -> BaselineEntry:
        explicit = self._explicit.get((model, version)) or self._explicit.get((model, ""))
        if explicit is not None:
            explicit_path, baseline = explicit
            entry = BaselineEntry(OK, baseline, str(explicit_path), source=FILE)
            return self._check(model, version, entry, self._onnx_sha256(model, version))
        if self.repository is None:
            return BaselineEntry(MISSING, problems=[self._local_absence(model)])
        path = self.repository / model / BASELINE_FILENAME
        if not path.is_file():
            return BaselineEntry(MISSING, problems=[self._local_absence(model)])
        stat = path.stat()
        stamp = (stat.st_mtime_ns, stat.st_size)
        cached = self._cache.get(path)
        if cached is not None and cached[0] == stamp:
            entry = cached[1]
        else:
            try:
                entry = BaselineEntry(OK, Baseline.load(path), str(path), source=FILE)
            except (BaselineError, OSError) as exc:
                entry = BaselineEntry(INVALID, path=str(path), problems=[str(exc)], source=FILE)
            self._cache[path] = (stamp, entry)
        if entry.status != OK:
            return entry
        entry = BaselineEntry(OK, entry.baseline, entry.path, source=FILE)
        return self._check(model, version, entry, self._onnx_sha256(model, version))

    def _check(self, model: str, version: str, entry: BaselineEntry, current: str | None) -> BaselineEntry:
        """The one check for every source: the baseline names this model version, and ``current`` (the
        hash of the model's ONNX file, where known) is the one recorded in it."""
        assert entry.baseline is not None
        declared = entry.baseline.model
        if declared.get("name") not in (None, model) or str(declared.get("version", version)) != version:
            entry.status = INVALID
            entry.problems.append(
                f"baseline is for {declared.get('name')} version {declared.get('version')}, "
                f"not {model} version {version}"
            )
            return entry
        recorded = declared.get("onnx_sha256")
        if recorded and current and recorded != current:
            entry.status = STALE
            entry.problems.append(
                f"stale: the model's ONNX file changed since the baseline was computed (sha256 {current[:12]}…, "
                f"baseline has {recorded[:12]}…); run `serve baseline` again"
            )
        return entry

    def _onnx_sha256(self, model: str, version: str) -> str | None:
        if self.repository is None:
            return None
        model_dir = self.repository / model
        try:
            raw, _ = config_file.read_config(model_dir)
        except ServeError:  # an unreadable config is the server's problem to report, not ours
            return None
        path = model_dir / version / (raw.default_model_filename or config_file.DEFAULT_MODEL_FILENAME)
        if not path.is_file():
            return None
        stat = path.stat()
        stamp = (stat.st_mtime_ns, stat.st_size)
        cached = self._hashes.get(path)
        if cached is None or cached[0] != stamp:
            cached = (stamp, file_sha256(path))
            self._hashes[path] = cached
        return cached[1]
