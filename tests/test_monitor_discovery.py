"""Replica discovery (serve/monitor/discovery.py and the monitor's tracking of what it finds): a --server
name stands for every address it resolves to, resolved again on every poll; replicas that vanish are marked
stale and forgotten after the horizon."""

from __future__ import annotations

import asyncio
import json
import socket
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from serve.monitor.app import create_monitor_app
from serve.monitor.config import MonitorSettings
from serve.monitor.discovery import Discovery, HostsFile, parse_target, system_resolver, tls_server_name
from serve.monitor.prom import DriftCollector
from serve.monitor.service import Monitor
from tests.fixtures.monitoring import AppServer, Clock


class Names:
    """A resolver the test edits: name → addresses, or the getaddrinfo error to raise."""

    def __init__(self, **names: list[str]) -> None:
        self.names: dict[str, list[str] | socket.gaierror] = dict(names)
        self.asked: list[str] = []

    def __call__(self, host: str) -> Sequence[str]:
        self.asked.append(host)
        answer = self.names.get(host, socket.gaierror(socket.EAI_NONAME, "Name or service not known"))
        if isinstance(answer, socket.gaierror):
            raise answer
        return answer


def test_a_name_stands_for_every_address_it_resolves_to_at_the_urls_port_and_path() -> None:
    names = Names(replicas=["10.0.0.5", "10.0.0.6"])
    found = Discovery(["http://replicas:8000/serve/"], names).resolve()
    assert found == {
        "http://10.0.0.5:8000/serve": "http://replicas:8000/serve",
        "http://10.0.0.6:8000/serve": "http://replicas:8000/serve",
    }


def test_an_address_is_one_replica_and_is_not_resolved() -> None:
    names = Names()
    discovery = Discovery(["http://127.0.0.1:8000", "http://[::1]:8000/"], names)
    assert discovery.known() == {
        "http://127.0.0.1:8000": "http://127.0.0.1:8000",
        "http://[::1]:8000": "http://[::1]:8000",
    }
    assert discovery.resolve() == discovery.known()
    assert names.asked == []


def test_an_https_name_stands_for_every_address_each_checked_against_the_name() -> None:
    names = Names(replicas=["10.0.0.5", "10.0.0.6"])
    found = Discovery(["https://replicas:8443"], names).resolve()
    assert found == {"https://10.0.0.5:8443": "https://replicas:8443", "https://10.0.0.6:8443": "https://replicas:8443"}
    assert [tls_server_name(url, target) for url, target in found.items()] == ["replicas", "replicas"]


def test_an_https_address_is_checked_against_itself() -> None:
    assert tls_server_name("https://10.0.0.5:8443", "https://10.0.0.5:8443") is None
    assert tls_server_name("http://10.0.0.5:8000", "http://replicas:8000") is None


def test_names_are_resolved_again_on_every_poll() -> None:
    names = Names(replicas=["10.0.0.5"])
    discovery = Discovery(["http://replicas:8000"], names)
    assert list(discovery.resolve()) == ["http://10.0.0.5:8000"]
    names.names["replicas"] = ["10.0.0.6", "10.0.0.7"]
    assert list(discovery.resolve()) == ["http://10.0.0.6:8000", "http://10.0.0.7:8000"]


