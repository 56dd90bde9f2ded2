"""OpenTelemetry traces (issue 22, README: Tracing): propagation, sampling, the spans of a request and of its batch.

In process, with the SDK's in-memory exporter in place of OTLP (the exporter itself is the SDK's; the OTLP path
through a real collector is tests/test_tracing_users.py)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

import serve.tracing.options as options_module
import serve.tracing.spans as spans
from serve.events import RequestEvent
from serve.modelgen import mlp, save
from serve.protocol import grpc_service_pb2 as pb
from serve.trace_context import Parent, parse_traceparent
from serve.tracing.sampling import SamplerSpec, Sampling
from serve.tracing.settings import TraceSettings
from tests.fixtures.inprocess import InProcess, in_process
from tests.fixtures.rollout_models import two_versions

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_SPAN = "b7ad6b7169203331"
SAMPLED = f"00-{TRACE_ID}-{PARENT_SPAN}-01"
NOT_SAMPLED = f"00-{TRACE_ID}-{PARENT_SPAN}-00"
HTTP_ROUTE = "POST /v2/models/{model_name}/infer"
GRPC_METHOD = "inference.GRPCInferenceService/ModelInfer"
BODY = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}


def write_model(root: Path, name: str = "m", *, hold_for_8: bool = False) -> Path:
    save(mlp([4, 8, 2], seed=1, input_name="x", output_name="y"), root / name / "1" / "model.onnx")
    batching = (
        "dynamic_batching { preferred_batch_size: 8 max_queue_delay_microseconds: 2000000 }" if hold_for_8 else ""
    )
    (root / name / "config.pbtxt").write_text(f'name: "{name}"\nmax_batch_size: 16\n{batching}\n')
    return root


@pytest.fixture
def exported(monkeypatch: pytest.MonkeyPatch) -> InMemorySpanExporter:
    memory = InMemorySpanExporter()
    monkeypatch.setattr(spans, "_exporters", lambda options: [memory])
    return memory


@pytest.fixture
async def traced(tmp_path: Path, exported: InMemorySpanExporter) -> AsyncIterator[InProcess]:
    async with in_process(write_model(tmp_path), trace=True) as server:
        yield server


def finished(server: InProcess, memory: InMemorySpanExporter) -> list[ReadableSpan]:
    tracer = server.service.tracer
    assert isinstance(tracer, spans.Tracer)
    tracer.flush()
    return list(memory.get_finished_spans())


def named(found: list[ReadableSpan], name: str) -> list[ReadableSpan]:
    return [span for span in found if span.name == name]


def grpc_request() -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="m")
    tensor = request.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    tensor.contents.fp32_contents.extend([1, 2, 3, 4])
    return request


# -- propagation -----------------------------------------------------------------------------------------------


async def test_an_http_traceparent_makes_the_server_span_a_child_of_the_callers(
    traced: InProcess, exported: InMemorySpanExporter
) -> None:
    answer = await traced.http.post("/v2/models/m/infer", json=BODY, headers={"traceparent": SAMPLED})
    assert answer.status_code == 200
    (server_span,) = named(finished(traced, exported), HTTP_ROUTE)
    assert server_span.kind is SpanKind.SERVER
    assert f"{server_span.context.trace_id:032x}" == TRACE_ID
    assert server_span.parent is not None and f"{server_span.parent.span_id:016x}" == PARENT_SPAN


async def test_a_grpc_traceparent_makes_the_server_span_a_child_of_the_callers(
    traced: InProcess, exported: InMemorySpanExporter
) -> None:
    await traced.grpc.ModelInfer(grpc_request(), metadata=(("traceparent", SAMPLED),))
    (server_span,) = named(finished(traced, exported), GRPC_METHOD)
    assert f"{server_span.context.trace_id:032x}" == TRACE_ID
    assert server_span.parent is not None and f"{server_span.parent.span_id:016x}" == PARENT_SPAN


async def test_a_parent_that_was_not_sampled_exports_nothing_under_a_parent_based_sampler(
    traced: InProcess, exported: InMemorySpanExporter
) -> None:
    answer = await traced.http.post("/v2/models/m/infer", json=BODY, headers={"traceparent": NOT_SAMPLED})
    await traced.grpc.ModelInfer(grpc_request(), metadata=(("traceparent", NOT_SAMPLED),))
    assert answer.status_code == 200
    assert finished(traced, exported) == []


async def test_a_malformed_traceparent_starts_a_new_trace(traced: InProcess, exported: InMemorySpanExporter) -> None:
    await traced.http.post("/v2/models/m/infer", json=BODY, headers={"traceparent": "00-zz-yy-01"})
    (server_span,) = named(finished(traced, exported), HTTP_ROUTE)
    assert server_span.parent is None


async def test_a_traceidratio_of_a_tenth_traces_about_500_of_5000_root_requests(
    tmp_path: Path, exported: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0.1")
    async with in_process(write_model(tmp_path), trace=True) as server:
        for start in range(0, 5000, 100):
            answers = await asyncio.gather(
                *(server.http.post("/v2/models/m/infer", json=BODY) for _ in range(start, start + 100))
            )
            assert {a.status_code for a in answers} == {200}
        roots = named(finished(server, exported), HTTP_ROUTE)
    assert 500 - 64 <= len(roots) <= 500 + 64  # 3 sigma of Binomial(5000, 0.1)


# -- the spans of one request -----------------------------------------------------------------------------------


async def test_an_http_server_span_is_named_by_its_route_template_and_carries_the_http_conventions(
    traced: InProcess, exported: InMemorySpanExporter
) -> None:
    await traced.http.post("/v2/models/m/versions/1/infer", json=BODY, headers={"traceparent": SAMPLED})
    found = finished(traced, exported)
    (server_span,) = named(found, "POST /v2/models/{model_name}/versions/{model_version}/infer")
    attributes = server_span.attributes or {}
    assert attributes["http.request.method"] == "POST"
    assert attributes["http.route"] == "/v2/models/{model_name}/versions/{model_version}/infer"
    assert attributes["http.response.status_code"] == 200
    assert attributes["serve.model.name"] == "m" and attributes["serve.model.version"] == "1"
    assert all("/m/" not in span.name for span in found)


async def test_a_request_span_has_decode_queue_and_encode_children(
    traced: InProcess, exported: InMemorySpanExporter
) -> None:
    await traced.http.post("/v2/models/m/infer", json=BODY, headers={"traceparent": SAMPLED})
    found = finished(traced, exported)
    (server_span,) = named(found, HTTP_ROUTE)
    children = [
        span for span in found if span.parent is not None and span.parent.span_id == server_span.context.span_id
    ]
    assert sorted(span.name for span in children) == ["decode", "encode", "queue"]
    for child in children:
        assert server_span.start_time <= child.start_time <= child.end_time <= server_span.end_time


async def test_a_refused_request_ends_its_span_with_the_status_it_was_answered(
    traced: InProcess, exported: InMemorySpanExporter
) -> None:
    bad = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]}
    answer = await traced.http.post("/v2/models/m/infer", json=bad, headers={"traceparent": SAMPLED})
    assert answer.status_code == 400
    (server_span,) = named(finished(traced, exported), HTTP_ROUTE)
    attributes = server_span.attributes or {}
    assert attributes["http.response.status_code"] == 400 and attributes["error.type"] == "400"


async def test_a_grpc_span_carries_the_current_rpc_conventions(
    traced: InProcess, exported: InMemorySpanExporter
) -> None:
    await traced.grpc.ModelInfer(grpc_request(), metadata=(("traceparent", SAMPLED),))
    (server_span,) = named(finished(traced, exported), GRPC_METHOD)
    attributes = server_span.attributes or {}
    assert attributes["rpc.system.name"] == "grpc"
    assert attributes["rpc.method"] == GRPC_METHOD
    assert attributes["rpc.response.status_code"] == "OK"
    assert "rpc.system" not in attributes and "rpc.grpc.status_code" not in attributes


async def test_rpc_dup_adds_the_old_rpc_attributes(
    tmp_path: Path, exported: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_SEMCONV_STABILITY_OPT_IN", "http,rpc/dup")
    async with in_process(write_model(tmp_path), trace=True) as server:
        missing = grpc_request()
        missing.model_name = "absent"
        with pytest.raises(grpc.aio.AioRpcError):
            await server.grpc.ModelInfer(missing, metadata=(("traceparent", SAMPLED),))
        await server.grpc.ModelInfer(grpc_request(), metadata=(("traceparent", SAMPLED),))
        found = named(finished(server, exported), GRPC_METHOD)
    spans_by_code = {(span.attributes or {})["rpc.response.status_code"]: span.attributes or {} for span in found}
    assert set(spans_by_code) == {"NOT_FOUND", "OK"}
    assert spans_by_code["OK"]["rpc.system"] == "grpc"
    assert spans_by_code["OK"]["rpc.service"] == "inference.GRPCInferenceService"
    assert spans_by_code["OK"]["rpc.grpc.status_code"] == 0
    assert spans_by_code["NOT_FOUND"]["rpc.grpc.status_code"] == 5


# -- the batch span ---------------------------------------------------------------------------------------------


async def test_eight_requests_batched_together_give_one_batch_span_with_eight_links(
    tmp_path: Path, exported: InMemorySpanExporter
) -> None:
    async with in_process(write_model(tmp_path, hold_for_8=True), trace=True) as server:
        answers = await asyncio.gather(
            *(server.http.post("/v2/models/m/infer", json=BODY, headers={"traceparent": SAMPLED}) for _ in range(8))
        )
        assert {a.status_code for a in answers} == {200}
        found = finished(server, exported)
    (batch,) = named(found, "batch m")
    attributes = batch.attributes or {}
    assert attributes["serve.batch.rows"] == 8 and attributes["serve.batch.requests"] == 8
    servers = named(found, HTTP_ROUTE)
    assert {link.context.span_id for link in batch.links} == {span.context.span_id for span in servers}
    (compute,) = named(found, "compute")
    assert compute.parent is not None and compute.parent.span_id == batch.context.span_id
    assert batch.start_time is not None and batch.end_time is not None
    assert batch.start_time <= (compute.start_time or 0) <= (compute.end_time or 0) <= batch.end_time


async def test_each_queue_span_ends_within_a_millisecond_of_its_batch_start(
    tmp_path: Path, exported: InMemorySpanExporter
) -> None:
    async with in_process(write_model(tmp_path, hold_for_8=True), trace=True) as server:
        await asyncio.gather(
            *(server.http.post("/v2/models/m/infer", json=BODY, headers={"traceparent": SAMPLED}) for _ in range(8))
        )
        found = finished(server, exported)
    (batch,) = named(found, "batch m")
    queues = named(found, "queue")
    assert len(queues) == 8
    assert all(abs((q.end_time or 0) - (batch.start_time or 0)) <= 1_000_000 for q in queues)


async def test_an_untraced_batch_makes_no_span(traced: InProcess, exported: InMemorySpanExporter) -> None:
    await traced.http.post("/v2/models/m/infer", json=BODY, headers={"traceparent": NOT_SAMPLED})
    assert named(finished(traced, exported), "batch m") == []


# -- what carries the trace id ------------------------------------------------------------------------------------


async def test_the_request_event_carries_the_server_spans_traceparent(
    traced: InProcess, exported: InMemorySpanExporter
) -> None:
    seen: list[str] = []
    original = traced.service._observer.on_request

    def spy(event: RequestEvent) -> None:
        seen.append(event.traceparent)
        original(event)

    traced.service._observer.on_request = spy  # type: ignore[method-assign]
    await traced.http.post("/v2/models/m/infer", json=BODY, headers={"traceparent": SAMPLED})
    (server_span,) = named(finished(traced, exported), HTTP_ROUTE)
    assert seen == [f"00-{TRACE_ID}-{server_span.context.span_id:016x}-01"]


# -- sampling rules (no server) -----------------------------------------------------------------------------------


def test_the_default_sampler_is_parent_based_always_on() -> None:
    spec = SamplerSpec.from_env({})
    assert spec.parent_based and spec.root == "always_on"


def test_an_unknown_sampler_is_refused_naming_the_known_ones() -> None:
    with pytest.raises(ValueError, match="parentbased_traceidratio"):
        SamplerSpec.from_env({"OTEL_TRACES_SAMPLER": "jaeger_remote"})


def test_a_sampler_argument_outside_0_to_1_is_refused() -> None:
    with pytest.raises(ValueError, match="between 0 and 1"):
        SamplerSpec.from_env({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "2"})


@pytest.mark.parametrize(
    "header",
    [
        "",
        f"00-{'0' * 32}-{PARENT_SPAN}-01",  # an all-zero trace id is invalid
        f"00-{TRACE_ID}-{'0' * 16}-01",
        f"ff-{TRACE_ID}-{PARENT_SPAN}-01",
        f"00-{TRACE_ID.upper()}-{PARENT_SPAN}-01",
        f"00-{TRACE_ID}-{PARENT_SPAN}-01-extra",
    ],
)
def test_an_invalid_traceparent_is_ignored(header: str) -> None:
    assert parse_traceparent(header) is None


def test_a_later_traceparent_version_is_read_for_what_it_shares_with_00() -> None:
    parent = parse_traceparent(f"01-{TRACE_ID}-{PARENT_SPAN}-01-what-comes-next")
    assert parent is not None and parent.sampled


def test_a_model_set_to_trace_level_off_is_never_traced_even_with_a_sampled_parent() -> None:
    settings = TraceSettings(enabled=True, sampler_ratio=1.0)
    settings.update("m", {"trace_level": ["OFF"]})
    sampling = Sampling(SamplerSpec.from_env({}), settings)
    assert not sampling.decide("m", Parent(1, 1, 1))
    assert sampling.decide("other", Parent(1, 1, 1))


def test_a_trace_rate_of_n_traces_every_nth_root_request() -> None:
    settings = TraceSettings(enabled=True, sampler_ratio=1.0)
    settings.update("m", {"trace_rate": "4"})
    sampling = Sampling(SamplerSpec.from_env({}), settings)
    assert [sampling.decide("m", None) for _ in range(8)] == [False, False, False, True] * 2


def test_a_trace_count_stops_tracing_once_spent() -> None:
    settings = TraceSettings(enabled=True, sampler_ratio=1.0)
    settings.update("", {"trace_count": "3"})
    sampling = Sampling(SamplerSpec.from_env({}), settings)
    assert sum(sampling.decide("m", None) for _ in range(10)) == 3
    assert settings.document("m")["trace_count"] == "0"


def test_traceidratio_decides_a_remote_trace_by_its_id() -> None:
    settings = TraceSettings(enabled=True, sampler_ratio=0.5)
    sampling = Sampling(SamplerSpec("ratio", parent_based=False, ratio=0.5), settings)
    low, high = Parent(1, 1, 0), Parent((1 << 64) - 1, 1, 1)
    assert sampling.decide("m", low) and not sampling.decide("m", high)


# -- with tracing off ---------------------------------------------------------------------------------------------


def test_with_tracing_off_the_opentelemetry_sdk_is_never_imported(tmp_path: Path) -> None:
    write_model(tmp_path)
    script = f"""
