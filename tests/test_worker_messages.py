"""Worker IPC messages: every kind survives the codec and a socket, and a malformed frame is a clear error."""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest

from serve.errors import ModelNotFound, ServeError
from serve.protocol import model_config_pb2 as mc
from serve.workers import codec, ipc
from serve.workers.codec import MalformedMessage
from serve.workers.messages import (
    SUPERVISOR_REQUESTS,
    WORKER_REQUESTS,
    Answer,
    ApplyLoad,
    ApplyTraceSettings,
    ApplyUnload,
    Done,
    EvidenceAnswer,
    Export,
    ExportEvidence,
    InputStats,
    InputStatsAnswer,
    JoinAnswer,
    JoinLabels,
    Load,
    Loaded,
    LoadedAnswer,
    ModelSpec,
    ModelStatistics,
    Performance,
    PerformanceAnswer,
    Ready,
    ReloadRollout,
    Request,
    RolloutChanged,
    RolloutEvidence,
    StartupModels,
    StartupModelsAnswer,
    StatisticsAnswer,
    TraceSettingsChanged,
    Unload,
    WorkerRequest,
    answer_worker_request,
)

SPEC = ModelSpec("fraud", mc.ModelConfig(name="fraud", max_batch_size=8).SerializeToString(), {"1/model.onnx": b"\0\1"})
REQUESTS: list[Request[Answer]] = [
    ModelStatistics("fraud", "2"),
    InputStats("fraud", "", 17),
    Load(SPEC, "alice"),
    Load(ModelSpec("plain"), "bob"),
    Unload("fraud", "alice"),
    StartupModels(),
    Ready(1, 4242, 3),
    Export("fraud", "1"),
    ApplyLoad(SPEC, "startup"),
    ApplyUnload("fraud", "startup"),
    Loaded(),
    RolloutChanged("fraud"),
    RolloutEvidence("fraud"),
    ReloadRollout("fraud"),
    ExportEvidence("fraud"),
    JoinLabels("fraud", "2", b'[{"id": "a", "label": 1}]'),
    Performance("fraud", ""),
    TraceSettingsChanged("fraud", b'{"trace_rate": "10", "trace_count": null}'),
    ApplyTraceSettings("", b'{"trace_level": ["TIMESTAMPS"]}'),
]
ANSWERS: list[tuple[Request[Answer], Answer]] = [
    (ModelStatistics("fraud", ""), StatisticsAnswer(b'[{"name":"fraud"}]')),
    (Export("fraud", ""), InputStatsAnswer(b"{}" * 1000)),
    (StartupModels(), StartupModelsAnswer(5, (SPEC, ModelSpec("plain")))),
    (StartupModels(), StartupModelsAnswer(6, (), b'{"fraud": {"trace_rate": "10"}}')),
    (Loaded(), LoadedAnswer(("a", "b"))),
    (Unload("fraud", "x"), Done()),
    (RolloutEvidence("fraud"), EvidenceAnswer(b'{"arms":{}}')),
    (JoinLabels("fraud", "", b"[]"), JoinAnswer(bytes([0, 1, 2, 3, 4]))),
    (Performance("fraud", ""), PerformanceAnswer(b'{"versions":[]}')),
]
EVERY_REQUEST = (*SUPERVISOR_REQUESTS, *WORKER_REQUESTS)


def _frame(header: object, body: bytes = b"") -> tuple[dict[str, object], bytes]:
    return orjson.loads(orjson.dumps(header)), body


@pytest.mark.parametrize("request_", REQUESTS, ids=lambda r: type(r).__name__)
def test_every_request_kind_decodes_to_what_was_encoded(request_: Request[Answer]) -> None:
    header, body = _frame(*codec.encode_request(request_))
    assert codec.decode_request(header, body, EVERY_REQUEST) == request_


def test_each_request_kind_has_a_name_of_its_own_on_the_socket_that_answers_it() -> None:
    for kinds in (SUPERVISOR_REQUESTS, WORKER_REQUESTS):
        assert len({cls.kind for cls in kinds}) == len(kinds)
    assert len({cls.kind for cls in EVERY_REQUEST}) == len(set(EVERY_REQUEST)) == 18
    assert {type(r) for r in REQUESTS} == set(EVERY_REQUEST)  # REQUESTS has every kind


@pytest.mark.parametrize(("request_", "answer"), ANSWERS, ids=lambda m: type(m).__name__)
def test_every_answer_kind_decodes_to_what_was_encoded(request_: Request[Answer], answer: Answer) -> None:
    assert type(answer) is request_.answer
    assert codec.decode_answer(request_, *_frame(*codec.encode_answer(answer))) == answer


def test_a_document_travels_as_the_frame_body_not_in_the_header() -> None:
    header, body = codec.encode_answer(InputStatsAnswer(b"\xff" * 10))
    assert (header, body) == ({"ok": True}, b"\xff" * 10)


