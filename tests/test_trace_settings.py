"""Triton's trace extension (serve/tracing/settings.py, serve/http/trace_routes.py, TraceSetting over gRPC).

The store's rules first, then the same rules over HTTP and gRPC in process, token scopes and the audit log, Triton's
own clients over a socket, and one server of two worker processes where every worker answers the same settings.
"""

from __future__ import annotations

import json
import signal
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import orjson
import psutil
import pytest
import pytest_asyncio
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from serve.errors import InvalidInput
from serve.modelgen import mlp, save
from serve.protocol import grpc_service_pb2 as pb
from serve.tracing.settings import TraceSettings
from tests.fixtures.inprocess import InProcess, in_process
from tests.fixtures.local_servers import ThreadServer, serving_in_thread
from tests.fixtures.servers import RunningServer, start_server

MODEL = "m"
GLOBAL = "/v2/trace/setting"
PER_MODEL = f"/v2/models/{MODEL}/trace/setting"
ADMIN_TOKEN = "admin-token-0123456789abcdef"
INFERENCE_TOKEN = "inference-token-0123456789"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
INFERENCE = {"Authorization": f"Bearer {INFERENCE_TOKEN}"}
KEYS = {"trace_level", "trace_rate", "trace_count", "log_frequency", "trace_file", "trace_mode"}


def write_model(root: Path) -> Path:
    save(mlp([4, 8, 2], seed=1), root / MODEL / "1" / "model.onnx")
    (root / MODEL / "config.pbtxt").write_text(f'name: "{MODEL}"\nmax_batch_size: 8\n')
    return root


@pytest.fixture(autouse=True)
def spans_exported_nowhere(monkeypatch: pytest.MonkeyPatch) -> None:
    # These tests are about the settings: with --trace, spans are made but no collector is needed.
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")


@pytest.fixture
def store() -> TraceSettings:
    return TraceSettings(enabled=True, sampler_ratio=None)


@pytest_asyncio.fixture
async def server(tmp_path: Path) -> AsyncIterator[InProcess]:
    async with in_process(write_model(tmp_path / "models"), trace=True) as running:
        yield running


@pytest_asyncio.fixture
async def untraced(tmp_path: Path) -> AsyncIterator[InProcess]:
    async with in_process(write_model(tmp_path / "models")) as running:
        yield running


# ---- the store's rules ----------------------------------------------------------------------------------------


def test_a_model_s_own_setting_overrides_the_global_one(store: TraceSettings) -> None:
    store.update("", {"trace_rate": "10"})
    store.update(MODEL, {"trace_rate": "2"})
    assert store.document(MODEL)["trace_rate"] == "2"
    assert store.document("")["trace_rate"] == "10"
    assert store.document("other")["trace_rate"] == "10"


def test_null_clears_a_model_s_own_setting_back_to_the_global_one(store: TraceSettings) -> None:
    store.update("", {"trace_rate": "10"})
    store.update(MODEL, {"trace_rate": "2"})
    store.update(MODEL, {"trace_rate": None})
    assert store.document(MODEL)["trace_rate"] == "10"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"trace_rate": "often"}, "trace setting 'trace_rate' must be an integer as a string, not 'often'"),
        ({"trace_rate": "-1"}, "trace setting 'trace_rate' must be at least 0, not -1"),
        ({"trace_count": "-2"}, "trace setting 'trace_count' must be at least -1, not -2"),
        ({"trace_count": ["1", "2"]}, "trace setting 'trace_count' takes one string value"),
    ],
)
def test_rate_and_count_must_be_integers_in_range(store: TraceSettings, changes: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidInput) as raised:
        store.update("", changes)
    assert message in raised.value.message


def test_tensors_level_is_refused_and_points_to_the_payload_log(store: TraceSettings) -> None:
    with pytest.raises(InvalidInput) as raised:
        store.update("", {"trace_level": ["TENSORS"]})
    assert "trace_level TENSORS is not supported" in raised.value.message
    assert "--payload-log-file" in raised.value.message


def test_a_trace_file_is_refused_and_points_to_the_otlp_exporter(store: TraceSettings) -> None:
    with pytest.raises(InvalidInput) as raised:
        store.update("", {"trace_file": "/tmp/trace.json"})
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" in raised.value.message


def test_the_document_read_back_is_accepted_unchanged(store: TraceSettings) -> None:
    document = store.document("")
    as_a_client_reads_it = orjson.loads(orjson.dumps(document))
    assert store.update("", as_a_client_reads_it) == document


