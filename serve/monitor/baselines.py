"""Which baseline the monitor compares each model version with, and whether it may be used.

Sources: ``--baseline FILE`` (the file names its model and version) and
``--model-repository DIR`` (``<model>/baseline.json``, where the server reads it too).
A baseline is **not used** — reported instead — when it is for another model or version,
or when the repository's ONNX file no longer has the hash recorded in it (stale: the
model changed since the baseline was computed).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from serve.repository import config_file
from serve.stats.baseline import Baseline, BaselineError
from serve.stats.baseline_fit import file_sha256, find_baseline

log = logging.getLogger("serve.monitor")

OK = "ok"
MISSING = "missing"
STALE = "stale"
INVALID = "invalid"


@dataclass(slots=True)
class BaselineEntry:
    status: str
    baseline: Baseline | None = None
    path: str | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def usable(self) -> bool:
        return self.status == OK and self.baseline is not None

    def to_json(self) -> dict[str, object]:
        return {
            "status": self.status,
            "path": self.path,
            "sha256": self.baseline.sha256 if self.baseline is not None else None,
            "problems": self.problems,
        }


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

    def get(self, model: str, version: str) -> BaselineEntry:
        entry = self._lookup(model, version)
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

    def _lookup(self, model: str, version: str) -> BaselineEntry:
        explicit = self._explicit.get((model, version)) or self._explicit.get((model, ""))
        if explicit is not None:
            explicit_path, baseline = explicit
            return self._check(model, version, BaselineEntry(OK, baseline, str(explicit_path)))
        if self.repository is None:
            return BaselineEntry(MISSING, problems=["no --baseline file or --model-repository for this model"])
        path = find_baseline(self.repository / model, version)
        if path is None:
            return BaselineEntry(
                MISSING, problems=[f"no baseline.json under {self.repository / model}; run `serve baseline`"]
            )
        stat = path.stat()
        stamp = (stat.st_mtime_ns, stat.st_size)
        cached = self._cache.get(path)
        if cached is not None and cached[0] == stamp:
            entry = cached[1]
        else:
            try:
                entry = BaselineEntry(OK, Baseline.load(path), str(path))
            except (BaselineError, OSError) as exc:
                entry = BaselineEntry(INVALID, path=str(path), problems=[str(exc)])
            self._cache[path] = (stamp, entry)
        if entry.status != OK:
            return entry
        return self._check(model, version, BaselineEntry(OK, entry.baseline, entry.path))

    def _check(self, model: str, version: str, entry: BaselineEntry) -> BaselineEntry:
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
        current = self._onnx_sha256(model, version)
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
        except Exception:  # an unreadable config is the server's problem to report, not ours
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
