"""--model-control-mode poll: the repository on disk is read again and changes are served without
dropping a request. A new version is loaded and warmed before traffic moves to it; a broken one,
or one that crashes onnxruntime natively, leaves what served before serving; a removed version is
retired after its queue drains. The poller is driven by hand (``poll()``), so no test waits on a timer.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from onnx import helper
from prometheus_client.parser import text_string_to_metric_families

from serve.modelgen import build, constant, save, tensor
from serve.repository.poller import RepositoryPoller, fingerprint
from tests.fixtures.inprocess import InProcess, in_process

MODEL = "scaled"
CRASH_MARKER = "serve-test: crash onnxruntime here"

# Loaded by every Python process started with it on PYTHONPATH (here: the probe's child): it makes
# onnxruntime die with SIGSEGV on a model whose bytes carry the marker, as a crafted model can.
SITECUSTOMIZE = """
import importlib.abc, importlib.machinery, os, signal, sys
MARKER = os.environ.get("SERVE_TEST_CRASH_MARKER", "").encode()

class _Patch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "onnxruntime":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            real = module.InferenceSession

            class Crashing(real):
                def __init__(self, model, *args, **kwargs):
                    if MARKER and isinstance(model, bytes) and MARKER in model:
                        os.kill(os.getpid(), signal.SIGSEGV)
                    super().__init__(model, *args, **kwargs)

            module.InferenceSession = Crashing

        spec.loader.exec_module = exec_module
        return spec

if MARKER:
    sys.meta_path.insert(0, _Patch())
