"""One monitor, three real `serve run` replicas on 127.0.0.1, 127.0.0.2 and 127.0.0.3 (same ports, as pods
behind a headless Service), found through one name that resolves to all of them, and no model repository:
the monitor pulls each model's baseline from the servers, merges the replicas' statistics without counting
a row twice, marks a stopped replica stale and picks up one started later."""

from __future__ import annotations

import json
import ssl
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
import trustme

from serve.cli import main
from serve.monitor.config import MonitorSettings
from serve.monitor.model_report_json import ModelReportJson
from serve.monitor.service import Monitor
from tests.fixtures.local_servers import ThreadServer, start_in_thread
from tests.fixtures.monitoring import MODEL, sample
from tests.fixtures.replicas import REPLICA_HOSTS, shared_ports, write_model_with_baseline

NAME = "replicas.serve.test"  # .test never resolves in DNS: only the test's resolver knows it
SECOND = "churn_b"


class Names:
    def __init__(self) -> None:
        self.addresses: list[str] = []

    def __call__(self, host: str) -> Sequence[str]:
        assert host == NAME
        return list(self.addresses)


class Fleet:
    """Replicas of one repository on the loopback hosts, sharing one HTTP and one gRPC port."""

    def __init__(self, repository: Path, tmp_path: Path) -> None:
        self.repository, self.tmp_path = repository, tmp_path
        self.ports = shared_ports(REPLICA_HOSTS)
        self.running: dict[str, ThreadServer] = {}

    def start(self, host: str) -> ThreadServer:
        self.running[host] = start_in_thread(self.repository, self.tmp_path, host=host, ports=self.ports)
        return self.running[host]

    def stop(self, host: str) -> None:
        self.running[host].stop()

    def close(self) -> None:
        for server in self.running.values():
            server.stop()

    def url(self, host: str) -> str:
        return f"http://{host}:{self.ports[0]}"


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fleet-models")
    write_model_with_baseline(root)
    write_model_with_baseline(root, SECOND, seed=3)
    return root


@pytest.fixture
def fleet(repository: Path, tmp_path: Path) -> Iterator[Fleet]:
    f = Fleet(repository, tmp_path)
    yield f
    f.close()


