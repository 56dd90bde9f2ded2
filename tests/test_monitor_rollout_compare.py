"""The monitor compares the versions of a rollout side by side (serve/monitor/rollout_compare.py): in process,
with loopback replicas that serve two versions' statistics and the model's rollout status."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest

from serve.drift import measures as ms
from serve.input_stats.baseline import Baseline
from serve.monitor.app import create_monitor_app
from serve.monitor.config import MonitorSettings
from serve.monitor.evaluate import merge_windows
from serve.monitor.plots import PlotCache
from serve.monitor.rollout_compare import Horizon, ReplicaRollout, RolloutComparisonJson, compare_model
from serve.monitor.rollout_features import BINS, SKETCH
from serve.monitor.service import Monitor
from serve.rollout.documents import StatusDocument
from tests.fixtures.monitoring import (
    MODEL,
    Clock,
    Predictor,
    VersionsReplica,
    feed,
    recorder,
    rollout_status,
    sample,
    write_churn_baseline,
    write_model,
)

ROWS = 800


@pytest.fixture(scope="module")
def churn(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Baseline, Predictor]:
    root = tmp_path_factory.mktemp("rollout-compare")
    model_dir = write_model(root)
    path = write_churn_baseline(root, np.random.default_rng(0))
    return root, Baseline.load(path), Predictor(model_dir)


def _replica(
    churn: tuple[Path, Baseline, Predictor],
    clock: Clock,
    rollout: dict[str, Any] | None,
    *,
    binned: bool = True,
    replica: str = "r1",
) -> VersionsReplica:
    """Versions 1 (clean traffic) and 2 (age shifted by +1σ) of churn, ROWS rows each."""
    _, baseline, predict = churn
    rng = np.random.default_rng(7)
    recorders = {v: recorder(baseline if binned else None, clock, replica, version=v) for v in (1, 2)}
    feed(recorders[1], sample(rng, ROWS), predict)
    feed(recorders[2], sample(rng, ROWS, "mean"), predict)
    return VersionsReplica(recorders, rollout)


def _monitor(clock: Clock, *replicas: VersionsReplica, horizon_s: float = 180.0) -> Monitor:
    settings = MonitorSettings(servers=[r.url for r in replicas], db_path=":memory:", horizon_s=horizon_s,
                               timeout_s=5.0)  # fmt: skip
    return Monitor(settings, clock=clock)


def _compared(*replicas: VersionsReplica, clock: Clock) -> tuple[Monitor, list[RolloutComparisonJson]]:
    monitor = _monitor(clock, *replicas)
    asyncio.run(monitor.cycle(include_open=True))
    return monitor, monitor.comparisons


@pytest.fixture
def candidate(churn: tuple[Path, Baseline, Predictor]) -> Iterator[tuple[VersionsReplica, Monitor]]:
    clock = Clock()
    replica = _replica(churn, clock, rollout_status(MODEL, 1, {2: 50.0}))
    monitor, _ = _compared(replica, clock=clock)
    yield replica, monitor
    replica.close()
    monitor.close()


def _get(monitor: Monitor, path: str) -> httpx.Response:
    """``path`` from the monitor's app, in process (its plots are not drawn)."""
    app = create_monitor_app(monitor, PlotCache(monitor, lambda feature, history: b""))

    async def get() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://monitor") as client:
            return await client.get(path)

    return asyncio.run(get())


