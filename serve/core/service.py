"""The transport-neutral server: every operation of the protocol, once.

The HTTP and gRPC adapters hand over what they received, call this, and encode what comes back;
all semantics (resolving the model, validation, batching, observation) live here and below.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from serve import __version__
from serve.core.classification import classify
from serve.core.cluster import Cluster, LocalCluster
from serve.core.mirror import Mirror
from serve.core.readiness import SHUTTING_DOWN, Readiness, ReadinessSignal
from serve.core.request_ids import resolve as resolve_id
from serve.core.rollouts import Rollouts
from serve.core.served_versions import ServedVersions
from serve.core.validation import validate
from serve.errors import ModelControlDisabled, ModelNotFound, ModelNotReady, ServeError, ShuttingDown
from serve.events import UNKNOWN_VERSION, Observer, Observers, RequestEvent, VersionKey, outcome_of
from serve.ground_truth.document import PerformanceDocumentJson
from serve.ground_truth.labels import Label
from serve.ground_truth.outcomes import FeedbackCounts
from serve.ground_truth.wiring import GroundTruth
from serve.metrics.triton_statistics import TritonStatistics
from serve.protocol import model_config_pb2 as mc
from serve.repository.layout import parse_version
from serve.repository.repository import ANONYMOUS, ModelRepository, ModelVersion, VersionListener
from serve.rollout.router import mirrors, pick
from serve.rollout.spec import Role, Routing
from serve.security.audit import ERROR, OK, AuditLog
from serve.settings import ModelControlMode, ServerSettings
from serve.tracing.request import RequestTracer, TracedRequest
from serve.tracing.settings import SettingValue, TraceSettings, TraceSettingsDocument
from serve.types import InferRequest, InferResponse, OutputTensor, TensorSpec

log = logging.getLogger(__name__)

EXTENSIONS = [
    "binary_tensor_data",
    "classification",
    "model_configuration",
    "model_repository",
    "schedule_policy",
    "statistics",
    "parameters",
    "trace",
]

# Turns what a transport received into a request, once the model it names is known
# (HTTP's raw binary body needs the model's single input to be decoded at all).
Decode = Callable[[ModelVersion], InferRequest]


class InferenceService:
    def __init__(
        self,
        repository: ModelRepository,
        served: ServedVersions,
        statistics: TritonStatistics,
        observer: Observer,
        *,
        server_name: str = "serve",
        model_control: ModelControlMode = "none",
        cluster: Cluster | None = None,
        audit: AuditLog | None = None,
        readiness: ReadinessSignal | None = None,
        rollouts: Rollouts | None = None,
        mirror: Mirror | None = None,
        ground_truth: GroundTruth | None = None,
        tracer: RequestTracer | None = None,
        trace_settings: TraceSettings | None = None,
        clock: Callable[[], int] = time.perf_counter_ns,
    ) -> None:
        self.repository = repository
        # Woken by the repository (create() makes it a listener) and by shutting_down.
        self.readiness_changes = readiness or ReadinessSignal()
        self.audit = audit
        self.server_name = server_name
        self.model_control = model_control
        self._served = served
        self._observer = observer
        self._clock = clock
        # This process's own answers; and where the server-wide ones come from: the same, or every
        # worker when this process is one of several behind one port (serve/workers).
        self.rollouts = rollouts or Rollouts()
        # Without one (a core built bare, in tests) no predictions are kept and feedback says so.
        self.ground_truth = ground_truth or GroundTruth(window_s=60.0, retention_s=0.0, max_rows=1)
        # Triton's trace settings of this process; off unless the composition root passes the ones --trace made.
        self.trace_settings = trace_settings or TraceSettings(enabled=False, sampler_ratio=None)
        self.local = LocalCluster(repository, statistics, self.rollouts, self.ground_truth, self.trace_settings)
        self.cluster: Cluster = cluster or self.local
        self.rollouts.bind(repository, self.cluster)
        # The same (live) mapping Rollouts keeps: one lookup per request says whether a model has a rollout.
        self._routings = self.rollouts.routings
        self.mirror = mirror
        # Starts the server span of each traced request (serve/tracing); None with tracing off.
        self.tracer = tracer
        self._shutting_down = False

    @classmethod
    def create(
        cls,
        root: Path,
        settings: ServerSettings,
        observers: Sequence[Observer] = (),
        *,
        mirror_of: Callable[[Observer], Mirror] | None = None,
        **kwargs: Any,
    ) -> InferenceService:
        """The repository, the core and ``observers`` wired together. Observers that are also
        VersionListeners attach to each version before the core's batcher, and detach after it.
        The audit log (--audit-log-file) attaches last, so that it records only loads that took. Rollouts
        hears of every load, to read the model's rollout.yaml. ``mirror_of`` builds the shadow's Mirror
        on the same observers, so that its copies are observed (as role "shadow") like every request."""
        statistics = TritonStatistics()
        everyone = Observers([*observers, statistics])
        served = ServedVersions(everyone, grace_s=settings.shutdown_grace_s)
        listeners: list[VersionListener] = [o for o in observers if isinstance(o, VersionListener)]
        audit = AuditLog(settings.audit_log_file) if settings.audit_log_file is not None else None
        readiness = ReadinessSignal()
        rollouts = Rollouts()
        listeners += [statistics, served, readiness, rollouts, *([audit] if audit is not None else [])]
        repository = ModelRepository(root, settings, listeners=listeners)
        mirror = mirror_of(everyone) if mirror_of is not None else None
        ground_truth = next((o for o in observers if isinstance(o, GroundTruth)), None)
        return cls(
            repository,
            served,
            statistics,
            everyone,
            audit=audit,
            readiness=readiness,
            rollouts=rollouts,
            mirror=mirror,
            ground_truth=ground_truth,
            **kwargs,
        )

    # ---- health and metadata ---------------------------------------------------------------
    def server_live(self) -> bool:
        return True

    @property
    def shutting_down(self) -> bool:
        return self._shutting_down

    @shutting_down.setter
    def shutting_down(self, value: bool) -> None:
        self._shutting_down = value
        self.readiness_changes.notify()

    def readiness(self) -> Readiness:
        """Ready, or why not: every transport's readiness answer comes from here."""
        return Readiness.of(self._shutting_down, self.repository.not_serving())

    def server_ready(self) -> bool:
        return self.readiness().ready

    def model_ready(self, name: str, version: str = "") -> bool:
        return not self.model_not_ready(name, version)

    def model_not_ready(self, name: str, version: str = "") -> str:
        """Why the model version is not ready, "" when it is (a malformed version raises, as everywhere)."""
        try:
            self.repository.get(name, version)
        except (ModelNotFound, ModelNotReady) as exc:
            return exc.message
        return SHUTTING_DOWN if self._shutting_down else ""

    def server_metadata(self) -> dict[str, Any]:
        return {"name": self.server_name, "version": __version__, "extensions": list(EXTENSIONS)}

    def model_metadata(self, name: str, version: str = "") -> dict[str, Any]:
        model = self.repository.get(name, version)
        batch = [-1] if model.max_batch_size > 0 else []

        def describe(specs: list[TensorSpec]) -> list[dict[str, Any]]:
            return [{"name": s.name, "datatype": s.datatype, "shape": batch + list(s.dims)} for s in specs]

        metadata: dict[str, Any] = {
            "name": model.name,
            "versions": [v.version_str for v in self.repository.ready_versions(name)],
            "platform": "onnxruntime_onnx",
            "inputs": describe(model.inputs),
            "outputs": describe(model.outputs),
        }
        # HTTP only: Triton's gRPC ModelMetadataResponse has no parameters field. The hashes say
        # exactly which files serve (the audit log records the same at each load).
        metadata["parameters"] = {
            **model.parameters,
            "onnx_sha256": model.onnx_sha256,
            "config_sha256": model.config_sha256,
        }
        return metadata

    def model_config(self, name: str, version: str = "") -> mc.ModelConfig:
        model = self.repository.get(name, version)
        assert model.config is not None
        return model.config

    async def model_statistics(self, name: str = "", version: str = "") -> list[dict[str, Any]]:
        """Triton's statistics extension, for the whole server."""
        if version:
            parse_version(version)  # refused here, as in one process, not as each worker's failure
        return await self.cluster.model_statistics(name, version)

    def queue_depths(self) -> Iterator[tuple[VersionKey, int, int]]:
        """(version, requests waiting, batches running) of every serving version, for the metrics."""
        for served in self._served:
            yield served.model.key, served.batcher.queue_depth, served.batcher.in_flight

    # ---- inference -------------------------------------------------------------------------
    async def infer(self, request: InferRequest, protocol: str = "http") -> InferResponse:
        """Run a request that is already decoded."""
        return await self.infer_decoding(request.model_name, request.model_version, lambda _: request, protocol)

    async def infer_decoding(
        self, name: str, version: str, decode: Decode, protocol: str, trace: TracedRequest | None = None
    ) -> InferResponse:
        """Resolve the model first (an unknown model is NOT_FOUND whatever the body holds), then
        decode, validate and run. Every request, however it ends, is observed exactly once.

        A model with a rollout answers a request that names no version from the arm the router picks
        (decoded as the primary's, run on the arm's version); one that names a version is never diverted.

        ``trace``: the request's server span when it is traced; its decode and queue are recorded into it."""
        started = self._clock()
        if trace is not None:
            decode = self._timed(decode, trace)
        key = UNKNOWN_VERSION
        timings = None
        role: Role = ""
        request_id = ""
        answered: Mapping[str, np.ndarray] = {}
        fed: Mapping[str, np.ndarray] = {}
        header: Callable[[str], str | None] | None = None
        error: BaseException | None = None
        try:
            if self._shutting_down:
                raise ShuttingDown("the server is shutting down and takes no new requests; retry on another replica")
            routing = self._routings.get(name)
            mirrored = False
            if routing is None:
                model = self.repository.get(name, version)
                key = model.key  # a request that fails to decode is still the version's
                request = decode(model)
            elif version:
                model = self.repository.get(name, version)
                key, role = model.key, _client_role(routing, model.version)
                request = decode(model)
            else:
                model = self._arm(name, routing.primary) or self.repository.get(name)
                key, role = model.key, "primary"  # until the router picks: one that fails to decode is its
                request = decode(model)
                key_value = _key_value(routing.key, request)
                model, role = self._routed(name, routing, model, key_value)
                key = model.key
                mirrored = self.mirror is not None and mirrors(routing, key_value)
            # Once, here, for every transport; written back so that the adapter's encoder and its error answer see it.
            request.id = request_id = resolve_id(request)
            header = request.header
            served = self._served.get(model)
            valid = validate(served.signature, request)
            fed = valid.feeds
            result = await served.batcher.submit(
                valid.feeds,
                priority=valid.priority,
                timeout_us=valid.timeout_us,
                client_gone=request.client_gone,
                trace=trace.context if trace is not None else None,
            )
            timings, answered = result.timings, result.outputs
            if trace is not None:
                trace.queued(timings.batch_started_ns, timings.queue_ns)
                trace.answered_by(model.name, model.version_str, role, request_id)
            if mirrored and routing is not None:
                primary_ns = self._clock() - started
                self._offer_shadow(
                    name, routing, valid.feeds, key, result.outputs, primary_ns, protocol, request_id, trace
                )
            outputs = [OutputTensor(n, datatype, result.outputs[n]) for n, datatype in valid.outputs]
            outputs = classify(outputs, request.outputs, model.labels, batching=model.max_batch_size > 0)
            return InferResponse(model.name, model.version_str, request_id, outputs)
        except BaseException as exc:
            error = exc
            raise
        finally:
            self._observer.on_request(
                RequestEvent(
                    key,
                    protocol,
                    outcome_of(error),
                    self._clock() - started,
                    timings,
                    role,
                    request_id=request_id,
                    outputs=answered,
                    inputs=fed,
                    traceparent=trace.traceparent if trace is not None else "",
                    header=header,
                )
            )
            # The exception's traceback holds this frame, and the frame held the exception: a cycle
            # that kept the request's body and decoded tensors alive until the garbage collector
            # ran (48-65 MiB after 100 refused 8 MiB requests).
            error = None

    def _timed(self, decode: Decode, trace: TracedRequest) -> Decode:
        """``decode`` recording its time as the trace's decode span."""
        clock = self._clock

        def timed(model: ModelVersion) -> InferRequest:
            begun = clock()
            try:
                return decode(model)
            finally:
                trace.phase("decode", begun, clock())

        return timed

    def _arm(self, name: str, version: int) -> ModelVersion | None:
        """The rollout's ``version`` if it serves; None (said once in the log) if not."""
        try:
            return self.repository.get(name, str(version))
        except (ModelNotFound, ModelNotReady):
            self.rollouts.not_served(name, version)
            return None

    def _routed(
        self, name: str, routing: Routing, primary: ModelVersion, key_value: str | None
    ) -> tuple[ModelVersion, Role]:
        version, role = pick(routing, key_value)
        if version == primary.version:
            return primary, "primary"
        arm = self._arm(name, version)
        return (arm, role) if arm is not None else (primary, "primary")

    def _offer_shadow(
        self,
        name: str,
        routing: Routing,
        feeds: Mapping[str, np.ndarray],
        primary: VersionKey,
        outputs: Mapping[str, np.ndarray],
        primary_ns: int,
        protocol: str,
        request_id: str,
        trace: TracedRequest | None,
    ) -> None:
        """Hand the shadow its copy; the client's answer never waits for it nor fails with it. A traced request's copy
        carries its span as a link for the shadow's batch span, not as a parent: the client's trace ends with it."""
        assert self.mirror is not None and routing.shadow is not None
        shadow = self._arm(name, routing.shadow.version)
        if shadow is None:
            return
        try:
            self.mirror.offer(
                self._served.get(shadow),
                feeds,
                primary,
                outputs,
                primary_ns,
                protocol,
                request_id=request_id,
                trace=trace,
            )
        except Exception:
            log.exception("model %s: mirroring a request to shadow version %d failed", name, shadow.version)

    # ---- ground truth ----------------------------------------------------------------------
    async def feedback(self, name: str, version: str, labels: Sequence[Label]) -> FeedbackCounts:
        """Joins ``labels`` to the model's predictions (``version``'s, or every version's that answered the
        request, a shadow's copy included), on every worker; the whole call is refused before anything
        joins when one label does not fit the model."""
        self._known(name, version)
        self.ground_truth.check(name, version, labels)
        return FeedbackCounts.of(await self.cluster.join_labels(name, version, labels))

    async def performance(self, name: str, version: str) -> PerformanceDocumentJson:
        """The model's realized performance per version and window of prediction, for the whole server."""
        self._known(name, version)
        return await self.cluster.performance(name, version)

    def _known(self, name: str, version: str) -> None:
        """NOT_FOUND for a model this server does not serve; a version need not serve any more (an unloaded
        version's predictions still join until they leave retention)."""
        if version:
            parse_version(version)
        self.repository.get(name)

    # ---- trace settings (Triton's trace extension) --------------------------------------------
    def trace_setting(self, model: str) -> TraceSettingsDocument:
        """The model's trace settings (the global ones for model ""); NOT_FOUND for a model not served."""
        if model:
            self._known(model, "")
        return self.trace_settings.document(model)

    async def update_trace_setting(
        self, model: str, changes: Mapping[str, SettingValue], actor: str
    ) -> TraceSettingsDocument:
        """Applies ``changes`` (Triton's keys; None clears a model's own value) on every worker and answers the
        settings after them. All or nothing: a change that cannot apply is refused here, before any worker
        applies a key of it."""
        if model:
            self._known(model, "")
        self.trace_settings.validate(changes)
        await self.cluster.trace_settings_changed(model, changes)
        log.info("trace settings of %s changed by %s: %s", f"model {model}" if model else "the server", actor, changes)
        return self.trace_settings.document(model)

    # ---- repository ------------------------------------------------------------------------
    @contextmanager
    def audited(self, action: str, actor: str, name: str) -> Iterator[None]:
        """Records a repository API call and how it ended in the audit log. The adapters wrap the
        whole call, decoding its parameters included, so that a refused request is recorded too."""
        if self.audit is None:
            yield
            return
        try:
            yield
        except ServeError as exc:
            self.audit.api_call(action, actor, name, ERROR, exc.message)
            raise
        except Exception:
            self.audit.api_call(action, actor, name, ERROR, "internal error")
            raise
        self.audit.api_call(action, actor, name, OK)

    def repository_index(self, ready_only: bool = False) -> list[dict[str, str]]:
        return self.repository.index(ready_only)

    def _check_model_control(self) -> None:
        if self.model_control == "poll":  # Triton's words for the same refusal
            raise ModelControlDisabled(
                "explicit model load / unload is not allowed if polling is enabled (this server runs "
                "--model-control-mode poll: change the repository on disk instead)"
            )
        if self.model_control != "explicit":
            raise ModelControlDisabled(
                "explicit model load / unload is not allowed: model control is disabled on this server "
                "(it runs --model-control-mode none; start it with --model-control-mode explicit)"
            )

    async def load_model(
        self,
        name: str,
        config: mc.ModelConfig | None = None,
        files: dict[str, bytes] | None = None,
        *,
        actor: str = ANONYMOUS,
    ) -> None:
        self._check_model_control()
        await self.cluster.load_model(name, config, files, actor)

    async def unload_model(self, name: str, *, actor: str = ANONYMOUS) -> None:
        self._check_model_control()
        await self.cluster.unload_model(name, actor)

    async def close(self) -> None:
        try:
            await self.repository.close()
        finally:
            if self.audit is not None:
                self.audit.close()


def _client_role(routing: Routing, version: int) -> Role:
    """The role of a version a client named: its arm's, unless that is the shadow (which answers no client)."""
    role = routing.role_of(version)
    return "" if role == "shadow" else role


def _key_value(key: str | None, request: InferRequest) -> str | None:
    """The routing key's value: a request parameter (a string or an integer), else a header / metadata value."""
    if key is None:
        return None
    value = request.parameters.get(key)
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return request.header(key.lower()) if request.header is not None else None