def test_the_document_has_every_key_triton_s_clients_read_each_a_string(store: TraceSettings) -> None:
    document = store.document(MODEL)
    assert set(document) == KEYS
    assert document["trace_level"] == ["TIMESTAMPS"]
    assert all(isinstance(value, str) for key, value in document.items() if key != "trace_level")
    assert document["trace_mode"] == "opentelemetry"


def test_with_tracing_off_a_level_is_refused_naming_the_flag() -> None:
    off = TraceSettings(enabled=False, sampler_ratio=None)
    with pytest.raises(InvalidInput) as raised:
        off.update("", {"trace_level": ["TIMESTAMPS"]})
    assert "--trace" in raised.value.message
    assert off.document("")["trace_level"] == ["OFF"]


# ---- over HTTP --------------------------------------------------------------------------------------------------


async def test_get_answers_the_global_settings(server: InProcess) -> None:
    response = await server.http.get(GLOBAL)
    assert response.status_code == 200
    assert response.json() == server.service.trace_settings.document("")


async def test_post_changes_the_global_settings_and_answers_them(server: InProcess) -> None:
    response = await server.http.post(GLOBAL, json={"trace_rate": "100", "trace_count": "5"})
    assert response.status_code == 200, response.text
    assert (response.json()["trace_rate"], response.json()["trace_count"]) == ("100", "5")
    assert (await server.http.get(PER_MODEL)).json()["trace_rate"] == "100"  # the model follows the global one


async def test_post_per_model_changes_that_model_only(server: InProcess) -> None:
    response = await server.http.post(PER_MODEL, json={"trace_level": ["OFF"], "trace_rate": "3"})
    assert response.status_code == 200, response.text
    assert response.json()["trace_level"] == ["OFF"] and response.json()["trace_rate"] == "3"
    assert (await server.http.get(PER_MODEL)).json()["trace_rate"] == "3"
    assert (await server.http.get(GLOBAL)).json()["trace_level"] == ["TIMESTAMPS"]


async def test_null_over_http_clears_the_model_s_own_value(server: InProcess) -> None:
    await server.http.post(GLOBAL, json={"trace_rate": "50"})
    await server.http.post(PER_MODEL, json={"trace_rate": "3"})
    response = await server.http.post(PER_MODEL, json={"trace_rate": None})
    assert response.json()["trace_rate"] == "50"


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_an_unknown_model_is_404(server: InProcess, method: str) -> None:
    response = await server.http.request(method, "/v2/models/nope/trace/setting", json={"trace_rate": 7})
    assert response.status_code == 404 and "nope" in response.json()["error"]


@pytest.mark.parametrize("value", [3, {"n": 1}, ["1", 2], True])
async def test_a_value_that_is_not_a_string_a_list_or_null_is_400_naming_the_key(server: InProcess, value: Any) -> None:
    response = await server.http.post(PER_MODEL, json={"trace_rate": value})
    assert response.status_code == 400
    assert "trace setting 'trace_rate' must be a string, a list of strings or null" in response.json()["error"]


async def test_a_body_that_is_not_a_json_object_is_400(server: InProcess) -> None:
    response = await server.http.post(GLOBAL, content=b'["trace_rate"]')
    assert response.status_code == 400 and "must be an object" in response.json()["error"]


async def test_a_change_with_one_bad_key_changes_nothing(server: InProcess) -> None:
    response = await server.http.post(GLOBAL, json={"trace_rate": "5", "trace_level": ["TENSORS"]})
    assert response.status_code == 400 and "TENSORS" in response.json()["error"]
    assert (await server.http.get(GLOBAL)).json()["trace_rate"] == "1"


async def test_with_tracing_off_posting_a_level_is_400_naming_the_flag(untraced: InProcess) -> None:
    response = await untraced.http.post(GLOBAL, json={"trace_level": ["TIMESTAMPS"]})
    assert response.status_code == 400 and "--trace" in response.json()["error"]
    assert (await untraced.http.get(GLOBAL)).json()["trace_level"] == ["OFF"]


async def test_server_metadata_lists_the_trace_extension(server: InProcess) -> None:
    assert "trace" in (await server.http.get("/v2")).json()["extensions"]


# ---- over gRPC ------------------------------------------------------------------------------------------------


def _request(model: str = "", **settings: list[str]) -> pb.TraceSettingRequest:
    request = pb.TraceSettingRequest(model_name=model)
    for key, values in settings.items():
        request.settings[key].value.extend(values)  # no values: the key is there, empty (clears it)
    return request


def _settings(response: pb.TraceSettingResponse) -> dict[str, list[str]]:
    return {key: list(setting.value) for key, setting in response.settings.items()}


