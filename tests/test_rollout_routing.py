"""Routing by a model's rollout, in the test's own loop: the split on HTTP JSON, HTTP binary and gRPC,
routing keys that stick, named versions never diverted, who answered in the body and in a header, the
request event's role, and the shadow's copy."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import orjson
import pytest
import pytest_asyncio

from serve.core import InferenceService
from serve.core.served_versions import ServedVersion
from serve.errors import InvalidInput
from serve.events import Observer, RequestEvent, VersionKey
from serve.protocol import grpc_service_pb2 as pb
from serve.protocol import grpc_service_pb2_grpc as pb_grpc
from serve.rollout.spec import Arm, RolloutSpec
from serve.settings import GrpcFrontend, ServerSettings
from serve.tracing.request import TracedRequest
from serve.types import InferRequest, InputTensor
from tests.fixtures.grpc_frontends import FRONTENDS, grpc_frontend
from tests.fixtures.inprocess import InProcess, in_process
from tests.fixtures.rollouts import INPUT, MODEL, ROW, binary_infer_body, infer_body, write_rollout_model

pytestmark = pytest.mark.asyncio(loop_scope="module")

N = 400  # requests per transport
SIGMAS = 4.5  # a correct 90/10 split misses this once in ~150,000 runs


def _within_binomial(count: int, n: int, p: float) -> bool:
    return abs(count - n * p) <= SIGMAS * (n * p * (1 - p)) ** 0.5


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[InProcess]:
    root = tmp_path_factory.mktemp("rollout-routing")
    write_rollout_model(root)
    async with in_process(root) as running:
        yield running


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def answers(server: InProcess) -> dict[str, list[float]]:
    """Each version's output for ROW, asked by name."""
    outputs = {}
    for version in ("1", "2", "3"):
        response = await server.http.post(f"/v2/models/{MODEL}/versions/{version}/infer", content=infer_body())
        outputs[version] = response.json()["outputs"][0]["data"]
    assert len({tuple(o) for o in outputs.values()}) == 3, "the versions must answer differently"
    return outputs


async def _set(server: InProcess, spec: RolloutSpec) -> None:
    await server.service.rollouts.set(MODEL, spec, "test")


async def _http_json(server: InProcess, path: str = f"/v2/models/{MODEL}/infer", **headers: str) -> tuple[str, str]:
    response = await server.http.post(path, content=infer_body(), headers=headers)
    assert response.status_code == 200, response.text
    version = response.json()["model_version"]
    assert response.headers["x-model-version"] == version
    return version, orjson.dumps(response.json()["outputs"][0]["data"]).decode()


def _grpc_request(version: str = "", **parameters: str) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=MODEL, model_version=version)
    tensor = request.inputs.add(name=INPUT, datatype="FP32", shape=[1, 4])
    tensor.contents.fp32_contents.extend(ROW)
    for name, value in parameters.items():
        request.parameters[name].string_param = value
    return request


async def test_a_90_10_split_over_http_json_holds_and_each_answer_is_its_versions(
    server: InProcess, answers: dict[str, list[float]]
) -> None:
    await _set(server, RolloutSpec(1, (Arm(2, 10.0),)))
    seen = [await _http_json(server) for _ in range(N)]
    counts = Counter(version for version, _ in seen)
    assert set(counts) <= {"1", "2"}
    assert _within_binomial(counts["2"], N, 0.10), counts
    for version, output in seen:
        assert orjson.loads(output) == answers[version]


async def test_a_90_10_split_over_http_binary_holds(server: InProcess) -> None:
    await _set(server, RolloutSpec(1, (Arm(2, 10.0),)))
    body, headers = binary_infer_body()
    counts: Counter[str] = Counter()
    for _ in range(N):
        response = await server.http.post(f"/v2/models/{MODEL}/infer", content=body, headers=headers)
        assert response.status_code == 200, response.text
        counts[response.headers["x-model-version"]] += 1
    assert set(counts) <= {"1", "2"} and _within_binomial(counts["2"], N, 0.10), counts


async def test_a_90_10_split_over_grpc_holds_and_each_answer_is_its_versions(
    server: InProcess, answers: dict[str, list[float]]
) -> None:
    await _set(server, RolloutSpec(1, (Arm(2, 10.0),)))
    counts: Counter[str] = Counter()
    for _ in range(N):
        response = await server.grpc.ModelInfer(_grpc_request())
        output = np.frombuffer(response.raw_output_contents[0], dtype=np.float32).tolist()
        assert output == pytest.approx(answers[response.model_version])
        counts[response.model_version] += 1
    assert set(counts) <= {"1", "2"} and _within_binomial(counts["2"], N, 0.10), counts


async def test_a_request_naming_a_version_is_never_diverted(server: InProcess) -> None:
    await _set(server, RolloutSpec(1, (Arm(2, 100.0),)))
    for _ in range(50):
        assert (await _http_json(server, f"/v2/models/{MODEL}/versions/1/infer"))[0] == "1"
        assert (await server.grpc.ModelInfer(_grpc_request("1"))).model_version == "1"
    assert (await _http_json(server))[0] == "2"


