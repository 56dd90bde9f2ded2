"""One model version's record, its states, and the listeners told about its life.

The repository (repository.py) keeps these records; listeners (the core's batchers, metrics,
statistics, the audit log) read them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from serve.events import VersionKey
from serve.protocol import model_config_pb2 as mc
from serve.runtime.onnx_runner import OnnxRunner
from serve.types import TensorSpec

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

    def row_specs(self) -> tuple[list[TensorSpec], list[TensorSpec]]:
        """Inputs and outputs per row, as the batcher hands them over: rows are the first axis of every array,
        which for a model that does not batch is its own first dimension."""
        if self.max_batch_size > 0:
            return self.inputs, self.outputs

        def per_row(specs: list[TensorSpec]) -> list[TensorSpec]:
            return [TensorSpec(s.name, s.datatype, s.dims[1:]) for s in specs]

        return per_row(self.inputs), per_row(self.outputs)


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
