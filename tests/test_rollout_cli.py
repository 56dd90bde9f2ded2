"""`serve rollout status|set|promote|abort` against a real `serve run` process, and a change that reaches
every worker of `serve run --workers 2`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest

from serve.rollout.documents import StatusDocument
from serve.rollout_cli import format_table
from serve.workers.messages import ModelStatistics
from tests.fixtures.rollouts import MODEL, infer_body, write_rollout_model
from tests.fixtures.servers import RunningServer, serving
from tests.test_workers import ask_each_worker, wait_for_workers

ADMIN_TOKEN = "admin-token-0123456789abcdef"


def rollout(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "serve", "rollout", *args], capture_output=True, text=True, timeout=60, env=env
    )


def answered_by(server: RunningServer, user: str | None = None) -> str:
    headers = {"user": user} if user is not None else {}
    request = urllib.request.Request(f"{server.base}/v2/models/{MODEL}/infer", infer_body(), headers, method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        return str(response.headers["x-model-version"])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("rollout-cli")
    write_rollout_model(root / "models")
    (root / "tokens").write_text(f"deployer admin {ADMIN_TOKEN}\n")
    with serving(root / "models", root, "--auth-tokens-file", str(root / "tokens"), "--no-auth-inference") as running:
        yield running


def test_set_prints_the_new_rollout(server: RunningServer) -> None:
    done = rollout("set", MODEL, "--server", server.base, "--token", ADMIN_TOKEN, "--primary", "1",
                   "--candidate", "2=10", "--shadow", "3=50", "--key", "user", "--gate", "max_p99_ratio=2")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "rollout revision" in done.stdout and "running" in done.stdout
    assert "candidates: 2 (10%)" in done.stdout and "shadow:     3 (50%)" in done.stdout
    assert "key:        user" in done.stdout


def test_status_as_json_is_the_status_document(server: RunningServer) -> None:
    done = rollout("set", MODEL, "--server", server.base, "--token", ADMIN_TOKEN, "--primary", "1",
                   "--candidate", "2", "--steps", "shadow,1,10,50,100",
                   "--gate", "max_disagreement=0.05", "--gate", "max_p99_ratio=null")  # fmt: skip
    assert done.returncode == 0, done.stderr
    with_token = {**os.environ, "SERVE_TOKEN": ADMIN_TOKEN}
    done = rollout("status", MODEL, "--server", server.base, "--format", "json", env=with_token)
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)
    assert set(status) == {"model", "plan", "routing", "evaluation", "evidence"}
    assert status["plan"]["steps"] == ["shadow", 1.0, 10.0, 50.0, 100.0]
    assert status["plan"]["gates"]["max_disagreement"] == 0.05 and status["plan"]["gates"]["max_p99_ratio"] is None
    assert status["routing"]["shadow"] == {"version": 2, "percent": 100.0}  # the shadow step


def test_status_prints_a_readable_table(server: RunningServer) -> None:
    rollout("set", MODEL, "--server", server.base, "--token", ADMIN_TOKEN, "--primary", "1", "--candidate", "2=10")
    done = rollout("status", MODEL, "--server", server.base, "--token", ADMIN_TOKEN)
    lines = done.stdout.splitlines()
    assert lines[0].startswith(f"model {MODEL}: rollout revision ") and lines[0].endswith(", running")
    assert "  primary:    1" in lines
    # Before the analyser's first look, or after it with no request judged yet.
    evaluation = [line for line in lines if line.startswith("evaluation")]
    assert evaluation == ["evaluation: none yet"] or evaluation[0].endswith(": inconclusive"), lines


def test_promote_and_abort_change_who_answers(server: RunningServer) -> None:
    rollout("set", MODEL, "--server", server.base, "--token", ADMIN_TOKEN, "--primary", "1", "--candidate", "2=100")
    assert answered_by(server) == "2"
    promoted = rollout("promote", MODEL, "--server", server.base, "--token", ADMIN_TOKEN, "--format", "json")
    assert json.loads(promoted.stdout)["routing"]["primary"] == 2
    assert {answered_by(server) for _ in range(10)} == {"2"}
    rollout("set", MODEL, "--server", server.base, "--token", ADMIN_TOKEN, "--primary", "1", "--candidate", "3=100")
    aborted = rollout("abort", MODEL, "--server", server.base, "--token", ADMIN_TOKEN)
    assert aborted.returncode == 0 and "aborted" in aborted.stdout
    assert {answered_by(server) for _ in range(10)} == {"1"}


def test_a_refused_call_exits_2_with_the_servers_reason(server: RunningServer) -> None:
    done = rollout("set", MODEL, "--server", server.base, "--token", ADMIN_TOKEN, "--primary", "1",
                   "--candidate", "2=60", "--candidate", "3=60")  # fmt: skip
    assert done.returncode == 2 and done.stdout == ""
    assert (
        done.stderr == "serve rollout set: 400 the candidates' percents add up to 120; they may add up to 100 at most\n"
    )


def test_without_a_token_the_call_is_refused(server: RunningServer) -> None:
    done = rollout("status", MODEL, "--server", server.base)
    assert done.returncode == 2 and done.stderr.startswith("serve rollout status: 401 no bearer token was sent")


def test_an_unreachable_server_exits_2(tmp_path: Path) -> None:
    done = rollout("status", MODEL, "--server", "http://127.0.0.1:9")
    assert done.returncode == 2 and "cannot reach http://127.0.0.1:9" in done.stderr


# ---- every worker -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workers_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("rollout-workers")
    write_rollout_model(root / "models")
    return root / "models"


@pytest.fixture(scope="module")
def two_workers(workers_repository: Path) -> Iterator[RunningServer]:
    with serving(workers_repository, workers_repository.parent, "--workers", "2") as running:
        wait_for_workers(running)
        yield running


def _served_by_worker(server: RunningServer, version: str) -> list[int]:
    answers = ask_each_worker(server, ModelStatistics(MODEL, version))
    return [json.loads(a.document)[0]["inference_count"] for a in answers]


def test_a_change_through_one_worker_reaches_every_worker(two_workers: RunningServer) -> None:
    done = rollout("set", MODEL, "--server", two_workers.base, "--primary", "1", "--candidate", "2=100")
    assert done.returncode == 0, done.stderr
    before_1 = _served_by_worker(two_workers, "1")
    # One connection per request: the workers share the accept queue, so both answer some.
    for _ in range(400):
        assert answered_by(two_workers) == "2"
        if all(n > 0 for n in _served_by_worker(two_workers, "2")):
            break
    assert all(n > 0 for n in _served_by_worker(two_workers, "2"))
    assert _served_by_worker(two_workers, "1") == before_1


def test_a_key_lands_on_one_version_on_every_worker_and_on_another_server(
    two_workers: RunningServer, workers_repository: Path, tmp_path: Path
) -> None:
    done = rollout("set", MODEL, "--server", two_workers.base, "--primary", "1", "--candidate", "2=50", "--key", "user")
    assert done.returncode == 0, done.stderr
    # A second server on the same repository reads the same rollout.yaml when it loads the model.
    with serving(workers_repository, tmp_path) as replica:
        picked: dict[str, set[str]] = {}
        for user in (f"user-{i}" for i in range(16)):
            # One connection per request: the two workers share the accept queue, so both answer some.
            picked[user] = {answered_by(server, user) for server in (two_workers, replica) for _ in range(4)}
    assert all(len(versions) == 1 for versions in picked.values()), picked
    assert set().union(*picked.values()) == {"1", "2"}  # 16 users at 50/50: both arms answer some


def test_the_table_shows_each_gate_with_its_value_threshold_and_samples() -> None:
    status = {
        "model": MODEL,
        "plan": {
            "primary": 1, "candidates": [{"version": 2, "percent": 10.0}], "shadow": None, "key": None,
            "steps": [1.0, 10.0], "gates": {},
            "status": {"revision": 4, "step": 1, "phase": "rolled_back", "reason": "error rate +0.18 > 0.02",
                       "actor": "analyser", "updated_at": "2026-12-07T19:40:00Z"},
        },
        "routing": {"primary": 1, "candidates": [], "shadow": None, "key": None},
        "evaluation": {
            "at": "2026-12-07T19:40:00Z", "verdict": "failing", "version": 2,
            "gates": [{"name": "error_rate_increase", "value": 0.1834, "threshold": 0.02,
                       "samples": {"primary": 1800, "candidate": 210}, "verdict": "failing"}],
        },
        "evidence": {},
    }  # fmt: skip
    table = format_table(cast(StatusDocument, status)).splitlines()
    assert table[0] == f"model {MODEL}: rollout revision 4, rolled_back, step 2 of 2 (10.0)"
    assert table[1] == "  last change: error rate +0.18 > 0.02 (by analyser at 2026-12-07T19:40:00Z)"
    assert "evaluation at 2026-12-07T19:40:00Z of version 2: failing" in table
    assert table[-1].split() == ["error_rate_increase", "0.1834", "0.02", "1800", "210", "failing"]