import asyncio, sys
from pathlib import Path
from tests.fixtures.inprocess import in_process

async def main():
    async with in_process(Path({str(tmp_path)!r})) as server:
        body = {BODY!r}
        assert (await server.http.post("/v2/models/m/infer", json=body)).status_code == 200

asyncio.run(main())
loaded = sorted(name for name in sys.modules if name.startswith("opentelemetry"))
print(loaded)
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=Path(__file__).parent.parent
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


async def test_the_access_log_line_of_a_traced_request_carries_its_trace_id(
    tmp_path: Path, exported: InMemorySpanExporter, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="serve.access")
    async with in_process(write_model(tmp_path), trace=True, access_log=True) as server:
        await server.http.post("/v2/models/m/infer", json=BODY, headers={"traceparent": SAMPLED})
        await server.http.post("/v2/models/m/infer", json=BODY, headers={"traceparent": NOT_SAMPLED})
    traced, untraced = (json.loads(r.getMessage()) for r in caplog.records if r.name == "serve.access")
    assert traced["trace_id"] == TRACE_ID and traced["model"] == "m" and traced["outcome"] == "success"
    assert "trace_id" not in untraced and untraced["request_id"]


async def test_a_traced_request_leaves_its_trace_id_as_an_exemplar_on_the_latency_histograms(
    traced: InProcess, exported: InMemorySpanExporter
) -> None:
    await traced.http.post("/v2/models/m/infer", json=BODY, headers={"traceparent": SAMPLED})
    scrape = await traced.http.get("/metrics", headers={"accept": "application/openmetrics-text; version=1.0.0"})
    exemplars = [line for line in scrape.text.splitlines() if f'# {{trace_id="{TRACE_ID}"}}' in line]
    assert any(line.startswith("serve_request_duration_seconds_bucket") for line in exemplars)
    assert any(line.startswith("serve_queue_duration_seconds_bucket") for line in exemplars)


