"""``serve run --workers N``: one server seen from outside, made of N worker processes.

Each test starts a real supervisor with two workers on loopback and talks to it with real
clients; to check that the server's answers are sums over its workers, it also asks each
worker directly over its control socket in the run directory, as the supervisor does.
"""

from __future__ import annotations

import asyncio
import collections
import json
import re
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import psutil
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from prometheus_client.parser import text_string_to_metric_families

from serve.demo import write_demo_repository
from serve.protocol import grpc_service_pb2 as pb
from serve.protocol import grpc_service_pb2_grpc as pb_grpc
from serve.workers import ipc
from serve.workers.messages import A, Export, Loaded, ModelStatistics, Request
from serve.workers.worker import worker_socket
from tests.fixtures.load import hammering, post_once
from tests.fixtures.servers import RunningServer, serving

WORKERS = 2
BODY = json.dumps({"inputs": [{"name": "features", "shape": [1, 8], "datatype": "FP32", "data": [0.1] * 8}]}).encode()


def _features(rows: int) -> np.ndarray:
    return np.linspace(-1, 1, rows * 8, dtype=np.float32).reshape(rows, 8)


def metrics(server: RunningServer) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    with urllib.request.urlopen(f"{server.base}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value for f in text_string_to_metric_families(text) for s in f.samples
    }


