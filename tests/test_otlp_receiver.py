"""The test OTLP receiver, fed by the OpenTelemetry SDK's own OTLP exporters over both transports."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence

import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import Link, SpanKind, Status, StatusCode, Tracer

from tests.fixtures.otlp_receiver import OtlpReceiver, Protocol, unused_endpoint

PROTOCOLS: list[Protocol] = ["http/protobuf", "grpc"]
TIMEOUT_S = 0.5  # under the exporters' first back-off (1 s): a refused export fails at once, without a retry


class Recording(SpanExporter):
    """The real exporter, with the result of every export kept: SimpleSpanProcessor only logs a failure."""

    def __init__(self, exporter: SpanExporter) -> None:
        self.exporter = exporter
        self.results: list[SpanExportResult] = []

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        result = self.exporter.export(spans)
        self.results.append(result)
        return result

    def shutdown(self) -> None:
        self.exporter.shutdown()


def exporter_to(endpoint: str, protocol: Protocol, compression: Compression | None = None) -> Recording:
    if protocol == "grpc":
        return Recording(GrpcExporter(endpoint=endpoint, insecure=True, timeout=TIMEOUT_S))
    return Recording(HttpExporter(endpoint=f"{endpoint}/v1/traces", timeout=TIMEOUT_S, compression=compression))


def endpoint_of(otlp: OtlpReceiver, protocol: Protocol) -> str:
    return otlp.grpc_endpoint if protocol == "grpc" else otlp.http_endpoint


@pytest.fixture
def otlp() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as receiver:
        yield receiver


class Traced:
    def __init__(self, processor: SpanProcessor) -> None:
        self.provider = TracerProvider(resource=Resource.create({"service.name": "receiver-test"}))
        self.provider.add_span_processor(processor)
        self.tracer: Tracer = self.provider.get_tracer("tests.otlp")

    def one_span(self, name: str = "work") -> None:
        with self.tracer.start_as_current_span(name):
            pass

    def close(self) -> None:
        self.provider.shutdown()


@pytest.fixture
def traced() -> Iterator[list[Traced]]:
    opened: list[Traced] = []
    yield opened
    for t in opened:
        t.close()


def simple(exporter: Recording, opened: list[Traced]) -> Traced:
    t = Traced(SimpleSpanProcessor(exporter))
    opened.append(t)
    return t


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_span_with_attributes_a_parent_and_a_link_arrives_intact(
    otlp: OtlpReceiver, traced: list[Traced], protocol: Protocol
) -> None:
    t = simple(exporter_to(endpoint_of(otlp, protocol), protocol), traced)
    with t.tracer.start_as_current_span("linked") as linked:
        pass
    with t.tracer.start_as_current_span("parent", kind=SpanKind.SERVER) as parent:
        with t.tracer.start_as_current_span(
            "child",
            attributes={"rows": 8, "model": "small", "ratio": 0.5, "ok": True, "dims": (32, 8)},
            links=[Link(linked.get_span_context())],
        ) as child:
            child.set_status(Status(StatusCode.ERROR, "boom"))

    (got,) = otlp.wait_for(lambda s: s.name == "child")
    (server,) = otlp.wait_for(lambda s: s.name == "parent")
    context, link = child.get_span_context(), linked.get_span_context()
    assert (got.trace_id, got.span_id) == (f"{context.trace_id:032x}", f"{context.span_id:016x}")
    assert got.parent_span_id == f"{parent.get_span_context().span_id:016x}"
    assert server.parent_span_id == ""
    assert (server.kind, got.kind) == ("SPAN_KIND_SERVER", "SPAN_KIND_INTERNAL")
    assert dict(got.attributes) == {"rows": 8, "model": "small", "ratio": 0.5, "ok": True, "dims": (32, 8)}
    assert got.links == ((f"{link.trace_id:032x}", f"{link.span_id:016x}"),)
    assert got.status == "STATUS_CODE_ERROR"
    assert 0 < got.start_ns <= got.end_ns
    assert got.service_name == "receiver-test"
    assert got.transport == protocol


def test_a_gzip_body_is_accepted_over_http(otlp: OtlpReceiver, traced: list[Traced]) -> None:
    exporter = exporter_to(otlp.http_endpoint, "http/protobuf", Compression.Gzip)
    simple(exporter, traced).one_span("zipped")

    assert [s.name for s in otlp.wait_for_count(1)] == ["zipped"]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_fail_makes_the_exporter_report_failure_and_records_nothing(
    otlp: OtlpReceiver, traced: list[Traced], protocol: Protocol
) -> None:
    exporter = exporter_to(endpoint_of(otlp, protocol), protocol)
    otlp.fail(503)
    simple(exporter, traced).one_span()

    assert exporter.results == [SpanExportResult.FAILURE]
    assert otlp.attempts >= 1
    assert otlp.spans() == ()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_heal_after_fail_lets_the_next_export_through(
    otlp: OtlpReceiver, traced: list[Traced], protocol: Protocol
) -> None:
    exporter = exporter_to(endpoint_of(otlp, protocol), protocol)
    t = simple(exporter, traced)
    otlp.fail(503)
    t.one_span("refused")
    otlp.heal()
    t.one_span("accepted")

    assert exporter.results == [SpanExportResult.FAILURE, SpanExportResult.SUCCESS]
    assert [s.name for s in otlp.spans()] == ["accepted"]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_hang_holds_an_export_past_the_exporters_timeout_until_heal(
    otlp: OtlpReceiver, traced: list[Traced], protocol: Protocol
) -> None:
    exporter = exporter_to(endpoint_of(otlp, protocol), protocol)
    t = simple(exporter, traced)
    otlp.hang()
    started = time.monotonic()
    t.one_span("hung")
    waited_s = time.monotonic() - started
    otlp.heal()
    t.one_span("after")

    assert waited_s >= TIMEOUT_S * 0.9
    assert exporter.results == [SpanExportResult.FAILURE, SpanExportResult.SUCCESS]
    assert [s.name for s in otlp.wait_for_count(1)] == ["after"]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_env_points_an_exporter_built_from_the_environment_at_the_receiver(
    otlp: OtlpReceiver, traced: list[Traced], protocol: Protocol, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in otlp.env(protocol).items():
        monkeypatch.setenv(name, value)
    exporter: SpanExporter = GrpcExporter() if protocol == "grpc" else HttpExporter()
    t = Traced(BatchSpanProcessor(exporter))  # reads OTEL_BSP_SCHEDULE_DELAY
    traced.append(t)
    t.one_span("batched")

    (span,) = otlp.wait_for(lambda s: s.name == "batched", timeout_s=2)
    assert span.transport == protocol


def test_env_sets_a_short_batch_schedule_delay(otlp: OtlpReceiver) -> None:
    assert int(otlp.env()["OTEL_BSP_SCHEDULE_DELAY"]) <= 100


def test_env_refuses_an_unknown_protocol(otlp: OtlpReceiver) -> None:
    with pytest.raises(ValueError, match="'http/json' is not one of"):
        otlp.env("http/json")  # type: ignore[arg-type]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_an_exporter_pointed_at_the_unused_endpoint_fails(traced: list[Traced], protocol: Protocol) -> None:
    exporter = exporter_to(unused_endpoint(), protocol)
    simple(exporter, traced).one_span()

    assert exporter.results == [SpanExportResult.FAILURE]


def test_fail_refuses_a_status_that_is_not_an_error(otlp: OtlpReceiver) -> None:
    with pytest.raises(ValueError, match="give a 4xx or 5xx status"):
        otlp.fail(200)


def test_wait_for_times_out_naming_what_arrived(otlp: OtlpReceiver, traced: list[Traced]) -> None:
    simple(exporter_to(otlp.http_endpoint, "http/protobuf"), traced).one_span("other")

    with pytest.raises(TimeoutError, match=r"0 of the 1 spans wanted .* named \['other'\]"):
        otlp.wait_for(lambda s: s.name == "missing", timeout_s=0.2)


def test_clear_forgets_the_spans_received(otlp: OtlpReceiver, traced: list[Traced]) -> None:
    simple(exporter_to(otlp.http_endpoint, "http/protobuf"), traced).one_span()
    otlp.clear()

    assert otlp.spans() == ()


def test_an_otlp_json_body_is_refused_naming_the_content_type_to_send(otlp: OtlpReceiver) -> None:
    request = urllib.request.Request(
        f"{otlp.http_endpoint}/v1/traces", data=b"{}", headers={"Content-Type": "application/json"}
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=5)

    assert refused.value.code == 415
    assert b"send application/x-protobuf" in refused.value.read()


def test_received_spans_are_known_by_their_ids_in_a_set(otlp: OtlpReceiver, traced: list[Traced]) -> None:
    t = simple(exporter_to(otlp.http_endpoint, "http/protobuf"), traced)
    t.one_span("a")
    t.one_span("b")

    assert len(set(otlp.spans()) | set(otlp.spans())) == 2