async def test_a_routing_key_in_a_parameter_sends_a_user_to_one_version(server: InProcess) -> None:
    await _set(server, RolloutSpec(1, (Arm(2, 50.0),), key="user"))
    for user in (f"user-{i}" for i in range(20)):
        seen = set()
        for _ in range(5):
            response = await server.http.post(f"/v2/models/{MODEL}/infer", content=infer_body(user=user))
            seen.add(response.json()["model_version"])
            seen.add((await server.grpc.ModelInfer(_grpc_request(user=user))).model_version)
        assert len(seen) == 1, (user, seen)


async def test_the_key_from_a_header_or_metadata_picks_what_the_parameter_picks(server: InProcess) -> None:
    await _set(server, RolloutSpec(1, (Arm(2, 50.0),), key="User"))
    picked = set()
    for user in (f"user-{i}" for i in range(30)):
        by_parameter = (await server.http.post(f"/v2/models/{MODEL}/infer", content=infer_body(User=user))).json()
        by_header = await _http_json(server, user=user)
        metadata = (("user", user),)
        by_metadata = await server.grpc.ModelInfer(_grpc_request(), metadata=metadata)
        assert by_parameter["model_version"] == by_header[0] == by_metadata.model_version
        picked.add(by_header[0])
    assert picked == {"1", "2"}  # 30 users at 50/50: both arms answer some


async def test_an_ended_rollout_sends_everything_to_the_primary(server: InProcess) -> None:
    await _set(server, RolloutSpec(1, (Arm(2, 50.0),)))
    await server.service.rollouts.abort(MODEL, "test")
    assert {(await _http_json(server))[0] for _ in range(40)} == {"1"}


async def test_without_a_rollout_the_default_version_answers(tmp_path: Path) -> None:
    write_rollout_model(tmp_path)
    async with in_process(tmp_path) as running:
        response = await running.http.post(f"/v2/models/{MODEL}/infer", content=infer_body())
        assert response.json()["model_version"] == response.headers["x-model-version"] == "3"


# ---- the core alone: the event's role and the shadow's copy --------------------------------------


@dataclass
class _Events(Observer):
    seen: list[RequestEvent] = field(default_factory=list)

    def on_request(self, event: RequestEvent) -> None:
        self.seen.append(event)


@dataclass
class _Offers:
    offered: list[tuple[str, VersionKey, list[str]]] = field(default_factory=list)
    request_ids: list[str] = field(default_factory=list)

    def offer(
        self,
        shadow: ServedVersion,
        feeds: Mapping[str, np.ndarray],
        primary: VersionKey,
        primary_outputs: Mapping[str, np.ndarray],
        primary_ns: int,
        protocol: str,
        *,
        request_id: str = "",
        trace: TracedRequest | None = None,
    ) -> bool:
        self.offered.append((shadow.model.version_str, primary, sorted(primary_outputs)))
        self.request_ids.append(request_id)
        return True


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def core(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[InferenceService, _Events, _Offers]]:
    root = tmp_path_factory.mktemp("rollout-core")
    write_rollout_model(root)
    events, offers = _Events(), _Offers()
    service = InferenceService.create(root, ServerSettings(), [events], mirror_of=lambda _: offers)
    await service.repository.load_all()
    try:
        yield service, events, offers
    finally:
        await service.close()


def _request(version: str = "") -> InferRequest:
    data = np.array([ROW], dtype=np.float32)
    return InferRequest(MODEL, version, inputs=[InputTensor(INPUT, "FP32", data)])


async def test_the_request_event_names_the_arm_that_answered(
    core: tuple[InferenceService, _Events, _Offers],
) -> None:
    service, events, _ = core
    await service.rollouts.set(MODEL, RolloutSpec(1, (Arm(2, 100.0),), Arm(3, 100.0)), "test")
    events.seen.clear()
    await service.infer(_request())
    await service.infer(_request("1"))
    await service.infer(_request("3"))
    assert [(e.key.version, e.role) for e in events.seen] == [("2", "candidate"), ("1", "primary"), ("3", "")]


async def test_the_shadow_is_offered_a_copy_of_what_the_arm_answered(
    core: tuple[InferenceService, _Events, _Offers],
) -> None:
    service, _, offers = core
    await service.rollouts.set(MODEL, RolloutSpec(1, shadow=Arm(3, 100.0)), "test")
    offers.offered.clear()
    response = await service.infer(_request())
    assert response.model_version == "1"
    assert [(shadow, key.version, outputs) for shadow, key, outputs in offers.offered] == [("3", "1", ["OUTPUT__0"])]


async def test_the_shadows_copy_carries_the_request_id_the_client_was_answered_with(
    core: tuple[InferenceService, _Events, _Offers],
) -> None:
    service, _, offers = core
    await service.rollouts.set(MODEL, RolloutSpec(1, shadow=Arm(3, 100.0)), "test")
    offers.request_ids.clear()
    response = await service.infer(_request())
    assert response.id and offers.request_ids == [response.id]