async def test_an_audited_http_call_records_its_callers_trace_id(
    tmp_path: Path, exported: InMemorySpanExporter
) -> None:
    audit = tmp_path / "audit.jsonl"
    root = write_model(tmp_path / "models")
    async with in_process(root, trace=True, audit_log_file=audit, model_control_mode="explicit") as server:
        answer = await server.http.post("/v2/repository/models/m/load", headers={"traceparent": SAMPLED})
        assert answer.status_code == 200
    calls = [json.loads(line) for line in audit.read_text().splitlines() if '"api_call"' in line]
    assert [(c["action"], c.get("trace_id")) for c in calls] == [("load", TRACE_ID)]


async def test_an_audited_grpc_call_records_its_callers_trace_id(
    tmp_path: Path, exported: InMemorySpanExporter
) -> None:
    audit = tmp_path / "audit.jsonl"
    root = write_model(tmp_path / "models")
    async with in_process(root, trace=True, audit_log_file=audit, model_control_mode="explicit") as server:
        await server.grpc.RepositoryModelLoad(
            pb.RepositoryModelLoadRequest(model_name="m"), metadata=(("traceparent", SAMPLED),)
        )
    calls = [json.loads(line) for line in audit.read_text().splitlines() if '"api_call"' in line]
    assert [(c["action"], c.get("trace_id")) for c in calls] == [("load", TRACE_ID)]


