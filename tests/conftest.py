"""Shared pytest fixtures; the helpers they use live in tests/fixtures/."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from serve.demo import write_demo_repository
from tests.fixtures.local_servers import ThreadServer, serving_in_thread

SLOW_TESTS = os.environ.get("SERVE_SLOW_TESTS") == "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Soak and load tests marked ``slow`` run only with SERVE_SLOW_TESTS=1; CI runs their short versions."""
    if SLOW_TESTS:
        return
    skip = pytest.mark.skip(reason="slow: set SERVE_SLOW_TESTS=1 to run it")
    for item in items:
        if item.get_closest_marker("slow") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def demo_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("demo-repo")
    write_demo_repository(root)
    return root


@pytest.fixture(scope="module")
def demo_server(demo_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadServer]:
    # The real server on loopback ports, in a thread of the test process: its clients need sockets, not a process.
    with serving_in_thread(demo_repository, tmp_path_factory.mktemp("demo-server")) as server:
        yield server


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    # pytest-xdist writes "bringing up nodes..." and a blank line at -q when the terminal is not a tty (CI); the
    # output is the tests' results and nothing else. Before xdist starts its workers, so it has nothing to say.
    dist = session.config.pluginmanager.get_plugin("dsession")
    if dist is not None and session.config.option.verbose < 0:
        dist.terminal = None
        reporter = session.config.pluginmanager.get_plugin("terminaldistreporter")
        if reporter is not None:
            session.config.pluginmanager.unregister(reporter)
