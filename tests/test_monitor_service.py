"""`serve monitor` as a service, the way it is deployed: a long-running monitor process polling a real `serve run`
whose statistics windows last a few seconds of the real clock. Every row the server recorded in a closed window
is counted by the monitor exactly once, at most one poll after the window closed."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.fixtures.local_servers import ThreadServer, start_in_thread
from tests.fixtures.monitor_process import RunningMonitor, get_json, start_monitor
from tests.fixtures.monitoring import MODEL, sample
from tests.fixtures.replicas import write_model_with_baseline
from tests.fixtures.servers import RunningServer, start_server

WINDOW_S = 2.0
# A server in a thread of the test, or a `serve run` process where the test asks for --workers.
Server = ThreadServer | RunningServer


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("service") / "models"
    write_model_with_baseline(root)
    return root


def _infer(server: Server, x: np.ndarray) -> None:
    body = json.dumps(
        {"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
    ).encode()
    request = urllib.request.Request(
        f"{server.base}/v2/models/{MODEL}/infer", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200


def _start_monitor(server: Server, repository: Path, db: Path, log_path: Path) -> RunningMonitor:
    args = ["--server", server.base, "--model-repository", str(repository), "--interval", "1s", "--horizon", "5m",
            "--db", str(db)]  # fmt: skip
    return start_monitor(args, log_path)


@pytest.fixture
def monitored(repo: Path, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[Server, Any]]:
    """A server with 2 s statistics windows (extra flags from the test's parameter) and a way to start monitors."""
    args = ("--stats-window-s", str(WINDOW_S), *getattr(request, "param", ()))
    start = start_server if "--workers" in args else start_in_thread
    server: Server = start(repo, tmp_path, *args)
    started: list[RunningMonitor] = []

    def monitor() -> RunningMonitor:
        started.append(_start_monitor(server, repo, tmp_path / "monitor.db", tmp_path / "monitor.log"))
        return started[-1]

    try:
        yield server, monitor
    finally:
        for m in started:
            m.stop()
        server.stop()


def _send_traffic(server: Server, windows: int, seed: int) -> int:
    """A burst of requests (1–8 rows each) early in each of ``windows`` consecutive windows of the real clock,
    then quiet until the next: the monitor's 1 s polls see every window open, after its last row; the rows sent."""
    rng = np.random.default_rng(seed)
    rows = 0
    for _ in range(windows):
        time.sleep(WINDOW_S - time.time() % WINDOW_S + 0.05)  # just after the next window opens
        for _ in range(10):
            x = sample(rng, int(rng.integers(1, 9)))
            _infer(server, x)
            rows += len(x)
    return rows


def _server_closed_rows(server: Server, sent: int) -> int:
    """Wait until every window holding the rows sent is closed on the server; the rows in its closed windows."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        document = get_json(f"{server.base}/v2/models/{MODEL}/versions/1/input-stats")
        windows = document["windows"]
        closed = sum(w["rows"] for w in windows if w["closed"])
        if all(w["closed"] for w in windows) and closed == sent:
            return closed
        time.sleep(0.2)
    raise AssertionError(f"the server did not close its windows with {sent} rows: {document['windows']}")


def _rows_after_next_poll(monitor: RunningMonitor, after: float) -> int:
    """The rows of the first evaluation whose poll began after ``after`` (wall clock): two evaluations on."""
    seen: list[float] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        (model,) = [m for m in monitor.models() if m["model"] == MODEL] or [None]
        stamp = model["evaluated_at"] if model else None
        if stamp is not None and stamp > after and stamp not in seen:
            seen.append(stamp)
            if len(seen) == 2:  # the second one's poll started after the first evaluation ended
                return int(model["window"]["rows"])
        time.sleep(0.1)
    raise AssertionError(f"no evaluation after {after}: {monitor.models()}\n{monitor.log_path.read_text()}")


def test_a_running_monitor_counts_every_row_of_every_closed_window_once(monitored: tuple[Any, Any]) -> None:
    server, start_monitor = monitored
    monitor = start_monitor()
    sent = _send_traffic(server, 4, seed=1)  # the monitor polls every window while it is open
    closed = _server_closed_rows(server, sent)
    assert _rows_after_next_poll(monitor, time.time()) == closed == sent


@pytest.mark.parametrize("monitored", [("--workers", "2")], indirect=True)
def test_a_running_monitor_counts_every_row_once_from_a_server_with_two_workers(monitored: tuple[Any, Any]) -> None:
    server, start_monitor = monitored
    monitor = start_monitor()
    sent = _send_traffic(server, 4, seed=2)
    closed = _server_closed_rows(server, sent)
    assert _rows_after_next_poll(monitor, time.time()) == closed == sent


def test_a_restarted_monitor_counts_the_same_rows_once(monitored: tuple[Any, Any]) -> None:
    server, start_monitor = monitored
    first = start_monitor()
    sent = _send_traffic(server, 2, seed=3)
    first.stop()
    sent += _send_traffic(server, 2, seed=4)  # windows that open and close while no monitor runs
    second = start_monitor()
    sent += _send_traffic(server, 2, seed=5)
    closed = _server_closed_rows(server, sent)
    assert _rows_after_next_poll(second, time.time()) == closed == sent
