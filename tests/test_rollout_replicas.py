"""Several replicas, one decision: servers run with ``--rollout-decider monitor`` route and evaluate but
change no plan; ``serve monitor --rollouts`` judges each rollout on the evidence of every replica summed
and gives its decision to every replica.

Real processes, as an SRE runs them: two `serve run` replicas, each with its own copy of the repository
(so only the monitor's push can make them agree), and `serve monitor` polling both."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.monitor_process import RunningMonitor, get_json, start_monitor
from tests.fixtures.rollout_clients import HTTP_JSON, clients, phase, status
from tests.fixtures.rollout_models import failing_candidate, random_rows
from tests.fixtures.servers import RunningServer, serving

# 150 requests per replica, half to each arm: ~75 per arm on each replica, ~150 per arm on both. One
# replica's evidence is below the gates' minimum; only the two together reach it.
GATES = {"interval_s": 1, "min_requests": 110, "confidence": 0.95, "max_error_rate_increase": 0.02,
         "max_p99_ratio": None}  # fmt: skip
REQUESTS_PER_REPLICA = 150


@pytest.fixture
def monitor_of(tmp_path: Path) -> Iterator[Any]:
    started: list[RunningMonitor] = []

    def start(*servers: RunningServer) -> RunningMonitor:
        args = ["--rollouts", "--interval", "1s", "--db", str(tmp_path / "monitor.db")]
        for server in servers:
            args += ["--server", server.base]
        # Ready once it has found the plan on the replicas.
        started.append(start_monitor(args, tmp_path / "monitor.log", ready=RunningMonitor.rollouts))
        return started[-1]

    yield start
    for monitor in started:
        monitor.stop()


def _replica(tmp_path: Path, name: str) -> AbstractContextManager[RunningServer]:
    root = tmp_path / name
    model_dir = failing_candidate(root, "flaky")
    spec = {"primary": 1, "candidates": [{"version": 2, "percent": 50}], "gates": GATES}
    (model_dir / "rollout.yaml").write_text(json.dumps(spec))  # YAML is a superset of JSON
    return serving(root, tmp_path / name, "--rollout-decider", "monitor")


def _send(server: RunningServer, requests: int, seed: int) -> None:
    with clients(server) as mine:
        for n in range(requests):
            mine.ask(HTTP_JSON, "flaky", random_rows(1, seed=seed * 100_000 + n))


def _arm_requests(evidence: dict[str, Any]) -> dict[tuple[int, str], int]:
    return {(arm["version"], arm["role"]): arm["requests"] for arm in evidence["arms"]}


def _raw_evidence(server: RunningServer) -> dict[tuple[int, str], int]:
    document = get_json(f"{server.base}/v2/models/flaky/rollout/evidence")
    return {(arm["version"], arm["role"]): arm["requests"] for arm in document["arms"]}


def test_the_monitor_rolls_back_every_replica_on_their_summed_evidence(tmp_path: Path, monitor_of: Any) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with _replica(tmp_path, "a") as first, _replica(tmp_path, "b") as second:
        monitor = monitor_of(first, second)
        _send(first, REQUESTS_PER_REPLICA, seed=1)
        _send(second, REQUESTS_PER_REPLICA, seed=2)

        deadline = time.monotonic() + 60
        while phase(status(first, "flaky")) != "rolled_back" or phase(status(second, "flaky")) != "rolled_back":
            assert time.monotonic() < deadline, monitor.log_path.read_text()
            time.sleep(0.2)
        (judged,) = monitor.rollouts()
        replicas = [_raw_evidence(first), _raw_evidence(second)]
        plans = [status(first, "flaky")["plan"], status(second, "flaky")["plan"]]

    # Neither replica decided: each would have needed min_requests per arm of its own.
    assert all(min(counts.values()) < GATES["min_requests"] for counts in replicas)
    # The monitor judged the two together: more of each arm than either replica holds, none it did not see. (It
    # may decide before the last requests arrive, when the machine is slow: the gate fails as soon as it can.)
    judged_counts = _arm_requests(judged["evidence"])
    for arm, count in judged_counts.items():
        assert max(r.get(arm, 0) for r in replicas) < count <= replicas[0].get(arm, 0) + replicas[1].get(arm, 0)
    assert min(judged_counts.values()) >= GATES["min_requests"]
    assert judged["evaluation"]["verdict"] == "failing"
    for plan in plans:  # each replica stamps when it took the plan
        del plan["status"]["updated_at"]
    assert plans[0] == plans[1]  # one plan, the same revision, on both
    assert plans[0]["status"]["actor"] != "" and plans[0]["status"]["reason"]


def test_a_replica_started_behind_is_brought_to_the_newest_plan(tmp_path: Path, monitor_of: Any) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with _replica(tmp_path, "a") as first, _replica(tmp_path, "b") as second:
        with clients(first):
            pass
        urllib.request.urlopen(
            urllib.request.Request(f"{first.base}/v2/models/flaky/rollout/abort", data=b"", method="POST"), timeout=10
        ).close()
        newest = status(first, "flaky")["plan"]["status"]["revision"]
        assert status(second, "flaky")["plan"]["status"]["revision"] < newest
        monitor_of(first, second)
        deadline = time.monotonic() + 30
        while status(second, "flaky")["plan"]["status"]["revision"] < newest:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert phase(status(second, "flaky")) == "aborted"