def test_of_a_dual_stack_name_only_the_ipv4_addresses_are_replicas(tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text("fd00::5 replicas\n10.0.0.5 replicas\n10.0.0.5 replicas\nfd00::7 v6only\n")
    resolve = HostsFile(hosts, Names())
    assert resolve("replicas") == ["10.0.0.5"]
    assert list(Discovery(["http://v6only:8000"], resolve).resolve()) == ["http://[fd00::7]:8000"]


def test_a_name_that_does_not_exist_stands_for_no_replica() -> None:
    names = Names(replicas=["10.0.0.5"])
    discovery = Discovery(["http://replicas:8000"], names)
    discovery.resolve()
    del names.names["replicas"]  # a headless Service whose pods are all gone: NXDOMAIN
    assert discovery.resolve() == {}
    assert discovery.targets[0].error is None


def test_a_failing_resolver_keeps_the_last_addresses_and_says_why() -> None:
    names = Names(replicas=["10.0.0.5"])
    discovery = Discovery(["http://replicas:8000"], names)
    discovery.resolve()
    names.names["replicas"] = socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
    assert list(discovery.resolve()) == ["http://10.0.0.5:8000"]
    assert discovery.targets[0].to_json()["error"] == "cannot resolve replicas: Temporary failure in name resolution"


def test_a_hosts_file_is_read_again_on_every_call_and_passes_other_names_on(tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text("# replicas\n127.0.0.2 replicas other  # a comment\n")
    resolve = HostsFile(hosts, Names(elsewhere=["10.1.1.1"]))
    assert resolve("REPLICAS") == ["127.0.0.2"]
    hosts.write_text("127.0.0.2 replicas\n127.0.0.3 replicas\n")
    assert resolve("replicas") == ["127.0.0.2", "127.0.0.3"]
    assert resolve("elsewhere") == ["10.1.1.1"]


def test_the_system_resolver_answers_an_address_with_itself() -> None:
    assert system_resolver("127.0.0.2") == ["127.0.0.2"]


@pytest.mark.parametrize("url", ["127.0.0.1:8000", "ftp://replicas", "http://:8000", "http://replicas:port"])
def test_a_server_that_is_not_an_http_url_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match="--server"):
        parse_target(url)


def _monitor(tmp_path: Path, names: Names, clock: Clock) -> Monitor:
    # Nothing listens on these addresses: every poll fails fast, which is all the tracking needs.
    settings = MonitorSettings(
        servers=["http://replicas:9"], db_path=str(tmp_path / "m.db"), horizon_s=600.0, timeout_s=2.0
    )
    return Monitor(settings, clock=clock, resolver=names)


async def test_replicas_that_appear_are_added_and_those_that_vanish_are_marked_stale(tmp_path: Path) -> None:
    names, clock = Names(replicas=["127.0.0.2"]), Clock()
    monitor = _monitor(tmp_path, names, clock)
    try:
        assert monitor.servers == {}  # a name is only known once resolved
        await monitor.poll()
        names.names["replicas"] = ["127.0.0.3"]
        clock.t += 30
        await monitor.poll()
        gone, new = monitor.servers["http://127.0.0.2:9"], monitor.servers["http://127.0.0.3:9"]
    finally:
        monitor.close()
    assert (gone.stale, gone.up, gone.vanished_at) == (True, False, clock.t)
    assert gone.last_error == "no longer among the addresses of http://replicas:9"
    assert new.target == "http://replicas:9" and new.vanished_at is None and new.failures == 1


async def test_a_vanished_replica_is_no_longer_polled_and_is_forgotten_after_the_horizon(tmp_path: Path) -> None:
    names, clock = Names(replicas=["127.0.0.2"]), Clock()
    monitor = _monitor(tmp_path, names, clock)
    try:
        await monitor.poll()
        names.names["replicas"] = []
        await monitor.poll()
        failures = monitor.servers["http://127.0.0.2:9"].failures
        clock.t += 600
        await monitor.poll()
        kept = dict(monitor.servers)
        clock.t += 1
        await monitor.poll()
    finally:
        monitor.close()
    assert kept["http://127.0.0.2:9"].failures == failures == 1  # polled once, before it vanished
    assert monitor.servers == {}


async def test_a_vanished_replica_is_not_exported_as_down(tmp_path: Path) -> None:
    # A scaled-down pod must not fire ServeReplicaUnreachable (deploy/prometheus/alerts.yaml) for the horizon.
    names, clock = Names(replicas=["127.0.0.2", "127.0.0.3"]), Clock()
    monitor = _monitor(tmp_path, names, clock)
    try:
        await monitor.poll()
        names.names["replicas"] = ["127.0.0.3"]
        await monitor.poll()
        registry = CollectorRegistry()
        registry.register(DriftCollector(monitor))
        exported = registry.get_sample_value("serve_monitor_server_up", {"server": "http://127.0.0.2:9"})
        remaining = registry.get_sample_value("serve_monitor_server_up", {"server": "http://127.0.0.3:9"})
    finally:
        monitor.close()
    assert (exported, remaining) == (None, 0.0)


async def test_a_replica_that_comes_back_before_the_horizon_is_polled_again(tmp_path: Path) -> None:
    names, clock = Names(replicas=["127.0.0.2"]), Clock()
    monitor = _monitor(tmp_path, names, clock)
    try:
        await monitor.poll()
        names.names["replicas"] = []
        await monitor.poll()
        names.names["replicas"] = ["127.0.0.2"]
        clock.t += 60
        await monitor.poll()
        status = monitor.servers["http://127.0.0.2:9"]
    finally:
        monitor.close()
    assert status.vanished_at is None and status.failures == 2


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


async def test_api_servers_lists_each_replica_with_its_name_and_what_each_name_resolved_to(tmp_path: Path) -> None:
    names, clock = Names(replicas=["127.0.0.2", "127.0.0.3"]), Clock()
    monitor = _monitor(tmp_path, names, clock)
    server = None
    try:
        await monitor.poll()
        server = AppServer(create_monitor_app(monitor))
        body = await asyncio.to_thread(_get_json, server.url + "/api/servers")
    finally:
        if server is not None:
            server.close()
        monitor.close()
    assert [(s["url"], s["target"], s["up"]) for s in body["servers"]] == [
        ("http://127.0.0.2:9", "http://replicas:9", False),
        ("http://127.0.0.3:9", "http://replicas:9", False),
    ]
    assert body["discovery"] == [
        {"server": "http://replicas:9", "replicas": ["http://127.0.0.2:9", "http://127.0.0.3:9"], "error": None}
    ]
