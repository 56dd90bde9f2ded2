"""The OpenTelemetry spans: a server span per traced request with its decode, queue and encode, and one span per
batch execution that links to every traced request it served, with the model's compute inside it.

The only module that imports the SDK. Sampling is decided before any span exists (sampling.py). Every span here is
known whole when it is made (its phases are recorded after the fact, from the timestamps the core and the batcher
take anyway, shifted once to the wall clock), so each is built as the SDK's finished ``ReadableSpan`` and handed to
the span processors, without the SDK's tracer and live-span machinery: 38 us of CPU for a traced request's six
spans, against 276 us through ``Tracer.start_span`` (contexts, samplers, attribute cleaning, locks). The SDK's
processors, exporters, resource and data model are used as they are.

Shadow copies (serve/core/shadow.py) carry their client's span as a link, not as a parent: the shadow's batch span
is a trace of its own and never stretches the client's.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Callable, Sequence
from typing import Final

import grpc
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
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
# gRPC's server-side errors (semantic conventions, RPC spans): the rest are the client's doing.
_GRPC_SERVER_ERRORS: Final = frozenset(
    {"UNKNOWN", "DEADLINE_EXCEEDED", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS"}
)
_SAMPLED: Final = TraceFlags(TraceFlags.SAMPLED)
_UNSET: Final = Status(StatusCode.UNSET)
_NO_ATTRIBUTES: Final[Attributes] = {}


class RequestSpan:
    """One traced request: its server span's identity and attributes, and the phases recorded for it; the spans are
    made when it ends."""

    __slots__ = ("_attributes", "_children", "_name", "_parent", "_start", "_tracer", "context", "traceparent")

    def __init__(
        self, tracer: Tracer, name: str, parent: SpanContext | None, attributes: Attributes, start_wall_ns: int
    ) -> None:
        self._tracer = tracer
        self._name = name
        self._parent = parent
        self._attributes = attributes
        self._start = start_wall_ns
        self._children: list[tuple[str, int, int]] = []
        trace_id = parent.trace_id if parent is not None else tracer.new_trace_id()
        state = parent.trace_state if parent is not None else TraceState()
        self.context = SpanContext(trace_id, tracer.new_span_id(), False, _SAMPLED, state)
        # What the payload log, the access log and the exemplars carry.
        self.traceparent = f"00-{trace_id:032x}-{self.context.span_id:016x}-01"

    def phase(self, name: str, start_ns: int, end_ns: int) -> None:
        """A child span over [start_ns, end_ns] of the core's clock (time.perf_counter_ns)."""
        shift = self._tracer.perf_to_wall
        self._children.append((name, start_ns + shift, end_ns + shift))

    def queued(self, batch_started_ns: int, queue_ns: int) -> None:
        """The queue span: from enqueueing to the start of its batch (the batcher's clock, time.monotonic_ns), so it
        ends exactly where its batch span begins."""
        end = batch_started_ns + self._tracer.monotonic_to_wall
        self._children.append(("queue", end - queue_ns, end))

    def answered_by(self, model: str, version: str, role: str, request_id: str) -> None:
        attributes = self._attributes
        attributes["serve.model.name"] = model
        attributes["serve.model.version"] = version
        if role:
            attributes["serve.rollout.role"] = role
        if request_id:
            attributes["serve.request.id"] = request_id

    def end_http(self, status: int, error: BaseException | None = None) -> None:
        self._attributes["http.response.status_code"] = status
        outcome = _UNSET
        if status >= 400:
            self._attributes["error.type"] = str(status)
            if status >= 500:  # a server span's error is the server's: 4xx is the client's (semantic conventions)
                outcome = Status(StatusCode.ERROR, _describe(error))
        self._tracer.finish(self, outcome)

    def end_grpc(self, code: str, error: BaseException | None = None) -> None:
        self._attributes["rpc.response.status_code"] = code
        if self._tracer.old_rpc_attributes:
            status = getattr(grpc.StatusCode, code, grpc.StatusCode.UNKNOWN)
            self._attributes["rpc.grpc.status_code"] = status.value[0]
        outcome = _UNSET
        if code != "OK":
            self._attributes["error.type"] = code
            if code in _GRPC_SERVER_ERRORS:
                outcome = Status(StatusCode.ERROR, _describe(error))
        self._tracer.finish(self, outcome)

    def spans(self, end_wall_ns: int, outcome: Status) -> list[ReadableSpan]:
        """The server span and its children, finished."""
        tracer, context = self._tracer, self.context
        made = [tracer.span(self._name, context, self._parent, SpanKind.SERVER, self._start, end_wall_ns,
                            self._attributes, outcome)]  # fmt: skip
        for name, start, end in self._children:
            child = SpanContext(context.trace_id, tracer.new_span_id(), False, _SAMPLED, context.trace_state)
            made.append(tracer.span(name, child, context, SpanKind.INTERNAL, start, max(start, end)))
        return made