"""


def scaled_model(factor: float, doc: str = "") -> Any:
    """y = x * factor, FP32 [batch, 2]: the answer tells which version served."""
    node = helper.make_node("Mul", ["x", "k"], ["y"])
    model = build(
        "scaled", [node], [tensor("x", "FP32", ["batch", 2])], [tensor("y", "FP32", ["batch", 2])],
        [constant("k", np.array([factor], np.float32))],
    )  # fmt: skip
    model.doc_string = doc
    return model


def write_version(root: Path, version: int, *, doc: str = "") -> Path:
    return save(scaled_model(float(version), doc), root / MODEL / str(version) / "model.onnx")


@pytest.fixture
async def served(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[InProcess, RepositoryPoller, Path]]:
    root = tmp_path / "models"
    write_version(root, 1)
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(SITECUSTOMIZE)
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path / 'site'}")
    monkeypatch.setenv("SERVE_TEST_CRASH_MARKER", CRASH_MARKER)
    async with in_process(root, model_control_mode="poll", audit_log_file=tmp_path / "audit.jsonl") as server:
        poller = RepositoryPoller(server.service.repository, interval_s=3600)
        poller.mark_loaded()
        yield server, poller, tmp_path


async def answer(server: InProcess) -> float:
    body = {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1.0, 1.0]}]}
    response = await server.http.post(f"/v2/models/{MODEL}/infer", content=orjson.dumps(body))
    assert response.status_code == 200, response.content
    return float(response.json()["outputs"][0]["data"][0])


async def settle(poller: RepositoryPoller) -> list[str]:
    """Two looks: a change is acted on once it was seen the same twice."""
    first = await poller.poll()
    assert first == []
    return await poller.poll()


def index(server: InProcess) -> dict[str, tuple[str, str]]:
    return {r["version"]: (r["state"], r["reason"]) for r in server.service.repository_index() if r["name"] == MODEL}


def audit(tmp_path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in (tmp_path / "audit.jsonl").read_bytes().splitlines()]


async def test_a_new_version_is_served_once_it_is_loaded_and_the_old_one_retires(
    served: tuple[InProcess, RepositoryPoller, Path],
) -> None:
    server, poller, _ = served
    assert await answer(server) == 1.0
    write_version(server.service.repository.root, 2)
    assert await settle(poller) == [MODEL]
    assert await answer(server) == 2.0
    assert set(index(server)) == {"2"}  # latest 1: version 1 retired


async def test_a_directory_still_changing_is_not_loaded_until_two_polls_agree(
    served: tuple[InProcess, RepositoryPoller, Path],
) -> None:
    server, poller, _ = served
    write_version(server.service.repository.root, 2)
    assert await poller.poll() == []  # seen once
    write_version(server.service.repository.root, 3)  # still being copied
    assert await poller.poll() == []  # changed again: wait
    assert await poller.poll() == [MODEL]
    assert await answer(server) == 3.0


def write_broken_version(root: Path, version: int) -> Path:
    """A version directory whose model file is not ONNX; returns the file."""
    broken = root / MODEL / str(version) / "model.onnx"
    broken.parent.mkdir()
    broken.write_bytes(b"not an onnx model")
    return broken


async def test_a_broken_new_version_leaves_the_old_one_serving_and_says_why(
    served: tuple[InProcess, RepositoryPoller, Path],
) -> None:
    server, poller, tmp_path = served
    write_broken_version(server.service.repository.root, 2)
    assert await settle(poller) == [MODEL]
    assert await answer(server) == 1.0
    assert index(server)["1"][0] == "READY"
    state, reason = index(server)["2"]
    assert state == "UNAVAILABLE" and "not a valid ONNX model" in reason
    assert server.service.server_ready()
    exposed = server.metrics.exposition()[0].decode()
    assert 'serve_model_load_failures_total{model="scaled",version="2"} 1.0' in exposed
    failed = [line for line in audit(tmp_path) if line["event"] == "load_failed"]
    assert failed and failed[-1]["version"] == "2" and failed[-1]["actor"] == "poll"


async def test_a_model_file_that_crashes_onnxruntime_fails_its_load_not_the_server(
    served: tuple[InProcess, RepositoryPoller, Path],
) -> None:
    server, poller, _ = served
    write_version(server.service.repository.root, 2, doc=CRASH_MARKER)
    assert await settle(poller) == [MODEL]
    assert await answer(server) == 1.0
    state, reason = index(server)["2"]
    assert state == "UNAVAILABLE" and "crashed (SIGSEGV)" in reason


async def test_a_removed_version_gives_way_to_the_one_before(served: tuple[InProcess, RepositoryPoller, Path]) -> None:
    server, poller, tmp_path = served
    root = server.service.repository.root
    write_version(root, 2)
    await settle(poller)
    assert await answer(server) == 2.0
    shutil.rmtree(root / MODEL / "2")
    assert await settle(poller) == [MODEL]
    assert await answer(server) == 1.0
    assert set(index(server)) == {"1"}
    assert [line["event"] for line in audit(tmp_path) if line.get("version") == "2"][-1] == "unload"


async def test_a_model_removed_from_disk_is_unloaded_and_a_new_one_loaded(
    served: tuple[InProcess, RepositoryPoller, Path],
) -> None:
    server, poller, _ = served
    root = server.service.repository.root
    save(scaled_model(5.0), root / "other" / "1" / "model.onnx")
    shutil.rmtree(root / MODEL)
    assert sorted(await settle(poller)) == ["other", MODEL]
    assert not server.service.model_ready(MODEL)
    assert server.service.model_ready("other")


async def scraped(server: InProcess, family: str) -> dict[str, float]:
    """``family``'s samples for MODEL by version, as Prometheus scrapes them from GET /metrics."""
    response = await server.http.get("/metrics")
    assert response.status_code == 200
    return {
        sample.labels["version"]: sample.value
        for metric in text_string_to_metric_families(response.text)
        for sample in metric.samples
        if sample.name == family and sample.labels.get("model") == MODEL
    }