def test_a_model_spec_keeps_its_config_and_files() -> None:
    config = mc.ModelConfig(name="fraud", max_batch_size=8)
    spec = ModelSpec.of("fraud", config, {"a": b"1"})
    assert (spec.model_config(), spec.model_files()) == (config, {"a": b"1"})
    assert (ModelSpec.of("plain", None, None).model_config(), ModelSpec("plain").model_files()) == (None, None)


def test_an_error_answer_is_raised_as_the_serve_error_it_was() -> None:
    header = codec.encode_error(ModelNotFound("no model 'x'"))
    with pytest.raises(ModelNotFound, match="no model 'x'"):
        codec.decode_answer(Loaded(), *_frame(header))


def test_an_error_answer_naming_no_serve_error_is_a_serve_error() -> None:
    with pytest.raises(ServeError, match="it broke"):
        codec.decode_answer(Loaded(), *_frame({"ok": False, "error": "it broke", "status": "KeyError"}))


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        ({"op": "reboot"}, "unknown request 'reboot'"),
        ({"name": "fraud"}, "unknown request None"),
        ({"op": "statistics", "name": "fraud"}, "statistics: no field 'version'"),
        ({"op": "ready", "index": "1", "pid": 2, "generation": 0}, r"ready.index: expected int, got str"),
        ({"op": "ready", "index": True, "pid": 2, "generation": 0}, r"ready.index: expected int, got bool"),
        ({"op": "load", "actor": "a", "spec": []}, "load.spec: expected dict, got list"),
        (
            {"op": "load", "actor": "a", "spec": {"name": "m", "config": "!!", "files": {}}},
            "load.spec.config: not base64",
        ),
        ({"op": "load", "actor": "a", "spec": {"name": "m", "config": None, "files": {"f": 1}}}, r"files\.f: expected"),
    ],
)
def test_a_malformed_request_is_an_error_naming_what_is_wrong(header: dict[str, object], reason: str) -> None:
    with pytest.raises(MalformedMessage, match=reason):
        codec.decode_request(*_frame(header), EVERY_REQUEST)


def test_a_request_for_the_other_side_is_unknown_here() -> None:
    with pytest.raises(MalformedMessage, match="unknown request 'ready'"):
        codec.decode_request(*_frame(*codec.encode_request(Ready(0, 1, 0))), WORKER_REQUESTS)


def test_a_malformed_answer_is_an_error_naming_what_is_wrong() -> None:
    with pytest.raises(MalformedMessage, match="answer to loaded.models: expected list, got str"):
        codec.decode_answer(Loaded(), *_frame({"ok": True, "models": "a"}))


# ---- over a real socket, in this process ------------------------------------------------------------


class _Worker:
    """A WorkerHandler that remembers what it was asked."""

    def __init__(self) -> None:
        self.asked: list[WorkerRequest] = []

    async def statistics(self, request: ModelStatistics) -> StatisticsAnswer:
        self.asked.append(request)
        return StatisticsAnswer(b"[]")

    async def export(self, request: Export) -> InputStatsAnswer:
        self.asked.append(request)
        return InputStatsAnswer(b'{"rows": 3}')

    async def apply_load(self, request: ApplyLoad) -> Done:
        self.asked.append(request)
        return Done()

    async def apply_unload(self, request: ApplyUnload) -> Done:
        raise ModelNotFound(f"no model '{request.name}'")

    async def loaded(self, request: Loaded) -> LoadedAnswer:
        raise RuntimeError("a bug")

    async def reload_rollout(self, request: ReloadRollout) -> Done:
        self.asked.append(request)
        return Done()

    async def export_evidence(self, request: ExportEvidence) -> EvidenceAnswer:
        self.asked.append(request)
        return EvidenceAnswer(b'{"arms": {}}')

    async def join_labels(self, request: JoinLabels) -> JoinAnswer:
        self.asked.append(request)
        return JoinAnswer(bytes([0, 4]))

    async def performance(self, request: Performance) -> PerformanceAnswer:
        self.asked.append(request)
        return PerformanceAnswer(b'{"versions": []}')

    async def apply_trace_settings(self, request: ApplyTraceSettings) -> Done:
        self.asked.append(request)
        return Done()


@pytest.fixture
async def worker(tmp_path: Path) -> AsyncIterator[tuple[Path, _Worker]]:
    handler = _Worker()
    server = ipc.ControlServer(
        tmp_path / "worker-0.sock", WORKER_REQUESTS, lambda request: answer_worker_request(handler, request)
    )
    await server.start()
    yield server.path, handler
    await server.close()


async def _send_raw(path: Path, frame: bytes) -> dict[str, object]:
    reader, writer = await asyncio.open_unix_connection(str(path))
    writer.write(frame)
    await writer.drain()
    (length,) = struct.unpack(">I", await reader.readexactly(4))
    header: dict[str, object] = orjson.loads(await reader.readexactly(length))
    writer.close()
    return header