async def test_grpc_without_settings_reads_them(server: InProcess) -> None:
    read = _settings(await server.grpc.TraceSetting(_request()))
    assert set(read) == KEYS and read["trace_level"] == ["TIMESTAMPS"] and read["trace_mode"] == ["opentelemetry"]


async def test_grpc_with_settings_changes_the_model_s_and_answers_them(server: InProcess) -> None:
    changed = _settings(await server.grpc.TraceSetting(_request(MODEL, trace_rate=["4"], trace_count=["9"])))
    assert (changed["trace_rate"], changed["trace_count"]) == (["4"], ["9"])
    assert _settings(await server.grpc.TraceSetting(_request()))["trace_rate"] == ["1"]


async def test_grpc_an_empty_value_clears_the_model_s_own_setting(server: InProcess) -> None:
    await server.grpc.TraceSetting(_request(MODEL, trace_rate=["4"]))
    cleared = _settings(await server.grpc.TraceSetting(_request(MODEL, trace_rate=[])))
    assert cleared["trace_rate"] == ["1"]


async def test_grpc_a_bad_value_is_invalid_argument_naming_the_key(server: InProcess) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await server.grpc.TraceSetting(_request(MODEL, trace_count=["many"]))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'trace_count'" in (raised.value.details() or "")


async def test_grpc_an_unknown_model_is_not_found(server: InProcess) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await server.grpc.TraceSetting(_request("nope"))
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND


async def test_grpc_with_tracing_off_a_level_is_invalid_argument_naming_the_flag(untraced: InProcess) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await untraced.grpc.TraceSetting(_request(trace_level=["TIMESTAMPS"]))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "--trace" in (raised.value.details() or "")


# ---- token scopes and the audit log ----------------------------------------------------------------------------


@pytest.fixture
def guarded_paths(tmp_path: Path) -> tuple[Path, Path, Path]:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"deployer admin {ADMIN_TOKEN}\nfrontend inference {INFERENCE_TOKEN}\n")
    return write_model(tmp_path / "models"), tokens, tmp_path / "audit.jsonl"


@pytest_asyncio.fixture
async def guarded(guarded_paths: tuple[Path, Path, Path]) -> AsyncIterator[InProcess]:
    root, tokens, audit = guarded_paths
    async with in_process(root, auth_tokens_file=tokens, audit_log_file=audit, trace=True) as running:
        yield running


def audit_calls(path: Path) -> list[dict[str, Any]]:
    lines = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    return [line for line in lines if line["event"] == "api_call" and line["action"] == "trace_setting"]


async def test_reading_needs_the_inference_scope(guarded: InProcess) -> None:
    assert (await guarded.http.get(PER_MODEL)).status_code == 401
    assert (await guarded.http.get(PER_MODEL, headers=INFERENCE)).status_code == 200


async def test_changing_needs_the_admin_scope(guarded: InProcess) -> None:
    refused = await guarded.http.post(PER_MODEL, json={"trace_rate": "2"}, headers=INFERENCE)
    assert refused.status_code == 403 and "needs scope admin" in refused.json()["error"]
    accepted = await guarded.http.post(PER_MODEL, json={"trace_rate": "2"}, headers=ADMIN)
    assert accepted.status_code == 200 and accepted.json()["trace_rate"] == "2"


async def test_changing_needs_the_admin_scope_even_without_inference_auth(
    guarded_paths: tuple[Path, Path, Path],
) -> None:
    root, tokens, audit = guarded_paths
    async with in_process(root, auth_tokens_file=tokens, auth_inference=False, trace=True) as running:
        assert (await running.http.get(GLOBAL)).status_code == 200
        assert (await running.http.post(GLOBAL, json={"trace_rate": "2"})).status_code == 401


