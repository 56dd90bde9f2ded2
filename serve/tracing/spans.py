"""The OpenTelemetry spans: a server span per traced request with its decode, queue and encode, and one span per
batch execution that links to every traced request it served, with the model's compute inside it.

The only module that imports the SDK. Sampling is decided before any span exists (sampling.py), so the SDK sees only
requests that are traced and its own sampler is ALWAYS_ON. Phases are recorded after the fact with the timestamps
the core and the batcher already take (perf_counter / monotonic, shifted once to the wall clock), so tracing adds
no clock read to an untraced request and no span object to the batcher's path.

Shadow copies (serve/core/shadow.py) carry their client's span as a link, not as a parent: the shadow's batch span
is a trace of its own and never stretches the client's.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Final

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.span import TraceState
from opentelemetry.util.types import AttributeValue

from serve import __version__
from serve.events import Execution, Observer
from serve.trace_context import Parent, parse_traceparent
from serve.tracing.options import TracingOptions
from serve.tracing.sampling import Sampling
from serve.tracing.settings import TraceSettings

log = logging.getLogger(__name__)

Header = Callable[[str], str | None]
Attributes = dict[str, AttributeValue]

GRPC_SERVICE: Final = "inference.GRPCInferenceService"
_GRPC_CODES: Final = {
    "OK": 0,
    "CANCELLED": 1,
    "UNKNOWN": 2,
    "INVALID_ARGUMENT": 3,
    "DEADLINE_EXCEEDED": 4,
    "NOT_FOUND": 5,
    "ALREADY_EXISTS": 6,
    "PERMISSION_DENIED": 7,
    "RESOURCE_EXHAUSTED": 8,
    "FAILED_PRECONDITION": 9,
    "ABORTED": 10,
    "OUT_OF_RANGE": 11,
    "UNIMPLEMENTED": 12,
    "INTERNAL": 13,
    "UNAVAILABLE": 14,
    "DATA_LOSS": 15,
    "UNAUTHENTICATED": 16,
}
# gRPC's server-side errors (semantic conventions, RPC spans): the rest are the client's doing.
_GRPC_SERVER_ERRORS: Final = frozenset(
    {"UNKNOWN", "DEADLINE_EXCEEDED", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS"}
)


class RequestSpan:
    """One traced request: its server span, and the phases recorded into it."""

    __slots__ = ("_span", "_tracer", "context", "traceparent")

    def __init__(self, tracer: Tracer, span: trace.Span) -> None:
        self._tracer = tracer
        self._span = span
        self.context: SpanContext = span.get_span_context()
        # What the payload log, the access log and the exemplars carry.
        self.traceparent = f"00-{self.context.trace_id:032x}-{self.context.span_id:016x}-01"

    @property
    def trace_id(self) -> str:
        return self.traceparent[3:35]

    def phase(self, name: str, start_ns: int, end_ns: int) -> None:
        """A child span over [start_ns, end_ns] of the core's clock (time.perf_counter_ns)."""
        shift = self._tracer.perf_to_wall
        self._tracer.child(self._span, name, start_ns + shift, end_ns + shift)

    def queued(self, batch_started_ns: int, queue_ns: int) -> None:
        """The queue span: from enqueueing to the start of its batch (the batcher's clock, time.monotonic_ns), so it
        ends exactly where its batch span begins."""
        end = batch_started_ns + self._tracer.monotonic_to_wall
        self._tracer.child(self._span, "queue", end - queue_ns, end)

    def answered_by(self, model: str, version: str, role: str, request_id: str) -> None:
        span = self._span
        span.set_attribute("serve.model.name", model)
        span.set_attribute("serve.model.version", version)
        if role:
            span.set_attribute("serve.rollout.role", role)
        if request_id:
            span.set_attribute("serve.request.id", request_id)

    def end_http(self, status: int, error: BaseException | None = None) -> None:
        span = self._span
        span.set_attribute("http.response.status_code", status)
        if status >= 500:  # a server span's error is the server's: 4xx is the client's (semantic conventions)
            span.set_attribute("error.type", str(status))
            span.set_status(Status(StatusCode.ERROR, _describe(error)))
        elif status >= 400:
            span.set_attribute("error.type", str(status))
        span.end()

    def end_grpc(self, code: str, error: BaseException | None = None) -> None:
        span = self._span
        span.set_attribute("rpc.response.status_code", code)
        if self._tracer.old_rpc_attributes:
            span.set_attribute("rpc.grpc.status_code", _GRPC_CODES.get(code, 2))
        if code != "OK":
            span.set_attribute("error.type", code)
            if code in _GRPC_SERVER_ERRORS:
                span.set_status(Status(StatusCode.ERROR, _describe(error)))
        span.end()