def _infer(server: ThreadServer, x: np.ndarray) -> None:
    body = json.dumps(
        {"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
    )
    request = urllib.request.Request(
        f"{server.base}/v2/models/{MODEL}/infer", data=body.encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200


def _recorded(server: ThreadServer) -> int:
    with urllib.request.urlopen(f"{server.base}/v2/models/{MODEL}/input-stats", timeout=10) as response:
        return int(json.loads(response.read())["total"]["rows"])


def _send(server: ThreadServer, rows: int, seed: int) -> None:
    """``rows`` rows in requests of 50, then wait until the server's statistics hold them (recorded off
    the request path)."""
    rng = np.random.default_rng(seed)
    before = _recorded(server)
    for _ in range(rows // 50):
        _infer(server, sample(rng, 50))
    deadline = time.monotonic() + 30
    while _recorded(server) < before + rows and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _recorded(server) == before + rows


def _age_samples(report: ModelReportJson) -> int:
    return int({f["name"]: f for f in report["features"]}["age"]["samples"])


async def test_one_name_finds_every_replica_and_the_merge_counts_each_row_once(fleet: Fleet, tmp_path: Path) -> None:
    names = Names()
    settings = MonitorSettings(servers=[f"http://{NAME}:{fleet.ports[0]}"], db_path=str(tmp_path / "m.db"))
    monitor = Monitor(settings, resolver=names)
    try:
        # Two replicas first, behind the one name.
        for host, rows in (("127.0.0.1", 300), ("127.0.0.2", 500)):
            _send(fleet.start(host), rows, seed=len(host) + rows)
        names.addresses = ["127.0.0.1", "127.0.0.2"]
        results = await monitor.cycle(include_open=True)
        report = results[(MODEL, "1")].report.to_json()
        assert sorted(monitor.servers) == [fleet.url("127.0.0.1"), fleet.url("127.0.0.2")]
        assert all(s.up for s in monitor.servers.values())
        for key in ((MODEL, "1"), (SECOND, "1")):  # each model's baseline, from the servers
            baseline = results[key].report.baseline
            assert (baseline["status"], baseline["source"]) == ("ok", "server"), results[key].report.problems
            assert baseline["path"] is not None and baseline["path"].endswith(
                f"/v2/models/{key[0]}/versions/1/baseline"
            )
        assert _age_samples(report) == 800 == sum(_recorded(s) for s in fleet.running.values())
        assert len(report.get("replicas", [])) == 2

        # A third replica starts and joins the name: picked up on the next poll.
        _send(fleet.start("127.0.0.3"), 200, seed=7)
        names.addresses = list(REPLICA_HOSTS)
        report = (await monitor.cycle(include_open=True))[(MODEL, "1")].report.to_json()
        assert monitor.servers[fleet.url("127.0.0.3")].up
        assert _age_samples(report) == 1000 == sum(_recorded(s) for s in fleet.running.values())

        # Polling again adds nothing.
        report = (await monitor.cycle(include_open=True))[(MODEL, "1")].report.to_json()
        assert _age_samples(report) == 1000

        # One replica stops (still in the name): stale, and what it sent still counts, once.
        fleet.stop("127.0.0.2")
        report = (await monitor.cycle(include_open=True))[(MODEL, "1")].report.to_json()
        stopped = monitor.servers[fleet.url("127.0.0.2")]
        assert (stopped.up, stopped.stale) == (False, True) and stopped.last_error
        assert {r["source"]: r["stale"] for r in report.get("replicas", [])} == {
            fleet.url("127.0.0.1"): False,
            fleet.url("127.0.0.2"): True,
            fleet.url("127.0.0.3"): False,
        }
        assert _age_samples(report) == 1000

        # It leaves the name too: marked as gone, no longer polled.
        names.addresses = ["127.0.0.1", "127.0.0.3"]
        await monitor.cycle(include_open=True)
        assert monitor.servers[fleet.url("127.0.0.2")].vanished_at is not None
    finally:
        monitor.close()


def test_serve_monitor_once_finds_replicas_through_a_hosts_file_and_needs_no_repository(
    fleet: Fleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for host, rows in (("127.0.0.1", 100), ("127.0.0.2", 150), ("127.0.0.3", 250)):
        _send(fleet.start(host), rows, seed=rows)
    hosts = tmp_path / "hosts"
    hosts.write_text("".join(f"{host} {NAME}\n" for host in REPLICA_HOSTS))
    url = f"http://{NAME}:{fleet.ports[0]}"
    code = main(
        [
            "monitor",
            "--server",
            url,
            "--hosts-file",
            str(hosts),
            "--once",
            "--format",
            "json",
            "--db",
            str(tmp_path / "m.db"),
        ]
    )
    assert code == 0
    document = json.loads(capsys.readouterr().out)
    assert sorted(s["url"] for s in document["servers"] if s["up"]) == [fleet.url(h) for h in REPLICA_HOSTS]
    assert document["discovery"] == [{"server": url, "replicas": [fleet.url(h) for h in REPLICA_HOSTS], "error": None}]
    model = next(m for m in document["models"] if m["model"] == MODEL)
    assert (model["baseline"]["status"], model["baseline"]["source"]) == ("ok", "server"), model["problems"]
    assert {f["name"]: f for f in model["features"]}["age"]["samples"] == 500


def test_serve_monitor_once_polls_every_tls_replica_behind_one_https_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """As deploy/kubernetes-tls runs it: the certificate names the Service, not the pods' addresses."""
    repository = tmp_path / "models"
    write_model_with_baseline(repository)
    ca = trustme.CA()
    issued = ca.issue_cert(NAME)
    cert, key, ca_file = tmp_path / "server.pem", tmp_path / "server.key", tmp_path / "ca.pem"
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(ca_file))
    hosts = ("127.0.0.1", "127.0.0.2")
    ports = shared_ports(hosts)
    context = ssl.create_default_context(cafile=str(ca_file))
    context.check_hostname = False  # the test probes the address; the monitor checks the name
    servers = [
        start_in_thread(repository, tmp_path, "--tls-cert-file", str(cert), "--tls-key-file", str(key),
                     host=host, ports=ports, tls=context)
        for host in hosts
    ]  # fmt: skip
    try:
        rng = np.random.default_rng(7)
        for server, requests in zip(servers, (2, 3), strict=True):
            for _ in range(requests):  # 50 rows each: under the default max_batch_size
                x = sample(rng, 50)
                body = {"inputs": [{"name": "x", "shape": [50, 4], "datatype": "FP32", "data": x.ravel().tolist()}]}
                request = urllib.request.Request(
                    f"{server.base}/v2/models/{MODEL}/infer", data=json.dumps(body).encode()
                )
                with urllib.request.urlopen(request, timeout=30, context=context) as response:
                    assert response.status == 200
        (tmp_path / "hosts").write_text("".join(f"{host} {NAME}\n" for host in hosts))
        monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
        time.sleep(0.5)  # the statistics are recorded off the request path
        code = main(["monitor", "--server", f"https://{NAME}:{ports[0]}", "--hosts-file", str(tmp_path / "hosts"),
                     "--once", "--format", "json"])  # fmt: skip
    finally:
        for server in servers:
            server.stop()
    document = json.loads(capsys.readouterr().out)
    assert sorted(s["url"] for s in document["servers"] if s["up"]) == [f"https://{h}:{ports[0]}" for h in hosts]
    model = next(m for m in document["models"] if m["model"] == MODEL)
    assert {f["name"]: f for f in model["features"]}["age"]["samples"] == 250
    assert code in (0, 1)  # judged: clean traffic on 250 rows is stable or, rarely, drifted