async def test_a_request_naming_a_version_is_not_mirrored(core: tuple[InferenceService, _Events, _Offers]) -> None:
    service, _, offers = core
    await service.rollouts.set(MODEL, RolloutSpec(1, shadow=Arm(3, 100.0)), "test")
    offers.offered.clear()
    await service.infer(_request("1"))
    assert offers.offered == []


async def test_a_plan_naming_a_version_that_is_not_loaded_routes_to_the_primary(
    core: tuple[InferenceService, _Events, _Offers], caplog: pytest.LogCaptureFixture
) -> None:
    service, _, _ = core
    (service.repository.model_dir(MODEL) / "rollout.yaml").write_text(
        "primary: 1\ncandidates: [{version: 9, percent: 100}]\n"
    )
    assert service.rollouts.reload(MODEL)
    with caplog.at_level("WARNING"):
        versions = {(await service.infer(_request())).model_version for _ in range(5)}
    assert versions == {"1"}
    warnings = [r.getMessage() for r in caplog.records if "version 9" in r.getMessage()]
    assert len(warnings) == 1 and "not loaded and ready; the primary answers" in warnings[0]


async def test_apply_persists_a_newer_plan_and_routes_by_it(core: tuple[InferenceService, _Events, _Offers]) -> None:
    service, _, _ = core
    current = await service.rollouts.set(MODEL, RolloutSpec(1, (Arm(2, 10.0),)), "test")
    applied = await service.rollouts.apply(
        MODEL, current.changed(phase="rolled_back", reason="p99 ratio 3.1"), "analyser"
    )
    assert (applied.revision, applied.phase, applied.actor) == (current.revision + 1, "rolled_back", "analyser")
    assert service.rollouts.reload(MODEL) is False  # the file holds what is in force
    assert {(await service.infer(_request())).model_version for _ in range(20)} == {"1"}


async def test_apply_does_not_overwrite_a_plan_changed_meanwhile(
    core: tuple[InferenceService, _Events, _Offers],
) -> None:
    service, _, _ = core
    stale = await service.rollouts.set(MODEL, RolloutSpec(1, (Arm(2, 10.0),)), "test")
    newer = await service.rollouts.set(MODEL, RolloutSpec(1, (Arm(3, 10.0),)), "test")
    kept = await service.rollouts.apply(MODEL, stale.changed(phase="rolled_back"), "analyser")
    assert kept == newer == service.rollouts.plan(MODEL)


async def test_changes_from_two_processes_on_one_directory_each_get_a_revision_of_their_own(
    core: tuple[InferenceService, _Events, _Offers],
) -> None:
    service, _, _ = core
    # Another server on the same repository, as a second worker or replica would be.
    other = InferenceService.create(service.repository.root, ServerSettings())
    await other.repository.load_all()
    try:
        specs = [RolloutSpec(1, (Arm(2, float(p)),)) for p in range(1, 11)]
        plans = await asyncio.gather(
            *(s.rollouts.set(MODEL, spec, "test") for s, spec in zip([service, other] * 5, specs, strict=True))
        )
        revisions = sorted(p.revision for p in plans)
        assert revisions == list(range(revisions[0], revisions[0] + 10))
    finally:
        await other.close()


async def test_a_request_that_fails_to_decode_is_counted_for_the_primary(
    core: tuple[InferenceService, _Events, _Offers],
) -> None:
    service, events, _ = core
    await service.rollouts.set(MODEL, RolloutSpec(1, (Arm(2, 50.0),)), "test")
    events.seen.clear()

    def refuse(_: object) -> InferRequest:
        raise InvalidInput("not a tensor")

    with pytest.raises(InvalidInput):
        await service.infer_decoding(MODEL, "", refuse, "http")
    assert [(e.key.version, e.role, e.outcome) for e in events.seen] == [("1", "primary", "invalid_input")]


@pytest.mark.parametrize("frontend", FRONTENDS)
async def test_the_key_from_metadata_routes_on_each_grpc_front_end(server: InProcess, frontend: GrpcFrontend) -> None:
    await _set(server, RolloutSpec(1, (Arm(2, 50.0),), key="user"))
    async with (
        grpc_frontend(server, frontend, max_message_bytes=1 << 20) as address,
        grpc.aio.insecure_channel(address) as channel,
    ):
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for user in (f"user-{i}" for i in range(10)):
            by_parameter = (await stub.ModelInfer(_grpc_request(user=user))).model_version
            by_metadata = (await stub.ModelInfer(_grpc_request(), metadata=(("user", user),))).model_version
            assert by_parameter == by_metadata


async def test_the_mirror_is_built_on_the_servers_observers(tmp_path: Path) -> None:
    events, offers = _Events(), _Offers()
    given: list[Observer] = []

    def mirror_of(observer: Observer) -> _Offers:
        given.append(observer)
        return offers

    service = InferenceService.create(tmp_path, ServerSettings(), [events], mirror_of=mirror_of)
    shadow_copy = RequestEvent(VersionKey(MODEL, "3"), "http", "success", 1, role="shadow")
    given[0].on_request(shadow_copy)
    assert service.mirror is offers and events.seen == [shadow_copy]
