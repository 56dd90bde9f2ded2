"""The drift report's plots: drawn once per evaluation, right after it, never by the page request (issue 17)."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from serve.monitor.app import create_monitor_app
from serve.monitor.model_report import FeatureEntry
from serve.monitor.model_report_json import History
from serve.monitor.plots import PlotCache
from serve.monitor.report import _thin, feature_plot
from tests.fixtures.monitoring import MODEL, Predictor, feed, monitor_with_history, sample


class CountingDraw:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, feature: FeatureEntry, history: History) -> bytes:
        self.calls += 1
        return feature_plot(feature, history)


async def get_page(app: Any) -> str:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://monitor") as client:
        response = await client.get("/")
    assert response.status_code == 200
    return response.text


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Any, Path]]:
    """A monitor that has evaluated a few windows of the churn model, its replica still serving."""
    root = tmp_path_factory.mktemp("plots")
    monitor, replica = asyncio.run(monitor_with_history(root, windows=4))
    try:
        yield monitor, replica, root
    finally:
        replica.close()
        monitor.close()


async def test_plots_are_drawn_after_each_evaluation_without_a_page_request(
    evaluated: tuple[Any, Any, Path],
) -> None:
    monitor, replica, root = evaluated
    draw = CountingDraw()
    plots = PlotCache(monitor, draw)
    create_monitor_app(monitor, plots)
    assert await asyncio.to_thread(plots.wait_drawn, 60.0)
    features = len(next(iter(monitor.latest.values())).features)
    assert draw.calls == features  # the evaluation made before the app existed
    feed(replica.rec, sample(np.random.default_rng(1), 500), Predictor(root / MODEL))
    monitor.clock.t += 60.0
    await monitor.cycle()
    assert await asyncio.to_thread(plots.wait_drawn, 60.0)
    assert draw.calls == 2 * features


async def test_asking_for_the_page_again_draws_nothing(evaluated: tuple[Any, Any, Path]) -> None:
    monitor, _, _ = evaluated
    draw = CountingDraw()
    app = create_monitor_app(monitor, PlotCache(monitor, draw))
    first = await get_page(app)
    drawn = draw.calls
    second = await get_page(app)
    assert draw.calls == drawn > 0
    assert first.count("data:image/png;base64,") == second.count("data:image/png;base64,") == drawn


async def test_a_page_asked_for_while_a_newer_evaluation_is_drawn_shows_the_last_drawn_one_at_once(
    evaluated: tuple[Any, Any, Path],
) -> None:
    monitor, replica, root = evaluated
    blocked, release = threading.Event(), threading.Event()

    def draw(feature: FeatureEntry, history: History) -> bytes:
        if blocked.is_set():
            release.wait(60)  # the newer evaluation's drawing, held until the page has been answered
        return feature_plot(feature, history)

    app = create_monitor_app(monitor, PlotCache(monitor, draw))
    before = dt.datetime.fromtimestamp(monitor.last_evaluation).strftime("%Y-%m-%d %H:%M:%S")
    assert f"evaluated {before}" in await get_page(app)
    blocked.set()
    feed(replica.rec, sample(np.random.default_rng(2), 500), Predictor(root / MODEL))
    monitor.clock.t += 60.0
    await monitor.cycle()
    try:
        page = await get_page(app)  # answered while the drawing waits for `release`
    finally:
        release.set()
    assert f"evaluated {before}" in page and "a newer evaluation is being drawn" in page
    assert page.count("data:image/png;base64,") > 0


def test_a_long_history_is_thinned_for_the_plot_without_losing_its_spike() -> None:
    points = [(float(t), 0.5) for t in range(10_000)]
    points[7_777] = (7_777.0, 9.0)
    thinned = _thin(points)
    assert len(thinned) <= 300
    assert (7_777.0, 9.0) in thinned
    assert [t for t, _ in thinned] == sorted(t for t, _ in thinned)
