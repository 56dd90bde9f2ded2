"""The audit log (--audit-log-file): one JSON line per lifecycle event and repository API call, with
its actor and the hashes of what serves; and the same hashes in model metadata.

In-process servers in explicit model-control mode with token auth, so that every API call has
an identity; the tests read the JSON lines back.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import orjson
import pytest
import pytest_asyncio

from serve.modelgen import mlp, save, write_atomic
from serve.protocol import grpc_service_pb2 as pb
from serve.security.audit import AuditLog
from tests.fixtures.inprocess import InProcess, in_process

MODEL = "m"
ADMIN_TOKEN = "admin-token-0123456789abcdef"
INFERENCE_TOKEN = "inference-token-0123456789"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
CONFIG = 'name: "m"\nmax_batch_size: 8\n'


def write_version(root: Path, version: int) -> Path:
    return save(mlp([4, 8, 2], seed=version), root / MODEL / str(version) / "model.onnx")


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def audit_lines(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def only(lines: list[dict[str, Any]], **match: Any) -> list[dict[str, Any]]:
    return [line for line in lines if all(line.get(k) == v for k, v in match.items())]


class Repo:
    def __init__(self, base: Path) -> None:
        self.root = base / "models"
        self.audit = base / "audit.jsonl"
        self.tokens = base / "tokens"
        self.tokens.write_text(f"deployer admin {ADMIN_TOKEN}\nfrontend inference {INFERENCE_TOKEN}\n")
        (self.root / MODEL).mkdir(parents=True)
        (self.root / MODEL / "config.pbtxt").write_text(CONFIG)
        self.v1 = write_version(self.root, 1)

    def lines(self, **match: Any) -> list[dict[str, Any]]:
        return only(audit_lines(self.audit), **match)


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    return Repo(tmp_path)


@pytest_asyncio.fixture
async def server(repo: Repo) -> AsyncIterator[InProcess]:
    async with in_process(
        repo.root,
        audit_log_file=repo.audit,
        auth_tokens_file=repo.tokens,
        model_control_mode="explicit",
        load_models=["*"],
    ) as running:
        yield running


async def load(server: InProcess, name: str = MODEL, headers: dict[str, str] = ADMIN) -> int:
    response = await server.http.post(f"/v2/repository/models/{name}/load", headers=headers)
    return response.status_code


async def test_a_load_at_start_is_recorded_with_actor_startup_and_both_hashes(server: InProcess, repo: Repo) -> None:
    (line,) = repo.lines(event="load")

    assert line["actor"] == "startup" and line["model"] == MODEL and line["version"] == "1"
    assert line["onnx_sha256"] == sha256_of(repo.v1)
    assert len(line["config_sha256"]) == 64
    assert line["pid"] == os.getpid()
    assert datetime.fromisoformat(line["time"]).utcoffset() is not None and line["time"].endswith("Z")


async def test_metadata_parameters_carry_the_hashes_of_the_serving_files(server: InProcess, repo: Repo) -> None:
    metadata = (await server.http.get(f"/v2/models/{MODEL}", headers=ADMIN)).json()
    config = await server.grpc.ModelConfig(
        pb.ModelConfigRequest(name=MODEL), metadata=(("authorization", f"Bearer {ADMIN_TOKEN}"),)
    )

    assert metadata["parameters"]["onnx_sha256"] == sha256_of(repo.v1)
    # The config hash is the SHA-256 of the served config's deterministic serialization.
    served = hashlib.sha256(config.config.SerializeToString(deterministic=True)).hexdigest()
    assert metadata["parameters"]["config_sha256"] == served == repo.lines(event="load")[0]["config_sha256"]


async def test_an_api_load_is_recorded_with_the_token_identity_and_its_outcome(server: InProcess, repo: Repo) -> None:
    assert await load(server) == 200

    (call,) = repo.lines(event="api_call")
    assert call | {"time": None, "pid": None} == {
        "time": None,
        "event": "api_call",
        "actor": "deployer",
        "model": MODEL,
        "action": "load",
        "outcome": "ok",
        "pid": None,
    }
    # The reload replaced version 1 by a new load of itself: both recorded, by the same actor.
    assert [(line["event"], line["actor"]) for line in repo.lines(version="1")[1:]] == [
        ("load", "deployer"),
        ("unload", "deployer"),
    ]


async def test_a_newer_version_replacing_an_older_is_a_version_switch(server: InProcess, repo: Repo) -> None:
    v2 = write_version(repo.root, 2)

    assert await load(server) == 200

    (switch,) = repo.lines(event="version_switch")
    assert (switch["from_version"], switch["version"], switch["actor"]) == ("1", "2", "deployer")
    assert switch["onnx_sha256"] == sha256_of(v2) != sha256_of(repo.v1)
    assert repo.lines(event="unload", version="1", actor="deployer")
    assert repo.lines(event="load", version="2", actor="deployer")


async def test_a_version_that_fails_to_load_is_recorded_with_its_reason_and_file_hash(
    server: InProcess, repo: Repo
) -> None:
    broken = repo.root / MODEL / "2" / "model.onnx"
    write_atomic(broken, b"not an ONNX protobuf")

    assert await load(server) == 400

    (failed,) = repo.lines(event="load_failed")
    assert (failed["version"], failed["actor"], failed["onnx_sha256"]) == ("2", "deployer", sha256_of(broken))
    assert failed["reason"]
    (call,) = repo.lines(event="api_call")
    assert call["outcome"] == "error" and "failed to load 'm'" in call["reason"]


async def test_a_model_whose_config_fails_is_a_failed_load_without_a_version(server: InProcess, repo: Repo) -> None:
    (repo.root / MODEL / "config.pbtxt").write_text('name: "m"\nmax_batch_size: 8\nno_such_field: 1\n')

    assert await load(server) == 400

    (failed,) = repo.lines(event="load_failed")
    assert failed["version"] == "" and failed["actor"] == "deployer" and failed["reason"]


async def test_a_reload_with_a_changed_config_is_a_config_change(server: InProcess, repo: Repo) -> None:
    before = repo.lines(event="load")[0]["config_sha256"]
    (repo.root / MODEL / "config.pbtxt").write_text('name: "m"\nmax_batch_size: 4\n')

    assert await load(server) == 200

    (change,) = repo.lines(event="config_change")
    assert change["previous_config_sha256"] == before != change["config_sha256"]
    assert change["version"] == "1" and change["actor"] == "deployer"
    metadata = (await server.http.get(f"/v2/models/{MODEL}", headers=ADMIN)).json()
    assert metadata["parameters"]["config_sha256"] == change["config_sha256"]


async def test_a_reload_with_the_same_files_is_no_config_change(server: InProcess, repo: Repo) -> None:
    assert await load(server) == 200

    assert repo.lines(event="config_change") == []


async def test_an_unload_and_the_index_are_recorded_as_api_calls(server: InProcess, repo: Repo) -> None:
    index = await server.grpc.RepositoryIndex(
        pb.RepositoryIndexRequest(), metadata=(("authorization", f"Bearer {ADMIN_TOKEN}"),)
    )
    unload = await server.http.post(f"/v2/repository/models/{MODEL}/unload", headers=ADMIN)

    assert index.models and unload.status_code == 200
    assert [(c["action"], c["model"], c["outcome"]) for c in repo.lines(event="api_call", actor="deployer")] == [
        ("index", "", "ok"),
        ("unload", MODEL, "ok"),
    ]
    (unloaded,) = repo.lines(event="unload")
    assert unloaded["actor"] == "deployer" and unloaded["onnx_sha256"] == sha256_of(repo.v1)


async def test_repository_calls_refused_by_auth_are_recorded_as_denied(server: InProcess, repo: Repo) -> None:
    assert await load(server, headers={"Authorization": f"Bearer {INFERENCE_TOKEN}"}) == 403
    assert await load(server, "other", headers={}) == 401
    with pytest.raises(grpc.aio.AioRpcError):
        await server.grpc.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name=MODEL))

    denied = [(c["actor"], c["action"], c["model"], c["outcome"]) for c in repo.lines(event="api_call")]
    assert denied == [
        ("frontend", "load", MODEL, "denied"),
        ("unauthenticated", "load", "other", "denied"),
        ("unauthenticated", "unload", MODEL, "denied"),
    ]
    assert INFERENCE_TOKEN not in repo.audit.read_text()


async def test_a_call_refused_before_it_ran_is_recorded_with_its_reason(server: InProcess, repo: Repo) -> None:
    response = await server.http.post(
        f"/v2/repository/models/{MODEL}/load", content=b'{"parameters": []}', headers=ADMIN
    )

    assert response.status_code == 400
    (call,) = repo.lines(event="api_call")
    assert call["outcome"] == "error" and call["reason"] == "'parameters' must be an object"


async def test_a_stopping_server_records_its_unloads_with_actor_shutdown(repo: Repo) -> None:
    async with in_process(repo.root, audit_log_file=repo.audit):
        pass

    (unloaded,) = repo.lines(event="unload")
    assert unloaded["actor"] == "shutdown" and unloaded["version"] == "1"


async def test_without_token_auth_the_api_actor_is_anonymous(repo: Repo) -> None:
    async with in_process(repo.root, audit_log_file=repo.audit, model_control_mode="explicit") as running:
        response = await running.http.post(f"/v2/repository/models/{MODEL}/load")

    assert response.status_code == 200
    assert repo.lines(event="api_call")[0]["actor"] == "anonymous"
    assert repo.lines(event="load")[0]["actor"] == "anonymous"


def test_a_moved_log_is_followed_by_a_new_file_at_the_configured_path(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    audit = AuditLog(path)
    audit.api_call("index", "ops", "", "ok")
    path.rename(tmp_path / "audit.jsonl.1")  # the operator rotates it
    audit.api_call("load", "ops", MODEL, "ok")
    audit.close()

    assert [line["action"] for line in audit_lines(tmp_path / "audit.jsonl.1")] == ["index"]
    assert [line["action"] for line in audit_lines(path)] == ["load"]


def test_lines_are_appended_to_an_existing_log(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_bytes(b'{"event": "earlier"}\n')
    audit = AuditLog(path)
    audit.api_call("index", "ops", "", "ok")
    audit.close()

    assert [line["event"] for line in audit_lines(path)] == ["earlier", "api_call"]


def test_a_log_that_cannot_be_opened_is_an_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()

    with pytest.raises(OSError, match=f"cannot open the audit log {tmp_path / 'dir'}"):
        AuditLog(tmp_path / "dir")


async def test_inference_is_not_audited(server: InProcess, repo: Repo) -> None:
    body = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": np.zeros(4).tolist()}]}
    response = await server.http.post(f"/v2/models/{MODEL}/infer", json=body, headers=ADMIN)

    assert response.status_code == 200
    assert [line["event"] for line in audit_lines(repo.audit)] == ["load"]
