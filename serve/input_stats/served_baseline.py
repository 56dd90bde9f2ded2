"""What the server made of a version's ``baseline.json`` when it loaded the version, as it serves it.

``GET /v2/models/{m}[/versions/{v}]/baseline`` and ``serve.monitoring.Monitoring/Baseline`` answer
with the file's exact bytes (their SHA-256 is the ``baseline.sha256`` of the version's
``/input-stats`` document, so a reader can tell which baseline the server bins against), or
NOT_FOUND saying why there is none to use: missing, unreadable, stale (the ONNX file changed
since it was computed) or not fitting the model's tensors.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from serve.errors import NotFound
from serve.input_stats.baseline import BASELINE_FILENAME, Baseline

# HTTP response headers of GET …/baseline (gRPC: the response's sha256, model_sha256, model_version).
BASELINE_SHA256_HEADER = "Serve-Baseline-Sha256"
MODEL_SHA256_HEADER = "Serve-Model-Sha256"
MODEL_VERSION_HEADER = "Serve-Model-Version"

OK = "ok"
MISSING = "missing"
UNREADABLE = "unreadable"
STALE = "stale"
MISMATCHED = "mismatched"


@dataclass(frozen=True, slots=True)
class ServedBaseline:
    model: str
    version: int
    status: str
    data: bytes = b""  # the file's bytes exactly as read (what ``sha256`` is of)
    baseline: Baseline | None = None  # parsed; None when missing or unreadable
    model_sha256: str = ""  # of the version's ONNX file as loaded; empty when not computed
    problems: tuple[str, ...] = ()

    @property
    def usable(self) -> bool:
        return self.status == OK and self.baseline is not None

    @property
    def sha256(self) -> str:
        return (self.baseline.sha256 or "") if self.baseline is not None else ""

    def why_not(self) -> str:
        what = f"model '{self.model}' version {self.version}"
        reasons = "; ".join(self.problems)
        if self.status == MISSING:
            return f"{what} has no baseline: there is no {BASELINE_FILENAME} in its directory (see `serve baseline`)"
        if self.status == UNREADABLE:
            return f"{what} has no usable baseline: {BASELINE_FILENAME} is unreadable: {reasons}"
        if self.status == STALE:
            return f"{what} has no usable baseline: {BASELINE_FILENAME} is stale for this model: {reasons}"
        return f"{what} has no usable baseline: {BASELINE_FILENAME} does not fit the model: {reasons}"

    def require(self) -> ServedBaseline:
        """This, if it may be used; else NotFound saying why (the HTTP route and the gRPC method answer it)."""
        if not self.usable:
            raise NotFound(self.why_not())
        return self


# lookup(model name, version or "" for the default version) → the version's baseline, usable;
# raises NotFound (none to use, and why) or ModelNotFound / ModelNotReady like the repository does.
BaselineLookup = Callable[[str, str], ServedBaseline]