async def test_a_payload_event_carries_the_traceparent_of_its_requests_server_span(
    tmp_path: Path, exported: InMemorySpanExporter
) -> None:
    log_file = tmp_path / "payloads.jsonl"
    async with in_process(write_model(tmp_path / "models"), trace=True, payload_log_file=log_file) as server:
        await server.http.post("/v2/models/m/infer", json=BODY, headers={"traceparent": SAMPLED})
        (server_span,) = named(finished(server, exported), HTTP_ROUTE)
    events = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert len(events) == 2
    assert {e["traceparent"] for e in events} == {f"00-{TRACE_ID}-{server_span.context.span_id:016x}-01"}


async def test_a_shadow_copy_runs_in_a_batch_span_linked_to_the_clients_span_not_in_its_trace(
    tmp_path: Path, exported: InMemorySpanExporter
) -> None:
    directory = two_versions(tmp_path, "ab")
    (directory / "rollout.yaml").write_text("primary: 1\nshadow: {version: 2, percent: 100}\n")
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}]}
    async with in_process(tmp_path, trace=True) as server:
        answer = await server.http.post("/v2/models/ab/infer", json=body, headers={"traceparent": SAMPLED})
        assert answer.status_code == 200 and answer.json()["model_version"] == "1"
        for _ in range(100):  # the copy runs after the client's answer
            found = finished(server, exported)
            if len(named(found, "batch ab")) == 2:
                break
            await asyncio.sleep(0.02)
    (request_span,) = named(found, HTTP_ROUTE)
    batches = {(span.attributes or {})["serve.model.version"]: span for span in named(found, "batch ab")}
    for batch in batches.values():
        assert [link.context.span_id for link in batch.links] == [request_span.context.span_id]
        assert batch.context.trace_id != request_span.context.trace_id
    client_trace = [span for span in found if span.context.trace_id == request_span.context.trace_id]
    assert sorted(span.name for span in client_trace) == sorted([HTTP_ROUTE, "decode", "queue", "encode"])