async def test_a_version_retired_by_a_rollout_leaves_no_ready_series_for_the_alert_to_fire_on(
    served: tuple[InProcess, RepositoryPoller, Path],
) -> None:
    server, poller, _ = served
    assert await scraped(server, "serve_model_ready") == {"1": 1.0}
    write_version(server.service.repository.root, 2)
    assert await settle(poller) == [MODEL]
    assert await scraped(server, "serve_model_ready") == {"2": 1.0}
    assert set(await scraped(server, "serve_model_load_duration_seconds")) == {"2"}
    assert set(await scraped(server, "serve_queue_depth")) == {"2"}


async def test_a_version_that_should_serve_but_failed_to_load_stays_not_ready(
    served: tuple[InProcess, RepositoryPoller, Path],
) -> None:
    server, poller, _ = served
    write_broken_version(server.service.repository.root, 2)
    assert await settle(poller) == [MODEL]
    assert await scraped(server, "serve_model_ready") == {"1": 1.0, "2": 0.0}


async def test_a_failed_version_removed_from_disk_leaves_no_ready_series(
    served: tuple[InProcess, RepositoryPoller, Path],
) -> None:
    server, poller, _ = served
    broken = write_broken_version(server.service.repository.root, 2)
    await settle(poller)
    shutil.rmtree(broken.parent)
    assert await settle(poller) == [MODEL]
    assert await scraped(server, "serve_model_ready") == {"1": 1.0}


async def test_a_model_removed_from_disk_leaves_no_ready_series(
    served: tuple[InProcess, RepositoryPoller, Path],
) -> None:
    server, poller, _ = served
    shutil.rmtree(server.service.repository.root / MODEL)
    assert await settle(poller) == [MODEL]
    assert await scraped(server, "serve_model_ready") == {}


async def test_load_requests_are_refused_while_polling_as_triton_does(
    served: tuple[InProcess, RepositoryPoller, Path],
) -> None:
    server, _, _ = served
    response = await server.http.post(f"/v2/repository/models/{MODEL}/load")
    assert response.status_code == 503
    assert "explicit model load / unload is not allowed if polling is enabled" in response.json()["error"]


async def test_changes_under_load_drop_no_request_and_answers_follow_the_versions(
    served: tuple[InProcess, RepositoryPoller, Path],
) -> None:
    server, poller, tmp_path = served
    root = server.service.repository.root
    answers: list[float] = []
    failures: list[str] = []
    stop = asyncio.Event()

    async def client() -> None:
        body = orjson.dumps({"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1.0, 1.0]}]})
        while not stop.is_set():
            response = await server.http.post(f"/v2/models/{MODEL}/infer", content=body)
            if response.status_code == 200:
                answers.append(float(response.json()["outputs"][0]["data"][0]))
            else:
                failures.append(response.text)
            await asyncio.sleep(0)

    clients = [asyncio.ensure_future(client()) for _ in range(4)]
    try:
        await asyncio.sleep(0.1)
        write_version(root, 2)  # a new version
        await settle(poller)
        await asyncio.sleep(0.1)
        broken = root / MODEL / "3" / "model.onnx"
        broken.parent.mkdir()
        broken.write_bytes(b"garbage")  # a broken version
        await settle(poller)
        await asyncio.sleep(0.1)
        shutil.rmtree(root / MODEL / "3")
        write_version(root, 3, doc=CRASH_MARKER)  # a model file that crashes onnxruntime
        await settle(poller)
        await asyncio.sleep(0.1)
        shutil.rmtree(root / MODEL / "3")
        shutil.rmtree(root / MODEL / "2")  # versions removed: back to version 1
        await settle(poller)
        await asyncio.sleep(0.1)
    finally:
        stop.set()
        await asyncio.gather(*clients)
    assert failures == []
    assert len(answers) > 100
    switches = [a for i, a in enumerate(answers) if i == 0 or a != answers[i - 1]]
    assert switches == [1.0, 2.0, 1.0]
    events = [(line["event"], line.get("version")) for line in audit(tmp_path)]
    for expected in [("load", "2"), ("load_failed", "3"), ("unload", "2")]:
        assert expected in events, events
    assert fingerprint(root / MODEL) is not None