async def test_grpc_reading_needs_inference_and_changing_admin(guarded: InProcess) -> None:
    inference = [("authorization", f"Bearer {INFERENCE_TOKEN}")]
    admin = [("authorization", f"Bearer {ADMIN_TOKEN}")]
    assert _settings(await guarded.grpc.TraceSetting(_request(MODEL), metadata=inference))["trace_rate"] == ["1"]
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await guarded.grpc.TraceSetting(_request(MODEL, trace_rate=["2"]), metadata=inference)
    assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "needs scope admin" in (raised.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await guarded.grpc.TraceSetting(_request(MODEL))
    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
    changed = await guarded.grpc.TraceSetting(_request(MODEL, trace_rate=["2"]), metadata=admin)
    assert _settings(changed)["trace_rate"] == ["2"]


async def test_each_change_is_an_audit_line_with_its_actor_and_outcome(
    guarded: InProcess, guarded_paths: tuple[Path, Path, Path]
) -> None:
    audit = guarded_paths[2]
    await guarded.http.post(PER_MODEL, json={"trace_rate": "2"}, headers=ADMIN)
    await guarded.http.post(GLOBAL, json={"trace_rate": "x"}, headers=ADMIN)
    await guarded.http.post(PER_MODEL, json={"trace_rate": "2"}, headers=INFERENCE)
    await guarded.grpc.TraceSetting(
        _request(MODEL, trace_count=["3"]), metadata=[("authorization", f"Bearer {ADMIN_TOKEN}")]
    )
    await guarded.http.get(PER_MODEL, headers=INFERENCE)  # a read is not audited
    calls = [(c["actor"], c["model"], c["outcome"]) for c in audit_calls(audit)]
    assert calls == [
        ("deployer", MODEL, "ok"),
        ("deployer", "", "error"),
        ("frontend", MODEL, "denied"),
        ("deployer", MODEL, "ok"),
    ]
    assert "trace_rate" in audit_calls(audit)[1]["reason"]


# ---- Triton's own clients, over a socket ------------------------------------------------------------------------


@pytest.fixture
def socket_server(tmp_path: Path) -> Iterator[ThreadServer]:
    with serving_in_thread(write_model(tmp_path / "models"), tmp_path, "--trace") as running:
        yield running


def test_tritonclient_updates_and_reads_trace_settings_over_http_and_grpc(socket_server: ThreadServer) -> None:
    http = httpclient.InferenceServerClient(f"{socket_server.host}:{socket_server.http_port}")
    rpc = grpcclient.InferenceServerClient(f"{socket_server.host}:{socket_server.grpc_port}")
    try:
        updated = http.update_trace_settings(model_name=MODEL, settings={"trace_rate": "7", "trace_count": "20"})
        assert (updated["trace_rate"], updated["trace_count"]) == ("7", "20")
        assert http.get_trace_settings(model_name=MODEL)["trace_rate"] == "7"
        assert http.get_trace_settings()["trace_rate"] == "1"
        rpc.update_trace_settings(model_name=MODEL, settings={"trace_rate": None, "trace_level": ["OFF"]})
        read = rpc.get_trace_settings(model_name=MODEL, as_json=True)["settings"]
        assert read["trace_rate"]["value"] == ["1"] and read["trace_level"]["value"] == ["OFF"]
        assert http.get_trace_settings(model_name=MODEL)["trace_level"] == ["OFF"]
        # Triton's clients send a document back as they read it: accepted unchanged.
        assert http.update_trace_settings(settings=http.get_trace_settings())["trace_rate"] == "1"
    finally:
        http.close()
        rpc.close()


# ---- two worker processes ---------------------------------------------------------------------------------------


def test_with_two_workers_every_worker_answers_a_changed_model_setting(tmp_path: Path) -> None:
    # Spans are made but exported nowhere: this test is about the settings.
    server = start_server(
        write_model(tmp_path / "models"), tmp_path, "--workers", "2", "--trace", env={"OTEL_TRACES_EXPORTER": "none"}
    )
    try:
        _wait_for_log(server, "serving with 2 worker processes")
        request = urllib.request.Request(
            f"{server.base}{PER_MODEL}", data=json.dumps({"trace_rate": "13"}).encode(), method="POST"
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            assert json.loads(response.read())["trace_rate"] == "13"
        assert _rates_answered(server) == {"13"}
        # A worker started after the change (here, one restarted) applies it as it starts.
        serving = server.log().count("is serving")
        victim = next(p for p in psutil.Process(server.process.pid).children() if "serve.workers.worker" in p.cmdline())
        victim.send_signal(signal.SIGKILL)
        _wait_for_log(server, "is serving", after=serving)
        assert _rates_answered(server) == {"13"}
    finally:
        server.stop()


def _rates_answered(server: RunningServer) -> set[str]:
    rates = set()
    for _ in range(40):  # a new connection each, from the workers' one accept queue: either worker may answer
        with urllib.request.urlopen(f"{server.base}{PER_MODEL}", timeout=10) as response:
            rates.add(json.loads(response.read())["trace_rate"])
    return rates


def _wait_for_log(server: RunningServer, text: str, *, after: int = 0, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while server.log().count(text) <= after:
        assert server.process.poll() is None and time.monotonic() < deadline, server.log()
        time.sleep(0.1)
