"""A monitor without the model repository uses the baseline each server loaded (GET …/baseline), checks it
as it checks files, and says where it came from."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
import pytest

from serve.baseline.model import file_sha256
from serve.input_stats.baseline import Baseline
from serve.monitor.app import _models_summary, render_report
from serve.monitor.config import MonitorSettings
from serve.monitor.model_report_json import ModelReportJson
from serve.monitor.service import Monitor
from tests.fixtures.monitoring import MODEL, Clock, FakeReplica, Predictor, feed, recorder, sample
from tests.fixtures.replicas import write_model_with_baseline

ROWS = 600


@dataclass
class Served:
    replica: FakeReplica
    data: bytes  # baseline.json's bytes
    model_sha256: str
    clock: Clock
    root: Path

    @property
    def baseline_url(self) -> str:
        return f"{self.replica.url}/v2/models/{MODEL}/versions/1/baseline"

    def serve(self, data: bytes | None = None, sha256: str | None = None, model_sha256: str | None = None) -> None:
        body = self.data if data is None else data
        headers = {
            "Serve-Baseline-Sha256": sha256 or hashlib.sha256(body).hexdigest(),
            "Serve-Model-Sha256": model_sha256 or self.model_sha256,
        }
        self.replica.baseline = (200, body, headers)

    def monitor(self, repository: Path | None = None) -> Monitor:
        settings = MonitorSettings(
            servers=[self.replica.url], model_repository=repository, db_path=str(self.root / "m.db"), timeout_s=5.0
        )
        return Monitor(settings, clock=self.clock)

    def baseline_requests(self) -> int:
        return sum(1 for path in self.replica.requests if path.endswith("/baseline"))


def _replica(root: Path, with_baseline: bool) -> Served:
    model_dir = write_model_with_baseline(root)
    data = (model_dir / "baseline.json").read_bytes()
    clock = Clock()
    rec = recorder(Baseline.load(model_dir / "baseline.json") if with_baseline else None, clock)
    feed(rec, sample(np.random.default_rng(1), ROWS), Predictor(model_dir))
    return Served(FakeReplica(rec), data, file_sha256(model_dir / "1" / "model.onnx"), clock, root)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    s = _replica(tmp_path, with_baseline=True)
    s.serve()
    yield s
    s.replica.close()
    s.replica.rec.close()


async def _report(monitor: Monitor) -> ModelReportJson:
    try:
        results = await monitor.cycle(include_open=True)
    finally:
        monitor.close()
    (outcome,) = results.values()
    return outcome.report.to_json()


async def test_without_a_repository_the_monitor_evaluates_against_the_servers_baseline(served: Served) -> None:
    report = await _report(served.monitor())
    assert report["baseline"]["status"] == "ok", report["problems"]
    assert (report["baseline"]["source"], report["baseline"]["path"]) == ("server", served.baseline_url)
    assert report["baseline"]["sha256"] == hashlib.sha256(served.data).hexdigest()
    features = {f["name"]: f for f in report["features"]}
    assert features["age"]["samples"] == ROWS


async def test_a_servers_baseline_is_fetched_once_per_hash(served: Served) -> None:
    monitor = served.monitor()
    try:
        for _ in range(3):
            served.clock.t += 60.0
            await monitor.cycle(include_open=True)
    finally:
        monitor.close()
    assert served.baseline_requests() == 1


async def test_a_local_baseline_is_preferred_to_the_servers(served: Served) -> None:
    report = await _report(served.monitor(repository=served.root))
    assert report["baseline"]["status"] == "ok"
    assert report["baseline"]["source"] == "file"
    assert report["baseline"]["path"] == str(served.root / MODEL / "baseline.json")
    assert served.baseline_requests() == 0


async def test_a_servers_baseline_for_another_onnx_file_is_stale(served: Served) -> None:
    served.serve(model_sha256="0" * 64)  # the server says it loaded an ONNX file the baseline was not made for
    report = await _report(served.monitor())
    assert report["baseline"]["status"] == "stale"
    assert any("stale: the model's ONNX file changed" in p for p in report["problems"])
    assert report["features"] == []


async def test_a_servers_baseline_without_the_hash_it_was_sent_with_is_refused(served: Served) -> None:
    served.serve(sha256="f" * 64)
    report = await _report(served.monitor())
    assert report["baseline"]["status"] == "invalid"
    assert any("does not have the SHA-256 the server sent" in p for p in report["problems"])


async def test_why_the_server_has_no_baseline_is_reported(tmp_path: Path) -> None:
    s = _replica(tmp_path, with_baseline=False)
    reason = f"model '{MODEL}' version 1 has no usable baseline: baseline.json is stale for this model: …"
    s.replica.baseline = (404, orjson.dumps({"error": reason}), {})
    try:
        report = await _report(s.monitor())
    finally:
        s.replica.close()
        s.replica.rec.close()
    assert report["baseline"]["status"] == "missing"
    assert any(reason in p and s.replica.url in p for p in report["problems"])


async def test_the_report_and_api_say_where_each_baseline_came_from(served: Served) -> None:
    monitor = served.monitor()
    try:
        await monitor.cycle(include_open=True)
        (summary,) = _models_summary(monitor)
        page = render_report(monitor)
    finally:
        monitor.close()
    assert summary["baseline"]["source"] == "server"
    assert summary["baseline"]["path"] == served.baseline_url
    assert f"baseline from {served.baseline_url}" in page


async def test_a_failed_baseline_fetch_leaves_the_replica_up_and_is_tried_again(served: Served) -> None:
    served.replica.baseline = (500, b'{"error": "disk on fire"}', {})
    monitor = served.monitor()
    try:
        first = (await monitor.cycle(include_open=True))[(MODEL, "1")].report
        (status,) = monitor.servers.values()
        up_after_failure = status.up
        served.serve()
        second = (await monitor.cycle(include_open=True))[(MODEL, "1")].report
    finally:
        monitor.close()
    assert up_after_failure and first.baseline["status"] == "missing"
    assert second.baseline["status"] == "ok" and served.baseline_requests() == 2