class Tracer(Observer):
    """Makes the spans and hands them to the span processors; an Observer of every batch execution, for the batch
    spans."""

    def __init__(
        self,
        options: TracingOptions,
        settings: TraceSettings,
        *,
        exporters: Sequence[SpanExporter] | None = None,
        span_processor: Callable[[SpanExporter], SpanProcessor] = BatchSpanProcessor,
    ) -> None:
        self.sampling = Sampling(options.sampler, settings)
        self.old_rpc_attributes = options.old_rpc_attributes
        self._resource = _resource()
        self._scope = InstrumentationScope("serve", __version__)
        self._processors = [
            span_processor(exporter) for exporter in (exporters if exporters is not None else _exporters(options))
        ]
        self._ids = random.Random()
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
        return RequestSpan(self, f"POST {route}", _remote(parent), attributes, started_ns + self.perf_to_wall)

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
        return RequestSpan(self, full, _remote(parent), attributes, started_ns + self.perf_to_wall)

    def finish(self, request: RequestSpan, outcome: Status) -> None:
        self._emit(request.spans(time.perf_counter_ns() + self.perf_to_wall, outcome))

    # -- batches --------------------------------------------------------------------------------------------

    def on_execution(self, execution: Execution) -> None:
        if not execution.traces:
            return
        start = execution.started_ns + self.monotonic_to_wall
        links = tuple(Link(context) for context in execution.traces if isinstance(context, SpanContext))
        attributes: Attributes = {
            "serve.model.name": execution.key.name,
            "serve.model.version": execution.key.version,
            "serve.batch.rows": execution.rows,
            "serve.batch.requests": execution.requests,
            "serve.batch.traced_requests": len(links),
        }
        outcome = _UNSET
        if execution.error is not None:
            attributes["error.type"] = type(execution.error).__name__
            outcome = Status(StatusCode.ERROR, _describe(execution.error))
        batch = SpanContext(self.new_trace_id(), self.new_span_id(), False, _SAMPLED)
        compute = SpanContext(batch.trace_id, self.new_span_id(), False, _SAMPLED)
        compute_start = start + execution.compute_input_ns
        self._emit(
            [
                self.span(f"batch {execution.key.name}", batch, None, SpanKind.INTERNAL, start,
                          start + execution.compute_ns, attributes, outcome, links),
                self.span("compute", compute, batch, SpanKind.INTERNAL, compute_start,
                          compute_start + execution.compute_infer_ns, _NO_ATTRIBUTES, outcome),
            ]
        )  # fmt: skip

    # -- making spans ---------------------------------------------------------------------------------------

    def new_trace_id(self) -> int:
        return self._ids.getrandbits(128) or 1  # W3C: all zeros is not a trace id

    def new_span_id(self) -> int:
        return self._ids.getrandbits(64) or 1

    def span(
        self,
        name: str,
        context: SpanContext,
        parent: SpanContext | None,
        kind: SpanKind,
        start_ns: int,
        end_ns: int,
        attributes: Attributes = _NO_ATTRIBUTES,
        outcome: Status = _UNSET,
        links: Sequence[Link] = (),
    ) -> ReadableSpan:
        return ReadableSpan(
            name,
            context,
            parent,
            self._resource,
            attributes,
            links=links,
            kind=kind,
            status=outcome,
            start_time=start_ns,
            end_time=end_ns,
            instrumentation_scope=self._scope,
        )

    def _emit(self, spans: list[ReadableSpan]) -> None:
        for processor in self._processors:
            for span in spans:
                processor.on_end(span)

    # -- shutdown -------------------------------------------------------------------------------------------

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Hand every finished span to the exporters now (tests; the SIGTERM path is close)."""
        return all(processor.force_flush(int(timeout_s * 1000)) for processor in self._processors)

    def close(self, timeout_s: float = 5.0) -> bool:
        """Export what is waiting and stop, within ``timeout_s`` even when the collector is down (the SIGTERM path).
        False when the spans could not all be handed over in time."""
        flushed = threading.Event()
        result = [False]

        def shut_down() -> None:
            try:
                result[0] = self.flush(timeout_s)
                for processor in self._processors:
                    processor.shutdown()
            except Exception:
                log.exception("the trace exporter failed while shutting down")
            finally:
                flushed.set()

        threading.Thread(target=shut_down, name="serve-trace-flush", daemon=True).start()
        if not flushed.wait(timeout_s + 0.5):
            log.warning("traces: spans still waiting for the exporter after %.1f s were dropped", timeout_s)
            return False
        return result[0]


def _remote(parent: Parent | None) -> SpanContext | None:
    if parent is None:
        return None
    return SpanContext(parent.trace_id, parent.span_id, True, TraceFlags(parent.flags), _trace_state(parent.tracestate))


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
