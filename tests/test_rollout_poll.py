"""Poll mode follows each model's rollout.yaml: an edited file changes routing on the next poll without
reloading the model, an invalid one leaves the plan in force, a removed one ends the rollout. The poller
is driven by hand (``poll()``) as in test_hot_reload.py; one test uses the server's own poller."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from serve.repository.poller import RepositoryPoller
from serve.rollout.plan_file import FILE_NAME
from tests.fixtures.inprocess import InProcess, in_process
from tests.fixtures.rollouts import MODEL, infer_body, write_rollout_model

pytestmark = pytest.mark.asyncio(loop_scope="function")

ALL_TO_2 = "primary: 1\ncandidates: [{version: 2, percent: 100}]\n"
ALL_TO_3 = "primary: 1\ncandidates: [{version: 3, percent: 100}]\n"


@pytest_asyncio.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[InProcess, RepositoryPoller, Path]]:
    directory = write_rollout_model(tmp_path / "models")
    async with in_process(tmp_path / "models", model_control_mode="poll") as server:
        poller = RepositoryPoller(
            server.service.repository, interval_s=3600, followers={FILE_NAME: server.service.rollouts.reload}
        )
        poller.mark_loaded()
        yield server, poller, directory


async def answered_by(server: InProcess) -> str:
    response = await server.http.post(f"/v2/models/{MODEL}/infer", content=infer_body())
    assert response.status_code == 200, response.text
    return str(response.json()["model_version"])


def load_ids(server: InProcess) -> list[int]:
    return [v.key.load_id for v in server.service.repository.ready_versions(MODEL)]


async def test_a_new_rollout_yaml_changes_routing_on_the_next_poll_without_a_reload(
    served: tuple[InProcess, RepositoryPoller, Path],
) -> None:
    server, poller, directory = served
    loaded = load_ids(server)
    assert await answered_by(server) == "3"
    (directory / FILE_NAME).write_text(ALL_TO_2)
    assert await poller.poll() == []  # nothing was (re)loaded ...
    assert await answered_by(server) == "2"  # ... and yet the rollout is in force
    assert load_ids(server) == loaded


async def test_an_edited_rollout_yaml_replaces_the_plan(served: tuple[InProcess, RepositoryPoller, Path]) -> None:
    server, poller, directory = served
    (directory / FILE_NAME).write_text(ALL_TO_2)
    await poller.poll()
    (directory / FILE_NAME).write_text(ALL_TO_3 + "# edited\n")
    await poller.poll()
    assert await answered_by(server) == "3"
    plan = server.service.rollouts.plan(MODEL)
    assert plan is not None and plan.spec.candidates[0].version == 3


async def test_an_invalid_rollout_yaml_leaves_the_plan_in_force(
    served: tuple[InProcess, RepositoryPoller, Path], caplog: pytest.LogCaptureFixture
) -> None:
    server, poller, directory = served
    (directory / FILE_NAME).write_text(ALL_TO_2)
    await poller.poll()
    (directory / FILE_NAME).write_text("primary: 1\ncandidates: [{version: 2, percent: 900}]\n")
    with caplog.at_level("ERROR"):
        await poller.poll()
    assert await answered_by(server) == "2"
    assert any("must be a percent between 0 and 100" in r.getMessage() for r in caplog.records)


async def test_a_removed_rollout_yaml_ends_the_rollout(served: tuple[InProcess, RepositoryPoller, Path]) -> None:
    server, poller, directory = served
    (directory / FILE_NAME).write_text(ALL_TO_2)
    await poller.poll()
    (directory / FILE_NAME).unlink()
    await poller.poll()
    assert server.service.rollouts.plan(MODEL) is None
    assert await answered_by(server) == "3"


async def test_a_rollout_set_through_the_api_does_not_reload_the_model(
    served: tuple[InProcess, RepositoryPoller, Path],
) -> None:
    server, poller, _ = served
    loaded = load_ids(server)
    response = await server.http.put(f"/v2/models/{MODEL}/rollout", content=b'{"primary": 2}')
    assert response.status_code == 200, response.text
    assert await poller.poll() == [] and await poller.poll() == []
    assert load_ids(server) == loaded and await answered_by(server) == "2"


async def test_the_servers_own_poller_follows_the_file(tmp_path: Path) -> None:
    directory = write_rollout_model(tmp_path / "models")
    async with in_process(tmp_path / "models", model_control_mode="poll", repository_poll_secs=0.05) as server:
        (directory / FILE_NAME).write_text(ALL_TO_2)
        for _ in range(400):  # until a poll has seen it; 20 s at most
            if server.service.rollouts.plan(MODEL) is not None:
                break
            await asyncio.sleep(0.05)
        assert await answered_by(server) == "2"