async def test_each_message_of_a_stream_gets_a_server_span_under_the_streams_traceparent(
    traced: InProcess, exported: InMemorySpanExporter
) -> None:
    async def messages() -> AsyncIterator[pb.ModelInferRequest]:
        for _ in range(3):
            yield grpc_request()

    replies = [r async for r in traced.grpc.ModelStreamInfer(messages(), metadata=(("traceparent", SAMPLED),))]
    assert [r.error_message for r in replies] == ["", "", ""]
    streamed = named(finished(traced, exported), "inference.GRPCInferenceService/ModelStreamInfer")
    assert len(streamed) == 3
    assert all(span.parent is not None and f"{span.parent.span_id:016x}" == PARENT_SPAN for span in streamed)


def test_tracing_without_its_extra_names_the_extra_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(options_module, "missing_modules", lambda extra: ["opentelemetry.sdk"])
    with pytest.raises(ValueError, match=r"pip install 'serve\[tracing\]'"):
        options_module.tracing_options(True, {})


def test_serve_run_refuses_an_unknown_sampler_before_it_starts(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "serve",
            "run",
            "--model-repository",
            str(write_model(tmp_path)),
            "--trace",
            "--http-port",
            "0",
            "--grpc-port",
            "0",
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "OTEL_TRACES_SAMPLER": "jaeger_remote"},
    )
    assert done.returncode == 1  # as for every mistake serve run finds before it starts (serve/preflight.py)
    assert "OTEL_TRACES_SAMPLER='jaeger_remote'" in done.stderr


def test_model_names_from_clients_share_the_global_settings_and_are_not_kept() -> None:
    settings = TraceSettings(enabled=True, sampler_ratio=1.0)
    settings.update("", {"trace_rate": "2"})
    sampling = Sampling(SamplerSpec.from_env({}), settings)
    decided = [sampling.decide(f"no-such-model-{i}", None) for i in range(1000)]
    assert sum(decided) == 500  # one global counter of arrivals
    assert settings.effective("another") is settings.effective("")