class Tracer(Observer):
    """Builds the spans; an Observer of every batch execution, for the batch spans."""

    def __init__(
        self,
        options: TracingOptions,
        settings: TraceSettings,
        *,
        exporters: Sequence[SpanExporter] | None = None,
        span_processor: Callable[[SpanExporter], SpanProcessor] = BatchSpanProcessor,
    ) -> None:
        self.sampling = Sampling(options.sampler, settings)
        self.settings = settings
        self.old_rpc_attributes = options.old_rpc_attributes
        # No atexit hook: close() flushes within its bound on SIGTERM; the SDK's hook would wait out a collector that is
        # down (its retries) before the process could exit.
        self._provider = TracerProvider(sampler=ALWAYS_ON, resource=_resource(), shutdown_on_exit=False)
        for exporter in exporters if exporters is not None else _exporters(options):
            self._provider.add_span_processor(span_processor(exporter))
        self._tracer = self._provider.get_tracer("serve", __version__)
        # One shift per clock, taken once: the spans' times come from the clocks the core and the batcher read anyway.
        wall = time.time_ns()
        self.perf_to_wall = wall - time.perf_counter_ns()
        self.monotonic_to_wall = wall - time.monotonic_ns()

    # -- requests -------------------------------------------------------------------------------------------

    def http_request(
        self,
        model: str,
        route: str,
        header: Header,
        started_ns: int,
        *,
        path: str,
        scheme: str,
        server: tuple[str, int] | None,
        client: tuple[str, int] | None,
        http_version: str,
    ) -> RequestSpan | None:
        """The server span of an HTTP inference request, named by its route template (never the model's name); None
        when the request is not traced. ``started_ns`` is on the core's clock (time.perf_counter_ns)."""
        parent = _parent(header)
        if not self.sampling.decide(model, parent):
            return None
        attributes: Attributes = {
            "http.request.method": "POST",
            "http.route": route,
            "url.path": path,
            "url.scheme": scheme,
            "network.protocol.version": http_version,
            "serve.model.name": model,
        }
        for prefix, address in (("server", server), ("client", client)):
            if address is not None and address[0]:
                attributes[f"{prefix}.address"] = address[0]
                if isinstance(address[1], int):
                    attributes[f"{prefix}.port"] = address[1]
        agent = header("user-agent")
        if agent:
            attributes["user_agent.original"] = agent
        return self._start(f"POST {route}", parent, attributes, started_ns)

    def grpc_request(self, model: str, method: str, header: Header, started_ns: int) -> RequestSpan | None:
        """The server span of one gRPC inference call (or one message of a stream), named
        ``inference.GRPCInferenceService/<method>``; None when not traced."""
        parent = _parent(header)
        if not self.sampling.decide(model, parent):
            return None
        full = f"{GRPC_SERVICE}/{method}"
        attributes: Attributes = {"rpc.system.name": "grpc", "rpc.method": full, "serve.model.name": model}
        if self.old_rpc_attributes:
            # The conventions of <= 1.37 (what the stock grpc instrumentation emits); rpc.method keeps the stable,
            # fully qualified value, since one key holds one value.
            attributes["rpc.system"] = "grpc"
            attributes["rpc.service"] = GRPC_SERVICE
        return self._start(full, parent, attributes, started_ns)

    def _start(self, name: str, parent: Parent | None, attributes: Attributes, started_ns: int) -> RequestSpan:
        context = None
        if parent is not None:
            remote = SpanContext(
                parent.trace_id,
                parent.span_id,
                is_remote=True,
                trace_flags=TraceFlags(parent.flags),
                trace_state=_trace_state(parent.tracestate),
            )
            context = trace.set_span_in_context(NonRecordingSpan(remote))
        span = self._tracer.start_span(
            name, context, SpanKind.SERVER, attributes, start_time=started_ns + self.perf_to_wall
        )
        return RequestSpan(self, span)

    def child(self, parent: trace.Span, name: str, start_wall_ns: int, end_wall_ns: int) -> None:
        span = self._tracer.start_span(
            name, trace.set_span_in_context(parent), SpanKind.INTERNAL, start_time=start_wall_ns
        )
        span.end(end_time=max(start_wall_ns, end_wall_ns))

    # -- batches --------------------------------------------------------------------------------------------

    def on_execution(self, execution: Execution) -> None:
        if not execution.traces:
            return
        start = execution.started_ns + self.monotonic_to_wall
        links = [Link(context) for context in execution.traces if isinstance(context, SpanContext)]
        attributes: Attributes = {
            "serve.model.name": execution.key.name,
            "serve.model.version": execution.key.version,
            "serve.batch.rows": execution.rows,
            "serve.batch.requests": execution.requests,
            "serve.batch.traced_requests": len(links),
        }
        batch = self._tracer.start_span(
            f"batch {execution.key.name}", None, SpanKind.INTERNAL, attributes, links, start_time=start
        )
        compute_start = start + execution.compute_input_ns
        compute = self._tracer.start_span(
            "compute", trace.set_span_in_context(batch), SpanKind.INTERNAL, start_time=compute_start
        )
        if execution.error is not None:
            for span in (compute, batch):
                span.set_attribute("error.type", type(execution.error).__name__)
                span.set_status(Status(StatusCode.ERROR, _describe(execution.error)))
        compute.end(end_time=compute_start + execution.compute_infer_ns)
        batch.end(end_time=start + execution.compute_ns)

    # -- shutdown -------------------------------------------------------------------------------------------

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Hand every ended span to the exporters now (tests; the SIGTERM path is close)."""
        return self._provider.force_flush(int(timeout_s * 1000))

    def close(self, timeout_s: float = 5.0) -> bool:
        """Export what is waiting and stop, within ``timeout_s`` even when the collector is down (the SIGTERM path).
        False when the spans could not all be handed over in time."""
        flushed = threading.Event()
        result = [False]

        def shut_down() -> None:
            try:
                result[0] = self._provider.force_flush(int(timeout_s * 1000))
                self._provider.shutdown()
            except Exception:
                log.exception("the trace exporter failed while shutting down")
            finally:
                flushed.set()

        threading.Thread(target=shut_down, name="serve-trace-flush", daemon=True).start()
        if not flushed.wait(timeout_s + 0.5):
            log.warning("traces: spans still waiting for the exporter after %.1f s were dropped", timeout_s)
            return False
        return result[0]


def _parent(header: Header) -> Parent | None:
    value = header("traceparent")
    return parse_traceparent(value, header("tracestate")) if value else None


def _trace_state(header: str) -> TraceState:
    if not header:
        return TraceState()
    try:
        return TraceState.from_header([header])
    except Exception:  # W3C: a malformed tracestate is dropped, the traceparent still counts
        return TraceState()


def _describe(error: BaseException | None) -> str | None:
    if error is None:
        return None
    return getattr(error, "message", None) or type(error).__name__


def _resource() -> Resource:
    """OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME as the SDK reads them, with "serve" as the service's name
    when neither gives one, and this process's id, so that each worker's spans can be told apart."""
    resource = Resource.create({"service.version": __version__, "process.pid": os.getpid()})
    name = resource.attributes.get("service.name")
    if not isinstance(name, str) or name.startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": "serve"}))
    return resource


def _exporters(options: TracingOptions) -> list[SpanExporter]:
    exporters: list[SpanExporter] = []
    for name in options.exporters:
        if name == "console":
            exporters.append(ConsoleSpanExporter())
        elif options.protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

            exporters.append(GrpcExporter())
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

            exporters.append(HttpExporter())
    return exporters
