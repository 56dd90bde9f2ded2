"""The rollout admin API over HTTP and gRPC, in the test's own loop: the status document, set, promote and
abort, refusals that name what was wrong, the admin scope, and the audit log."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import orjson
import pytest
import pytest_asyncio
import yaml
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from serve.protocol import serve_rollout_pb2 as rpb
from serve.protocol import serve_rollout_pb2_grpc as rpb_grpc
from serve.settings import GrpcFrontend
from tests.fixtures.grpc_frontends import FRONTENDS, grpc_frontend
from tests.fixtures.inprocess import InProcess, in_process
from tests.fixtures.rollouts import MODEL, write_rollout_model

pytestmark = pytest.mark.asyncio(loop_scope="module")

PATH = f"/v2/models/{MODEL}/rollout"
ADMIN_TOKEN = "admin-token-0123456789abcdef"
INFERENCE_TOKEN = "inference-token-0123456789"
SPEC = {"primary": 1, "candidates": [{"version": 2, "percent": 10}], "key": "user"}


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[InProcess]:
    root = tmp_path_factory.mktemp("rollout-api")
    write_rollout_model(root / "models")
    async with in_process(root / "models", audit_log_file=root / "audit.log") as running:
        yield running


@pytest.fixture
def rollouts(server: InProcess) -> rpb_grpc.RolloutsStub:
    return rpb_grpc.RolloutsStub(server.channel)


async def _put(server: InProcess, spec: object) -> Any:
    response = await server.http.put(PATH, content=orjson.dumps(spec))
    assert response.status_code == 200, response.text
    return response.json()


async def test_a_model_without_a_rollout_answers_a_null_plan(tmp_path: Path) -> None:
    write_rollout_model(tmp_path)
    async with in_process(tmp_path) as running:
        response = await running.http.get(PATH)
    assert response.json() == {"model": MODEL, "plan": None, "routing": None, "evaluation": None, "evidence": {}}


async def test_an_unknown_model_is_404(server: InProcess) -> None:
    response = await server.http.get("/v2/models/nope/rollout")
    assert response.status_code == 404 and "nope" in response.json()["error"]


@pytest.mark.parametrize(("method", "suffix"), [("PUT", ""), ("POST", "/promote"), ("POST", "/abort")])
async def test_a_change_to_an_unknown_model_is_404(server: InProcess, method: str, suffix: str) -> None:
    body = b'{"primary": 1}' if method == "PUT" else b""
    response = await server.http.request(method, "/v2/models/nope/rollout" + suffix, content=body)
    assert response.status_code == 404 and "'nope' is not found" in response.json()["error"]


async def test_put_sets_the_plan_and_answers_the_status_document(server: InProcess) -> None:
    before = (await server.http.get(PATH)).json()["plan"]
    status = await _put(server, SPEC)
    assert status["model"] == MODEL
    assert status["routing"] == {"primary": 1, "candidates": [{"version": 2, "percent": 10.0}], "shadow": None,
                                 "key": "user"}  # fmt: skip
    plan = status["plan"]
    assert plan["status"]["phase"] == "running" and plan["status"]["actor"] == "anonymous"
    assert plan["status"]["revision"] == (before["status"]["revision"] + 1 if before else 1)
    assert plan["status"]["updated_at"].endswith("Z")
    assert (status["evaluation"], status["evidence"]) == (None, {})


async def test_the_plan_is_written_to_the_models_rollout_yaml(server: InProcess) -> None:
    status = await _put(server, SPEC)
    written = yaml.safe_load((server.service.repository.model_dir(MODEL) / "rollout.yaml").read_text())
    assert written == status["plan"]


async def test_every_change_raises_the_revision(server: InProcess) -> None:
    first = (await _put(server, SPEC))["plan"]["status"]["revision"]
    second = (await _put(server, SPEC))["plan"]["status"]["revision"]
    aborted = (await server.http.post(PATH + "/abort")).json()["plan"]["status"]["revision"]
    assert (second, aborted) == (first + 1, first + 2)


async def test_promote_makes_the_candidate_the_primary(server: InProcess) -> None:
    await _put(server, SPEC)
    status = (await server.http.post(PATH + "/promote")).json()
    assert status["plan"]["status"]["phase"] == "promoted"
    assert status["routing"] == {"primary": 2, "candidates": [], "shadow": None, "key": "user"}


async def test_promote_takes_a_version_among_several_candidates(server: InProcess) -> None:
    await _put(server, {"primary": 1, "candidates": [{"version": 2, "percent": 5}, {"version": 3, "percent": 5}]})
    status = (await server.http.post(PATH + "/promote", content=b'{"version": 3}')).json()
    assert status["routing"]["primary"] == 3


async def test_promote_without_a_version_among_several_candidates_is_refused(server: InProcess) -> None:
    await _put(server, {"primary": 1, "candidates": [{"version": 2, "percent": 5}, {"version": 3, "percent": 5}]})
    response = await server.http.post(PATH + "/promote")
    assert response.status_code == 400 and "has 2 candidates: say which version to promote" in response.json()["error"]


async def test_abort_leaves_only_the_primary(server: InProcess) -> None:
    await _put(server, {**SPEC, "shadow": {"version": 3, "percent": 100}})
    status = (await server.http.post(PATH + "/abort")).json()
    assert status["plan"]["status"]["phase"] == "aborted"
    assert status["routing"] == {"primary": 1, "candidates": [], "shadow": None, "key": "user"}


async def test_a_bad_spec_is_400_naming_the_field(server: InProcess) -> None:
    response = await server.http.put(PATH, content=orjson.dumps({"primary": 1, "candidates": [{"version": 2}]}))
    assert response.status_code == 400
    assert response.json() == {"error": "'candidates[0]' needs a 'percent' (0 to 100)"}


async def test_an_unknown_field_is_400_naming_it(server: InProcess) -> None:
    response = await server.http.put(PATH, content=orjson.dumps({"primary": 1, "weight": 3}))
    assert response.status_code == 400 and "unknown field(s) 'weight'" in response.json()["error"]


async def test_a_body_that_is_not_json_is_400(server: InProcess) -> None:
    response = await server.http.put(PATH, content=b"primary: 1")
    assert response.status_code == 400 and "not valid JSON" in response.json()["error"]


async def test_a_version_that_is_not_loaded_is_400_saying_what_to_do(server: InProcess) -> None:
    response = await server.http.put(PATH, content=orjson.dumps({"primary": 1, "shadow": {"version": 7}}))
    assert response.status_code == 400
    assert "version 7 of model 'ab' is not loaded" in response.json()["error"]
    assert "version_policy" in response.json()["error"]


async def test_changes_are_in_the_audit_log(server: InProcess, tmp_path_factory: pytest.TempPathFactory) -> None:
    await _put(server, SPEC)
    await server.http.put(PATH, content=b"{}")
    assert server.service.audit is not None
    lines = [orjson.loads(line) for line in server.service.audit.path.read_text().splitlines()]
    calls = [(e["action"], e["outcome"]) for e in lines if e.get("action", "").startswith("rollout_")]
    assert ("rollout_set", "ok") in calls and ("rollout_set", "error") in calls


# ---- gRPC ---------------------------------------------------------------------------------------------


async def test_grpc_sets_and_reads_the_same_document(server: InProcess, rollouts: rpb_grpc.RolloutsStub) -> None:
    set_answer = await rollouts.SetRollout(rpb.RolloutRequest(model_name=MODEL, json=orjson.dumps(SPEC).decode()))
    got = await rollouts.GetRollout(rpb.RolloutRequest(model_name=MODEL))
    assert orjson.loads(set_answer.json) == orjson.loads(got.json) == (await server.http.get(PATH)).json()


async def test_grpc_promotes_and_aborts(rollouts: rpb_grpc.RolloutsStub) -> None:
    await rollouts.SetRollout(rpb.RolloutRequest(model_name=MODEL, json=orjson.dumps(SPEC).decode()))
    promoted = orjson.loads((await rollouts.PromoteRollout(rpb.RolloutRequest(model_name=MODEL, json=""))).json)
    assert promoted["routing"]["primary"] == 2
    aborted = orjson.loads((await rollouts.AbortRollout(rpb.RolloutRequest(model_name=MODEL))).json)
    assert aborted["plan"]["status"]["phase"] == "aborted"


async def test_grpc_refuses_a_bad_spec_with_invalid_argument_naming_the_field(
    rollouts: rpb_grpc.RolloutsStub,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await rollouts.SetRollout(rpb.RolloutRequest(model_name=MODEL, json='{"primary": 1, "steps": [10]}'))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details() == "'steps' need exactly one candidate, and this rollout names 0"


async def test_grpc_answers_not_found_for_an_unknown_model(rollouts: rpb_grpc.RolloutsStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await rollouts.GetRollout(rpb.RolloutRequest(model_name="nope"))
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND


# ---- the admin scope ----------------------------------------------------------------------------------


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def guarded(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[InProcess]:
    root = tmp_path_factory.mktemp("rollout-auth")
    write_rollout_model(root / "models")
    tokens = root / "tokens"
    tokens.write_text(f"deployer admin {ADMIN_TOKEN}\nfrontend inference {INFERENCE_TOKEN}\n")
    async with in_process(root / "models", auth_tokens_file=tokens, audit_log_file=root / "audit.log") as running:
        yield running


@pytest.mark.parametrize(("method", "suffix"), [("GET", ""), ("PUT", ""), ("POST", "/promote"), ("POST", "/abort")])
async def test_an_inference_token_is_403_on_every_rollout_call(guarded: InProcess, method: str, suffix: str) -> None:
    headers = {"Authorization": f"Bearer {INFERENCE_TOKEN}"}
    response = await guarded.http.request(method, PATH + suffix, content=orjson.dumps(SPEC), headers=headers)
    assert response.status_code == 403 and "needs scope admin" in response.json()["error"]


async def test_no_token_is_401(guarded: InProcess) -> None:
    assert (await guarded.http.get(PATH)).status_code == 401


async def test_an_admin_token_changes_the_rollout_as_its_identity(guarded: InProcess) -> None:
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    response = await guarded.http.put(PATH, content=orjson.dumps(SPEC), headers=headers)
    assert response.status_code == 200 and response.json()["plan"]["status"]["actor"] == "deployer"


async def test_grpc_needs_the_admin_scope(guarded: InProcess) -> None:
    stub = rpb_grpc.RolloutsStub(guarded.channel)
    request = rpb.RolloutRequest(model_name=MODEL)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.GetRollout(request, metadata=(("authorization", f"Bearer {INFERENCE_TOKEN}"),))
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    answer = await stub.GetRollout(request, metadata=(("authorization", f"Bearer {ADMIN_TOKEN}"),))
    assert orjson.loads(answer.json)["model"] == MODEL


async def test_grpc_set_runs_as_the_tokens_identity(guarded: InProcess) -> None:
    stub = rpb_grpc.RolloutsStub(guarded.channel)
    request = rpb.RolloutRequest(model_name=MODEL, json=orjson.dumps(SPEC).decode())
    answer = await stub.SetRollout(request, metadata=(("authorization", f"Bearer {ADMIN_TOKEN}"),))
    assert orjson.loads(answer.json)["plan"]["status"]["actor"] == "deployer"


# ---- both gRPC front ends, and reflection ------------------------------------------------------------


@pytest.mark.parametrize("frontend", FRONTENDS)
async def test_the_rollout_service_answers_on_each_grpc_front_end(server: InProcess, frontend: GrpcFrontend) -> None:
    async with (
        grpc_frontend(server, frontend, max_message_bytes=1 << 20) as address,
        grpc.aio.insecure_channel(address) as channel,
    ):
        answer = await rpb_grpc.RolloutsStub(channel).GetRollout(rpb.RolloutRequest(model_name=MODEL))
    assert orjson.loads(answer.json)["model"] == MODEL


async def test_reflection_lists_the_rollout_service(server: InProcess) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(server.channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    services = [
        s.name async for a in stub.ServerReflectionInfo(iter([request])) for s in a.list_services_response.service
    ]
    assert "serve.rollout.Rollouts" in services