async def test_each_request_reaches_its_own_handler_method_and_its_answer_comes_back(
    worker: tuple[Path, _Worker],
) -> None:
    path, handler = worker
    assert await ipc.call(path, Export("fraud", "1")) == InputStatsAnswer(b'{"rows": 3}')
    assert await ipc.call(path, ApplyLoad(SPEC, "alice")) == Done()
    assert handler.asked == [Export("fraud", "1"), ApplyLoad(SPEC, "alice")]


async def test_the_rollout_requests_reach_the_worker_and_its_evidence_comes_back(
    worker: tuple[Path, _Worker],
) -> None:
    path, handler = worker
    assert await ipc.call(path, ReloadRollout("fraud")) == Done()
    assert await ipc.call(path, ExportEvidence("fraud")) == EvidenceAnswer(b'{"arms": {}}')
    assert handler.asked == [ReloadRollout("fraud"), ExportEvidence("fraud")]


async def test_labels_and_the_performance_document_travel_as_bytes(worker: tuple[Path, _Worker]) -> None:
    path, handler = worker
    labels = b'[{"id": "a", "row": 0, "label": 1}]'
    assert await ipc.call(path, JoinLabels("fraud", "", labels)) == JoinAnswer(bytes([0, 4]))
    assert await ipc.call(path, Performance("fraud", "2")) == PerformanceAnswer(b'{"versions": []}')
    assert handler.asked == [JoinLabels("fraud", "", labels), Performance("fraud", "2")]


async def test_trace_settings_reach_the_worker_as_the_json_the_client_sent(worker: tuple[Path, _Worker]) -> None:
    path, handler = worker
    changes = codec.trace_changes_to_json({"trace_level": ("TIMESTAMPS",), "trace_rate": "5", "trace_count": None})
    assert await ipc.call(path, ApplyTraceSettings("fraud", changes)) == Done()
    assert handler.asked == [ApplyTraceSettings("fraud", changes)]
    assert codec.trace_changes_from_json(changes) == {
        "trace_level": ["TIMESTAMPS"],
        "trace_rate": "5",
        "trace_count": None,
    }


@pytest.mark.parametrize(
    ("document", "reason"),
    [
        (b"[1]", "trace settings: expected dict, got list"),
        (b'{"trace_rate": 5}', "trace settings.trace_rate: expected a string, a list of strings or null"),
        (b'{"trace_level": ["A", 1]}', "trace settings.trace_level: expected a string, a list of strings or null"),
        (b"{nope", "trace settings: not JSON"),
    ],
)
def test_malformed_trace_settings_are_an_error_naming_what_is_wrong(document: bytes, reason: str) -> None:
    with pytest.raises(MalformedMessage, match=reason):
        codec.trace_changes_from_json(document)


def test_the_startup_trace_settings_are_every_model_s_changes() -> None:
    document = codec.trace_settings_to_json({"": {"trace_rate": "2"}, "fraud": {"trace_level": ["OFF"]}})
    assert codec.trace_settings_from_json(document) == {"": {"trace_rate": "2"}, "fraud": {"trace_level": ["OFF"]}}


async def test_a_serve_error_in_a_handler_reaches_the_caller_as_itself(worker: tuple[Path, _Worker]) -> None:
    with pytest.raises(ModelNotFound, match="no model 'fraud'"):
        await ipc.call(worker[0], ApplyUnload("fraud", "alice"))


async def test_a_failing_handler_is_logged_and_answered_and_the_server_lives_on(
    worker: tuple[Path, _Worker], caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(ServeError, match="'loaded' failed"):
        await ipc.call(worker[0], Loaded())
    assert [r.getMessage() for r in caplog.records] == ["control request 'loaded' failed"]
    assert await ipc.call(worker[0], ModelStatistics("", "")) == StatisticsAnswer(b"[]")


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (b'{"op": "reboot"}', "unknown request 'reboot'"),
        (b'{"op": "export", "name": 1, "version": ""}', "export.name: expected str, got int"),
        (b"[1, 2]", "frame header is a JSON list, not an object"),
        (b"{not json", "frame header is not JSON"),
    ],
)
async def test_a_malformed_request_is_logged_once_and_answered_and_the_server_lives_on(
    worker: tuple[Path, _Worker], caplog: pytest.LogCaptureFixture, header: bytes, reason: str
) -> None:
    caplog.set_level(logging.ERROR)
    path, handler = worker
    answer = await _send_raw(path, struct.pack(">I", len(header)) + header + struct.pack(">I", 0))
    assert answer["ok"] is False and reason in str(answer["error"])
    assert [r.getMessage() for r in caplog.records] == [f"worker-0.sock: malformed request: {answer['error']}"]
    assert handler.asked == []
    assert await ipc.call(path, Export("fraud", "")) == InputStatsAnswer(b'{"rows": 3}')


async def test_a_peer_that_is_not_there_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(ipc.PeerUnavailable, match="worker-9.sock is not answering"):
        await ipc.call(tmp_path / "worker-9.sock", Loaded())
