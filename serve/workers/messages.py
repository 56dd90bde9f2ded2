"""What the supervisor and its workers ask each other: one frozen dataclass per request and per answer.

A request names its answer's type (``Request[Answer]``), so ``ipc.call`` returns exactly that type.
SupervisorHandler lists what the supervisor answers (``supervisor.sock``, asked by a worker),
WorkerHandler what every worker answers (``worker-<index>.sock``, asked by the supervisor); each
``answer_*`` function calls the handler's method for a request's kind, and mypy checks that every
kind is handled with its own types. codec.py turns these into frames and back.

Documents that belong to other parts (Triton's statistics, input statistics) travel as the JSON
bytes those parts write: the supervisor sums or merges them and nothing here reads inside them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar, Generic, Protocol, TypeVar, assert_never, get_args, get_origin

from serve.protocol import model_config_pb2 as mc


@dataclass(frozen=True)
class Answer:
    """The base of every answer; an answer with no fields only says the request was done."""


@dataclass(frozen=True)
class Done(Answer):
    pass


@dataclass(frozen=True)
class StatisticsAnswer(Answer):
    document: bytes  # JSON: a list of Triton statistics entries (serve/metrics/triton_statistics.py)


@dataclass(frozen=True)
class InputStatsAnswer(Answer):
    document: bytes  # JSON: one input-statistics document (serve/input_stats/schema.py)


@dataclass(frozen=True)
class EvidenceAnswer(Answer):
    document: bytes  # JSON: a model's rollout evidence (serve/rollout/evidence.py)


@dataclass(frozen=True)
class JoinAnswer(Answer):
    outcomes: bytes  # one code per label, in the labels' order (serve/ground_truth/feedback_codec.py)


@dataclass(frozen=True)
class PerformanceAnswer(Answer):
    document: bytes  # JSON: a model's performance document (serve/ground_truth/document.py)


@dataclass(frozen=True)
class ModelSpec:
    """A model as a load request gave it: a config and files, or neither (load from the repository)."""

    name: str
    config: bytes | None = None  # a serialised ModelConfig
    files: Mapping[str, bytes] = field(default_factory=dict)

    @classmethod
    def of(cls, name: str, config: mc.ModelConfig | None, files: Mapping[str, bytes] | None) -> ModelSpec:
        return cls(name, config.SerializeToString() if config is not None else None, dict(files or {}))

    def model_config(self) -> mc.ModelConfig | None:
        if self.config is None:
            return None
        config = mc.ModelConfig()
        config.ParseFromString(self.config)
        return config

    def model_files(self) -> dict[str, bytes] | None:
        return dict(self.files) or None


@dataclass(frozen=True)
class StartupModelsAnswer(Answer):
    generation: int  # counts model-control changes, so that a starting worker knows whether it missed one
    models: tuple[ModelSpec, ...]
    # JSON: {model ("" = global): {trace setting: value}}, the trace settings changed since the server started
    # (codec.trace_settings_from_json), for the starting worker to apply too.
    trace_settings: bytes = b"{}"


@dataclass(frozen=True)
class LoadedAnswer(Answer):
    models: tuple[str, ...]  # sorted


A = TypeVar("A", bound=Answer, covariant=True)


class Request(Generic[A]):
    """The base of every request. ``kind`` is its name on the wire; ``answer`` its answer's class."""

    kind: ClassVar[str]
    answer: ClassVar[type[Answer]]

    def __init_subclass__(cls, *, kind: str, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        cls.kind = kind
        (cls.answer,) = (get_args(b)[0] for b in getattr(cls, "__orig_bases__", ()) if get_origin(b) is Request)


# ---- asked by a worker and by the supervisor -------------------------------------------------------


@dataclass(frozen=True)
class ModelStatistics(Request[StatisticsAnswer], kind="statistics"):
    """Triton's statistics: the supervisor answers for the whole server, a worker for itself."""

    name: str
    version: str


@dataclass(frozen=True)
class JoinLabels(Request[JoinAnswer], kind="join_labels"):
    """Labels of one feedback call: the supervisor has every serving worker join them (a prediction may be
    any worker's) and combines their outcomes; a worker joins them to its own predictions."""

    name: str
    version: str
    labels: bytes  # JSON, the feedback API's format (feedback_codec.encode_labels)


@dataclass(frozen=True)
class Performance(Request[PerformanceAnswer], kind="performance"):
    """A model's performance document: the supervisor's merged over the workers, a worker's its own."""

    name: str
    version: str


# ---- asked by a worker, answered by the supervisor -------------------------------------------------


@dataclass(frozen=True)
class InputStats(Request[InputStatsAnswer], kind="input_stats"):
    name: str
    version: str
    since: int


@dataclass(frozen=True)
class Load(Request[Done], kind="load"):
    spec: ModelSpec
    actor: str


@dataclass(frozen=True)
class Unload(Request[Done], kind="unload"):
    name: str
    actor: str


@dataclass(frozen=True)
class RolloutChanged(Request[Done], kind="rollout_changed"):
    """A worker wrote ``<name>/rollout.yaml``: every serving worker re-reads it before the answer."""

    name: str


@dataclass(frozen=True)
class RolloutEvidence(Request[EvidenceAnswer], kind="rollout_evidence"):
    """The model's rollout evidence, merged over the serving workers."""

    name: str


@dataclass(frozen=True)
class TraceSettingsChanged(Request[Done], kind="trace_settings_changed"):
    """A client changed Triton's trace settings through a worker (already validated there): every serving worker
    applies them before the answer, and the supervisor keeps them for the workers that start later."""

    model: str  # "" = the global settings
    changes: bytes  # JSON: {trace setting: a string, a list of strings, or null} (codec.trace_changes_from_json)


@dataclass(frozen=True)
class StartupModels(Request[StartupModelsAnswer], kind="startup_models"):
    pass


@dataclass(frozen=True)
class Ready(Request[Done], kind="ready"):
    index: int
    pid: int
    generation: int  # the one its startup models came with


# ---- asked by the supervisor, answered by a worker -------------------------------------------------


@dataclass(frozen=True)
class Export(Request[InputStatsAnswer], kind="export"):
    """The worker's own full input-statistics document of a model version."""

    name: str
    version: str


@dataclass(frozen=True)
class ApplyLoad(Request[Done], kind="apply_load"):
    spec: ModelSpec
    actor: str


@dataclass(frozen=True)
class ApplyUnload(Request[Done], kind="apply_unload"):
    name: str
    actor: str


@dataclass(frozen=True)
class Loaded(Request[LoadedAnswer], kind="loaded"):
    pass


@dataclass(frozen=True)
class ReloadRollout(Request[Done], kind="reload_rollout"):
    name: str


@dataclass(frozen=True)
class ExportEvidence(Request[EvidenceAnswer], kind="export_evidence"):
    """The worker's own rollout evidence of a model."""

    name: str


@dataclass(frozen=True)
class ApplyTraceSettings(Request[Done], kind="apply_trace_settings"):
    model: str
    changes: bytes  # as in TraceSettingsChanged


# ---- who answers what ------------------------------------------------------------------------------

SupervisorRequest = (
    ModelStatistics
    | InputStats
    | Load
    | Unload
    | RolloutChanged
    | RolloutEvidence
    | StartupModels
    | Ready
    | JoinLabels
    | Performance
    | TraceSettingsChanged
)
WorkerRequest = (
    ModelStatistics
    | Export
    | ApplyLoad
    | ApplyUnload
    | Loaded
    | ReloadRollout
    | ExportEvidence
    | JoinLabels
    | Performance
    | ApplyTraceSettings
)

SUPERVISOR_REQUESTS: tuple[type[SupervisorRequest], ...] = (
    ModelStatistics, InputStats, Load, Unload, RolloutChanged, RolloutEvidence, StartupModels, Ready, JoinLabels,
    Performance, TraceSettingsChanged,
)  # fmt: skip
WORKER_REQUESTS: tuple[type[WorkerRequest], ...] = (
    ModelStatistics, Export, ApplyLoad, ApplyUnload, Loaded, ReloadRollout, ExportEvidence, JoinLabels, Performance,
    ApplyTraceSettings,
)  # fmt: skip


class SupervisorHandler(Protocol):
    async def statistics(self, request: ModelStatistics) -> StatisticsAnswer: ...
    async def input_stats(self, request: InputStats) -> InputStatsAnswer: ...
    async def load(self, request: Load) -> Done: ...
    async def unload(self, request: Unload) -> Done: ...
    async def rollout_changed(self, request: RolloutChanged) -> Done: ...
    async def rollout_evidence(self, request: RolloutEvidence) -> EvidenceAnswer: ...
    async def startup_models(self, request: StartupModels) -> StartupModelsAnswer: ...
    async def ready(self, request: Ready) -> Done: ...
    async def join_labels(self, request: JoinLabels) -> JoinAnswer: ...
    async def performance(self, request: Performance) -> PerformanceAnswer: ...
    async def trace_settings_changed(self, request: TraceSettingsChanged) -> Done: ...


class WorkerHandler(Protocol):
    async def statistics(self, request: ModelStatistics) -> StatisticsAnswer: ...
    async def export(self, request: Export) -> InputStatsAnswer: ...
    async def apply_load(self, request: ApplyLoad) -> Done: ...
    async def apply_unload(self, request: ApplyUnload) -> Done: ...
    async def loaded(self, request: Loaded) -> LoadedAnswer: ...
    async def reload_rollout(self, request: ReloadRollout) -> Done: ...
    async def export_evidence(self, request: ExportEvidence) -> EvidenceAnswer: ...
    async def join_labels(self, request: JoinLabels) -> JoinAnswer: ...
    async def performance(self, request: Performance) -> PerformanceAnswer: ...
    async def apply_trace_settings(self, request: ApplyTraceSettings) -> Done: ...


async def answer_supervisor_request(handler: SupervisorHandler, request: SupervisorRequest) -> Answer:
    match request:
        case ModelStatistics():
            return await handler.statistics(request)
        case InputStats():
            return await handler.input_stats(request)
        case Load():
            return await handler.load(request)
        case Unload():
            return await handler.unload(request)
        case RolloutChanged():
            return await handler.rollout_changed(request)
        case RolloutEvidence():
            return await handler.rollout_evidence(request)
        case StartupModels():
            return await handler.startup_models(request)
        case Ready():
            return await handler.ready(request)
        case JoinLabels():
            return await handler.join_labels(request)
        case Performance():
            return await handler.performance(request)
        case TraceSettingsChanged():
            return await handler.trace_settings_changed(request)
        case _:
            assert_never(request)


async def answer_worker_request(handler: WorkerHandler, request: WorkerRequest) -> Answer:
    match request:
        case ModelStatistics():
            return await handler.statistics(request)
        case Export():
            return await handler.export(request)
        case ApplyLoad():
            return await handler.apply_load(request)
        case ApplyUnload():
            return await handler.apply_unload(request)
        case Loaded():
            return await handler.loaded(request)
        case ReloadRollout():
            return await handler.reload_rollout(request)
        case ExportEvidence():
            return await handler.export_evidence(request)
        case JoinLabels():
            return await handler.join_labels(request)
        case Performance():
            return await handler.performance(request)
        case ApplyTraceSettings():
            return await handler.apply_trace_settings(request)
        case _:
            assert_never(request)