def _blocks(replica: VersionsReplica, version: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """A version's blocks summed over its windows, and its features by name, from its statistics document."""
    document = orjson.loads(replica.recorders[version].export_json(0))
    blocks, _ = merge_windows(document["windows"])
    return blocks, {f["name"]: f for f in document["features"]}


def test_a_candidate_is_compared_with_the_primary_on_the_baselines_bins_with_the_drift_measures(
    candidate: tuple[VersionsReplica, Monitor],
) -> None:
    replica, monitor = candidate
    [comparison] = monitor.comparisons
    assert (comparison["model"], comparison["primary"], comparison["version"]) == (MODEL, "1", "2")
    assert (comparison["role"], comparison["percent"]) == ("candidate", 50.0)
    primary, features = _blocks(replica, 1)
    other, _ = _blocks(replica, 2)
    for f in comparison["features"]:
        if f["kind"] != "numeric":
            continue
        p, q = ms.Binned.from_block(primary[f["name"]]), ms.Binned.from_block(other[f["name"]])
        expected = ms.numeric_measures(p, q, np.asarray(features[f["name"]]["edges"]))
        assert f["basis"] == BINS
        for measure in ("psi", "js", "ks", "wasserstein", "missing_rate", "out_of_range"):
            assert f["measures"][measure] == pytest.approx(expected[measure], rel=1e-12, abs=1e-15), measure
        assert f["samples"] == {"primary": p.n, "other": q.n}


def _fed_rows() -> tuple[np.ndarray, np.ndarray]:
    """The inputs _replica fed versions 1 and 2."""
    rng = np.random.default_rng(7)
    return sample(rng, ROWS), sample(rng, ROWS, "mean")


def test_an_input_shifted_in_the_candidate_shows_its_shift_in_the_primarys_sigma(
    candidate: tuple[VersionsReplica, Monitor],
) -> None:
    from scipy.stats import wasserstein_distance

    features = {f["name"]: f for f in candidate[1].comparisons[0]["features"]}
    primary, other = _fed_rows()
    for column, name in ((0, "age"), (3, "score")):
        p, q = primary[:, column].astype(np.float64), other[:, column].astype(np.float64)
        exact = wasserstein_distance(p, q) / p.std(ddof=1)
        assert features[name]["measures"]["wasserstein"] == pytest.approx(exact, abs=0.02), name
    assert features["age"]["measures"]["wasserstein"] > 1.0 > 0.1 > features["score"]["measures"]["wasserstein"]


def test_output_features_come_before_input_features(candidate: tuple[VersionsReplica, Monitor]) -> None:
    roles = [f["role"] for f in candidate[1].comparisons[0]["features"]]
    assert roles == sorted(roles, key=lambda r: r != "output") and roles[0] == "output" and "input" in roles


def test_a_categorical_input_is_compared_over_its_vocabulary(candidate: tuple[VersionsReplica, Monitor]) -> None:
    replica, monitor = candidate
    country = next(f for f in monitor.comparisons[0]["features"] if f["name"] == "country")
    primary, _ = _blocks(replica, 1)
    other, _ = _blocks(replica, 2)
    expected = ms.categorical_measures(
        ms.Categories.from_block(primary["country"]), ms.Categories.from_block(other["country"])
    )
    assert country["basis"] == "categories"
    assert country["measures"]["js"] == pytest.approx(expected["js"])
    assert country["view"] is not None and country["view"]["labels"][-1] == "(other)"


def test_versions_without_a_baseline_are_compared_by_their_sketches_and_the_comparison_says_so(
    churn: tuple[Path, Baseline, Predictor],
) -> None:
    from scipy.stats import ks_2samp

    clock = Clock()
    replica = _replica(churn, clock, rollout_status(MODEL, 1, {2: 50.0}), binned=False)
    try:
        monitor, [comparison] = _compared(replica, clock=clock)
        monitor.close()
    finally:
        replica.close()
    age = next(f for f in comparison["features"] if f["name"] == "x[0]")  # no baseline: no feature names
    assert age["basis"] == SKETCH and comparison["baselines"] == {"primary": None, "other": None}
    assert any("neither version bins against a baseline" in p for p in comparison["problems"])
    primary, other = _fed_rows()
    p, q = primary[:, 0].astype(np.float64), other[:, 0].astype(np.float64)
    assert abs(age["measures"]["ks"] - ks_2samp(p, q).statistic) <= age["bounds"]["ks"] + 0.02
    assert age["measures"]["mean_shift"] == pytest.approx(abs(q.mean() - p.mean()) / p.std(ddof=1), rel=1e-5)


def test_the_shadows_comparison_counts_are_summed_over_the_replicas_on_the_newest_revision(
    churn: tuple[Path, Baseline, Predictor],
) -> None:
    clock = Clock()
    counts = {"1->2": {"rows": 40, "disagreements": 4}}
    replicas = [
        _replica(churn, clock, rollout_status(MODEL, 1, shadow=(2, 100.0), revision=3, comparisons=counts), replica=r)
        for r in ("a", "b")
    ]
    replicas.append(_replica(churn, clock, rollout_status(MODEL, 1, shadow=(2, 100.0), revision=2,
                                                          comparisons=counts), replica="c"))  # fmt: skip
    try:
        monitor, [comparison] = _compared(*replicas, clock=clock)
        monitor.close()
    finally:
        for r in replicas:
            r.close()
    assert comparison["role"] == "shadow" and comparison["revision"] == 3
    assert comparison["comparisons"] == {"rows": 80, "disagreements": 8, "disagreement": 0.1, "replicas": 2}
    assert any("older revision" in p for p in comparison["problems"])


def _evaluation(version: int, role: str, at: str, verdict: str) -> dict[str, Any]:
    gate = {"name": "error_rate", "value": 0.01, "threshold": 0.02, "samples": {"primary": 300, "candidate": 290},
            "verdict": verdict, "low": 0.0, "high": 0.015}  # fmt: skip
    return {"at": at, "verdict": verdict, "gates": [gate], "version": version, "role": role, "reason": ""}


def _statuses(*documents: dict[str, Any]) -> list[ReplicaRollout]:
    typed: list[StatusDocument] = [orjson.loads(orjson.dumps(d)) for d in documents]
    return [ReplicaRollout(f"http://replica-{i}", d) for i, d in enumerate(typed)]


def test_the_gates_are_the_newest_evaluation_a_replica_made_of_that_arm() -> None:
    from serve.monitor.collector import StatsCollector

    older = _evaluation(2, "candidate", "2026-12-07T10:00:00Z", "inconclusive")
    newer = _evaluation(2, "candidate", "2026-12-07T10:00:05Z", "healthy")
    other_arm = _evaluation(3, "shadow", "2026-12-07T10:00:09Z", "failing")
    replicas = _statuses(*(rollout_status(MODEL, 1, {2: 10.0}, shadow=(3, 100.0), evaluation=e)
                           for e in (older, newer, other_arm)))  # fmt: skip
    candidate, shadow = compare_model(MODEL, replicas, StatsCollector(), Horizon(0.0, 60.0, 60.0, True))
    assert candidate["evaluation"] is not None and shadow["evaluation"] is not None
    assert (candidate["evaluation"]["verdict"], candidate["evaluation"]["source"]) == ("healthy", "http://replica-1")
    assert candidate["evaluation"]["gates"] == newer["gates"]
    assert shadow["evaluation"]["verdict"] == "failing"


def test_the_monitors_own_evaluation_wins_over_the_replicas() -> None:
    from serve.monitor.collector import StatsCollector

    replica_says = _evaluation(2, "candidate", "2026-12-07T10:00:05Z", "healthy")
    monitor_says: Any = _evaluation(2, "candidate", "2026-12-07T10:00:00Z", "failing")
    replicas = _statuses(rollout_status(MODEL, 1, {2: 10.0}, evaluation=replica_says))
    [comparison] = compare_model(MODEL, replicas, StatsCollector(), Horizon(0.0, 60.0, 60.0, True), monitor_says)
    assert comparison["evaluation"] is not None
    assert (comparison["evaluation"]["verdict"], comparison["evaluation"]["source"]) == ("failing", "monitor")


def test_a_model_without_a_rollout_has_no_comparison_and_the_api_answers_404(
    churn: tuple[Path, Baseline, Predictor],
) -> None:
    clock = Clock()
    replica = _replica(churn, clock, None)
    try:
        monitor, comparisons = _compared(replica, clock=clock)
        response = _get(monitor, f"/api/rollouts/compare?model={MODEL}")
        monitor.close()
    finally:
        replica.close()
    assert comparisons == []
    assert response.status_code == 404 and MODEL in response.json()["error"]


def test_api_rollouts_compare_answers_without_the_rollouts_flag(candidate: tuple[VersionsReplica, Monitor]) -> None:
    _, monitor = candidate
    assert monitor.rollouts is None
    body = _get(monitor, f"/api/rollouts/compare?model={MODEL}").json()
    [comparison] = body["rollouts"]
    assert comparison["version"] == "2" and comparison["features"] == monitor.comparisons[0]["features"]


def test_the_once_document_lists_the_comparisons_under_a_top_level_rollouts_key(
    candidate: tuple[VersionsReplica, Monitor],
) -> None:
    _, monitor = candidate
    document = monitor.once_document({})
    assert [(c["model"], c["primary"], c["version"]) for c in document["rollouts"]] == [(MODEL, "1", "2")]


def test_a_token_that_cannot_read_the_rollout_is_named_in_api_servers(
    churn: tuple[Path, Baseline, Predictor],
) -> None:
    clock = Clock()
    replica = _replica(churn, clock, rollout_status(MODEL, 1, {2: 50.0}))
    replica.rollout_status = 403
    try:
        monitor, comparisons = _compared(replica, clock=clock)
        servers = _get(monitor, "/api/servers").json()["servers"]
        monitor.close()
    finally:
        replica.close()
    assert comparisons == []
    assert "admin scope" in servers[0]["rollout_problems"][MODEL]


def test_a_replica_that_refused_the_rollout_is_not_asked_again_for_ten_minutes(
    churn: tuple[Path, Baseline, Predictor],
) -> None:
    """Each refusal is an audit line on the server: not one per model and poll."""
    clock = Clock()
    replica = _replica(churn, clock, rollout_status(MODEL, 1, {2: 50.0}))
    replica.rollout_status = 403
    monitor = _monitor(clock, replica)
    try:
        for _ in range(3):
            asyncio.run(monitor.cycle(include_open=True))
            clock.t += 60.0
        asked = sum(1 for path in replica.requests if path.endswith("/rollout"))
        clock.t += 600.0
        asyncio.run(monitor.cycle(include_open=True))
        asked_later = sum(1 for path in replica.requests if path.endswith("/rollout"))
    finally:
        monitor.close()
        replica.close()
    assert (asked, asked_later) == (1, 2)


def test_the_report_has_a_rollout_section_with_every_feature_and_the_two_output_distributions_plotted(
    candidate: tuple[VersionsReplica, Monitor],
) -> None:
    _, monitor = candidate
    plots = PlotCache(monitor, lambda feature, history: b"")  # the drift plots are not what is tested here
    app = create_monitor_app(monitor, plots)
    assert plots.wait_drawn(60.0)

    async def page() -> str:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://monitor") as client:
            return (await client.get("/")).text

    html = asyncio.run(page())
    section = html[html.index(f'id="rollout-{MODEL}"') :]
    assert "version 2 <small>(candidate, 50 %)</small> against primary 1" in section
    for f in monitor.comparisons[0]["features"]:
        assert f'<td class="name">{f["name"]}' in section
    assert section.count('alt="v1 and v2 shares of probabilities') == 4
    assert section.count('src="data:image/png;base64,iVBORw0KGgo') >= 4  # PNGs, drawn


def test_a_version_without_statistics_is_named_among_the_problems() -> None:
    from serve.monitor.collector import StatsCollector

    replicas = _statuses(rollout_status(MODEL, 1, {2: 10.0}))
    [comparison] = compare_model(MODEL, replicas, StatsCollector(), Horizon(0.0, 60.0, 60.0, True))
    assert comparison["features"] == []
    assert any("version 2 has sent no statistics" in p for p in comparison["problems"])


def test_the_once_text_output_lists_each_arm_and_its_measures(
    candidate: tuple[VersionsReplica, Monitor], capsys: pytest.CaptureFixture[str]
) -> None:
    from serve.monitor.command import _print_text

    _print_text(candidate[1].once_document({}))
    out = capsys.readouterr().out
    assert f"{MODEL} rollout: version 2 (candidate, 50 %) against primary 1" in out
    assert any(line.split()[:3] == ["input", "age", "bins:"] and "wasserstein" in line for line in out.splitlines())