def wait_for_workers(server: RunningServer, count: int = WORKERS, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert server.process.poll() is None, server.log()
        if f"serving with {count} worker processes" in server.log():
            with urllib.request.urlopen(f"{server.base}/metrics", timeout=10):
                pass
            if metrics(server).get(("serve_workers", frozenset())) == count:
                return
        time.sleep(0.1)
    raise AssertionError(f"{count} workers did not start:\n{server.log()}")


def run_dir(server: RunningServer) -> Path:
    found = re.search(r"run directory (\S+)", server.log())
    assert found, server.log()
    return Path(found.group(1))


def ask_each_worker(server: RunningServer, request: Request[A]) -> list[A]:
    async def ask() -> list[A]:
        return list(
            await asyncio.gather(*(ipc.call(worker_socket(run_dir(server), i), request) for i in range(WORKERS)))
        )

    return asyncio.run(ask())


def spread_requests(server: RunningServer, rows: list[int]) -> None:
    """One HTTP connection per request (the workers share one accept queue) and gRPC on new channels."""
    for n in rows[: len(rows) // 2]:
        client = httpclient.InferenceServerClient(server.http_url)
        tensor = httpclient.InferInput("features", [n, 8], "FP32")
        tensor.set_data_from_numpy(_features(n))
        client.infer("tabular", [tensor])
        client.close()
    for n in rows[len(rows) // 2 :]:
        with grpcclient.InferenceServerClient(server.grpc_url) as client:
            tensor = grpcclient.InferInput("features", [n, 8], "FP32")
            tensor.set_data_from_numpy(_features(n))
            client.infer("tabular", [tensor])


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("workers-demo")
    write_demo_repository(root)
    return root


@pytest.fixture(scope="module")
def two_workers(demo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with serving(
        demo, tmp_path_factory.mktemp("workers"), "--workers", str(WORKERS), "--metrics-triton-compat"
    ) as server:
        wait_for_workers(server)
        yield server


# ---- the protocols, unchanged ----------------------------------------------------------------------


def test_tritonclient_works_over_both_protocols_with_two_workers(two_workers: RunningServer) -> None:
    # fixed_shape, so that the counts of tabular below come from the scripted sequence alone
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    http = httpclient.InferenceServerClient(two_workers.http_url)
    try:
        assert http.is_server_ready() and http.is_model_ready("fixed_shape")
        assert http.get_model_metadata("tabular")["inputs"][0]["name"] == "features"
        inp = httpclient.InferInput("x", [2, 3], "FP32")
        inp.set_data_from_numpy(x, binary_data=True)
        via_http = http.infer("fixed_shape", [inp]).as_numpy("y")
    finally:
        http.close()
    with grpcclient.InferenceServerClient(two_workers.grpc_url) as grpc_client:
        assert grpc_client.is_server_live()
        assert grpc_client.get_model_config("tabular").config.max_batch_size == 64
        inp = grpcclient.InferInput("x", [2, 3], "FP32")
        inp.set_data_from_numpy(x)
        via_grpc = grpc_client.infer("fixed_shape", [inp]).as_numpy("y")
        index = grpc_client.get_model_repository_index()
    np.testing.assert_array_equal(via_http, via_grpc)
    assert {m.name for m in index.models} == {"tabular", "multi_io", "identity_all", "fixed_shape"}


def test_errors_keep_their_status_with_two_workers(two_workers: RunningServer) -> None:
    request = urllib.request.Request(f"{two_workers.base}/v2/models/nope/infer", b"{}", method="POST")
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(request, timeout=10)
    assert raised.value.code == 404
    assert "Request for unknown model" in json.loads(raised.value.read())["error"]


# ---- one server seen from outside ------------------------------------------------------------------


@pytest.fixture(scope="module")
def scripted(two_workers: RunningServer) -> list[int]:
    rows = [1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3, 4]
    spread_requests(two_workers, rows)
    return rows


def test_requests_were_served_by_both_workers(two_workers: RunningServer, scripted: list[int]) -> None:
    counts = [
        json.loads(answer.document)[0]["inference_count"]
        for answer in ask_each_worker(two_workers, ModelStatistics("tabular", ""))
    ]
    assert sum(counts) == sum(scripted)
    assert all(count > 0 for count in counts), counts


def test_triton_statistics_are_the_sum_over_workers(two_workers: RunningServer, scripted: list[int]) -> None:
    per_worker = [
        json.loads(answer.document)[0] for answer in ask_each_worker(two_workers, ModelStatistics("tabular", ""))
    ]
    with urllib.request.urlopen(f"{two_workers.base}/v2/models/tabular/stats", timeout=10) as response:
        (merged,) = json.loads(response.read())["model_stats"]
    assert merged["inference_count"] == sum(w["inference_count"] for w in per_worker) == sum(scripted)
    assert merged["execution_count"] == sum(w["execution_count"] for w in per_worker)
    for phase in ("success", "queue", "compute_infer"):
        for unit in ("count", "ns"):
            assert merged["inference_stats"][phase][unit] == sum(w["inference_stats"][phase][unit] for w in per_worker)
    with grpcclient.InferenceServerClient(two_workers.grpc_url) as client:
        over_grpc = client.get_inference_statistics("tabular", as_json=True)["model_stats"][0]
    assert int(over_grpc["inference_count"]) == merged["inference_count"]


def test_prometheus_counters_and_histograms_are_exact_over_workers(
    two_workers: RunningServer, scripted: list[int]
) -> None:
    samples = metrics(two_workers)
    tab = frozenset({("model", "tabular"), ("version", "1")})

    def value(name: str, **labels: str) -> float:
        return samples.get((name, tab | frozenset(labels.items())), 0.0)

    half = len(scripted) // 2
    assert value("serve_requests_total", role="", protocol="http", outcome="success") == half
    assert value("serve_requests_total", role="", protocol="grpc", outcome="success") == len(scripted) - half
    assert (
        value("serve_request_duration_seconds_count", role="", protocol="grpc", outcome="success")
        == len(scripted) - half
    )
    assert value("serve_inference_rows_total") == samples[("nv_inference_count", tab)] == sum(scripted)
    executions = value("serve_executions_total")
    assert value("serve_batch_size_count") == executions == samples[("nv_inference_exec_count", tab)]
    assert value("serve_batch_size_bucket", le="+Inf") == executions
    assert value("serve_model_ready") == 1
    assert samples[("serve_workers", frozenset())] == WORKERS


def test_input_statistics_are_merged_over_workers_once_per_row(two_workers: RunningServer, scripted: list[int]) -> None:
    deadline = time.monotonic() + 10
    while True:  # the statistics workers update at most every 100 ms
        with urllib.request.urlopen(f"{two_workers.base}/v2/models/tabular/input-stats", timeout=10) as response:
            merged = json.loads(response.read())
        if merged["total"]["rows"] >= sum(scripted) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    documents = [json.loads(answer.document) for answer in ask_each_worker(two_workers, Export("tabular", ""))]
    assert merged["total"]["rows"] == sum(scripted) == sum(d["total"]["rows"] for d in documents)
    assert all(d["total"]["rows"] > 0 for d in documents)  # both workers recorded some of them
    assert merged["instance"]["id"] not in {d["instance"]["id"] for d in documents}  # one instance: the server
    again = json.loads(
        urllib.request.urlopen(f"{two_workers.base}/v2/models/tabular/input-stats?since={merged['seq']}").read()
    )
    assert again["windows"] == []  # nothing changed since: nothing counted twice


# ---- workers that die, and shutting down -------------------------------------------------------------


def _workers_of(server: RunningServer) -> list[psutil.Process]:
    return psutil.Process(server.process.pid).children()


def test_a_killed_worker_loses_only_its_in_flight_requests_and_is_replaced(demo: Path, tmp_path: Path) -> None:
    with serving(demo, tmp_path, "--workers", str(WORKERS)) as server:
        wait_for_workers(server)
        with hammering(f"{server.base}/v2/models/tabular/infer", BODY, timeout=10) as outcomes:
            time.sleep(1.0)
            victim = _workers_of(server)[0]
            victim.send_signal(signal.SIGKILL)
            killed_at = time.monotonic()
            deadline = killed_at + 15
            while True:
                restarts = metrics(server).get(("serve_worker_restarts_total", frozenset({("reason", "signal")})))
                replaced = (
                    victim.pid not in {p.pid for p in _workers_of(server)} and len(_workers_of(server)) == WORKERS
                )
                if restarts == 1 and replaced and "is serving" in server.log().split(f"pid {victim.pid}")[-1]:
                    break
                assert time.monotonic() < deadline, server.log()
                time.sleep(0.2)
            time.sleep(0.5)
        failures = [o.took_s for o in outcomes if not o.ok]
        assert len(outcomes) > 50
        assert len(failures) <= 4 + 1, failures  # at most what was in flight on the killed worker
        assert all(duration < 5 for duration in failures)  # they fail fast, none hangs
        assert "killed by SIGKILL" in server.log()


def test_sigterm_under_load_drains_every_worker_and_exits_zero(demo: Path, tmp_path: Path) -> None:
    with serving(demo, tmp_path, "--workers", str(WORKERS)) as server:
        wait_for_workers(server)
        with hammering(f"{server.base}/v2/models/tabular/infer", BODY, timeout=10) as outcomes:
            time.sleep(1.0)
            server.process.send_signal(signal.SIGTERM)
            code = server.process.wait(30)
        assert code == 0, server.log()
        answered = {o.status for o in outcomes if not o.status.startswith("connection")}
        assert "200" in answered and answered <= {"200", "503"}, answered  # drained: answered or refused, no 500
        assert server.log().count("serve.server: stopped") == WORKERS
        assert "serve.workers: stopped" in server.log()


def test_after_sigterm_a_new_http_connection_is_answered_or_refused_never_left_to_be_reset(
    demo: Path, tmp_path: Path
) -> None:
    with serving(demo, tmp_path, "--workers", str(WORKERS)) as server:
        wait_for_workers(server)
        url = f"{server.base}/v2/models/tabular/infer"
        server.process.send_signal(signal.SIGTERM)
        # From the moment a worker stops (a connection made just as the port stops listening, still in
        # its queue, is reset by the kernel: no server can avoid that instant) ...
        while "Shutting down" not in server.log() and server.process.poll() is None:
            time.sleep(0.01)
        outcomes = []
        while server.process.poll() is None:
            outcomes.append(post_once(url, BODY, timeout=10))
        assert server.process.wait() == 0, server.log()
    # ... no worker accepts, so the port must not listen: a connection it queued would wait for nobody.
    refused = "connection: <urlopen error [Errno 111] Connection refused>"
    assert refused in outcomes and set(outcomes) <= {"200", "503", refused}, collections.Counter(outcomes)


def test_explicit_load_and_unload_reach_every_worker(demo: Path, tmp_path: Path) -> None:
    args = ("--workers", str(WORKERS), "--model-control-mode", "explicit", "--load-model", "tabular")
    with serving(demo, tmp_path, *args) as server:
        wait_for_workers(server)

        def loaded() -> list[list[str]]:
            return [list(answer.models) for answer in ask_each_worker(server, Loaded())]

        assert loaded() == [["tabular"], ["tabular"]]
        client = httpclient.InferenceServerClient(server.http_url)
        try:
            client.load_model("multi_io")
            assert loaded() == [["multi_io", "tabular"], ["multi_io", "tabular"]]
            client.unload_model("tabular")
            assert loaded() == [["multi_io"], ["multi_io"]]
            assert not client.is_model_ready("tabular")
        finally:
            client.close()


def test_one_grpc_connection_reaches_every_worker_with_the_native_front_end(demo: Path, tmp_path: Path) -> None:
    """perf_analyzer and tritonclient send every call over one connection: the supervisor's front end hands each
    call to a worker, where SO_REUSEPORT would give the whole connection to one (serve/grpc/handoff)."""
    request = pb.ModelInferRequest(model_name="tabular")
    request.inputs.add(name="features", datatype="FP32", shape=[2, 8])
    request.raw_input_contents.append(_features(2).tobytes())

    async def one_connection(url: str) -> list[pb.ModelInferResponse]:
        async with grpc.aio.insecure_channel(url) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)

            async def caller() -> list[pb.ModelInferResponse]:
                return [await stub.ModelInfer(request) for _ in range(40)]

            return [reply for replies in await asyncio.gather(*(caller() for _ in range(64))) for reply in replies]

    with serving(demo, tmp_path, "--workers", str(WORKERS), "--grpc-frontend", "native") as server:
        wait_for_workers(server)
        workers = psutil.Process(server.process.pid).children()
        before = [sum(worker.cpu_times()[:2]) for worker in workers]
        replies = asyncio.run(one_connection(server.grpc_url))
        used = [sum(worker.cpu_times()[:2]) - start for worker, start in zip(workers, before, strict=True)]
        log = server.log()

    assert len(workers) == WORKERS and len(replies) == 64 * 40
    assert all("label" in {output.name for output in reply.outputs} for reply in replies)
    assert "gRPC on 127.0.0.1" in log and "one front end, calls handed to every worker" in log
    assert min(used) >= 0.25 * sum(used), used  # both workers ran calls of the one connection
