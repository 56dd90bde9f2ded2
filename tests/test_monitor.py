"""The monitor against loopback replicas serving real StatsRecorders: drift verdicts, merging replicas and
restarts without double counting, SQLite history across restarts, alerts, stale replicas, SLOs, --once."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from serve.baseline.builder import BaselineOptions, build_baseline
from serve.baseline.model import load_model_info
from serve.baseline.sources import open_source
from serve.cli import main
from serve.input_stats.baseline import Baseline, write_baseline
from serve.monitor.alerts import Alerter
from serve.monitor.config import MonitorSettings
from serve.monitor.model_report_json import FeatureJson, ModelReportJson
from serve.monitor.policy import Policy
from serve.monitor.service import Monitor
from serve.monitor.slo import parse_metrics, quantile
from tests.fixtures.monitoring import (
    FEATURES,
    MODEL,
    Clock,
    FakeReplica,
    Predictor,
    WebhookReceiver,
    feed,
    recorder,
    sample,
    write_model,
)

INPUT_FEATURES = set(FEATURES)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repo")
    model_dir = write_model(root)
    np.save(root / "train.npy", sample(np.random.default_rng(0), 30_000))
    info = load_model_info(root, MODEL)
    options = BaselineOptions(categorical=["x[2]"], feature_names={"x": FEATURES}, progress=False, holdout=0.3)
    write_baseline(
        build_baseline(info, [open_source(str(root / "train.npy"), info.inputs)], options),
        model_dir / "baseline.json",
    )
    return root


@pytest.fixture(scope="module")
def baseline(repo: Path) -> Baseline:
    return Baseline.load(repo / MODEL / "baseline.json")


@pytest.fixture(scope="module")
def predict(repo: Path) -> Predictor:
    return Predictor(repo / MODEL)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def replica(baseline: Baseline, clock: Clock) -> Iterator[FakeReplica]:
    rep = FakeReplica(recorder(baseline, clock))
    yield rep
    rep.close()


def _monitor(repo: Path, servers: list[str], clock: Clock, tmp_path: Path, **settings: object) -> Monitor:
    options: dict = {"horizon_s": 300.0, "timeout_s": 5.0, **settings}
    s = MonitorSettings(servers=servers, model_repository=repo, db_path=str(tmp_path / "monitor.db"), **options)
    return Monitor(s, clock=clock)


def _window(
    rep: FakeReplica,
    predict: Predictor,
    clock: Clock,
    rng: np.random.Generator,
    rows: int,
    shift: str = "none",
) -> None:
    """One 60 s window of traffic, then the clock moves on so that it is closed."""
    feed(rep.rec, sample(rng, rows, shift), predict)
    clock.t += 60.0


def _report(monitor: Monitor) -> ModelReportJson:
    (report,) = monitor.latest.values()
    return report.to_json()


def _features(monitor: Monitor) -> dict[str, FeatureJson]:
    return {f["name"]: f for f in _report(monitor)["features"]}


def _drifted_inputs(monitor: Monitor) -> set[str]:
    return {n for n, f in _features(monitor).items() if f["role"] == "input" and f["drifted"]}


async def test_no_feature_is_flagged_over_many_windows_without_drift(
    repo: Path, replica: FakeReplica, predict: Predictor, clock: Clock, tmp_path: Path
) -> None:
    monitor = _monitor(repo, [replica.url], clock, tmp_path)
    rng = np.random.default_rng(21)
    verdicts = []
    for _ in range(15):
        _window(replica, predict, clock, rng, 600)
        await monitor.cycle()
        verdicts += [f["drifted"] for f in _features(monitor).values()]
    assert sum(v is True for v in verdicts) == 0
    assert sum(v is False for v in verdicts) > 0.9 * len(verdicts)
    monitor.close()


@pytest.mark.parametrize(
    ("shift", "feature", "measure"),
    [
        ("mean", "age", "wasserstein"),
        ("scale", "income", "psi"),
        ("category", "country", "unseen"),
        ("missing", "score", "missing_rate"),
    ],
)
async def test_exactly_the_shifted_feature_is_flagged_with_the_right_measure(
    repo: Path,
    replica: FakeReplica,
    predict: Predictor,
    clock: Clock,
    tmp_path: Path,
    shift: str,
    feature: str,
    measure: str,
) -> None:
    monitor = _monitor(repo, [replica.url], clock, tmp_path)
    rng = np.random.default_rng(22)
    for _ in range(3):
        _window(replica, predict, clock, rng, 800, shift)
    await monitor.cycle()
    assert _drifted_inputs(monitor) == {feature}
    assert _features(monitor)[feature]["measures"][measure]["drifted"] is True
    monitor.close()


async def test_two_replicas_are_merged_like_one_server_that_saw_all_rows(
    repo: Path, baseline: Baseline, predict: Predictor, clock: Clock, tmp_path: Path
) -> None:
    a, b = FakeReplica(recorder(baseline, clock, "a")), FakeReplica(recorder(baseline, clock, "b"))
    union = recorder(baseline, clock, "union")
    rng = np.random.default_rng(23)
    for rows in (700, 500, 900):
        xa, xb = sample(rng, rows, "mean"), sample(rng, rows // 2)
        feed(a.rec, xa, predict)
        feed(b.rec, xb, predict)
        feed(union, np.concatenate([xa, xb]), predict)
        clock.t += 60.0
    (tmp_path / "both").mkdir()
    both = _monitor(repo, [a.url, b.url], clock, tmp_path / "both")
    await both.cycle()
    a.close()
    b.close()
    single = FakeReplica(union)
    (tmp_path / "single").mkdir()
    one = _monitor(repo, [single.url], clock, tmp_path / "single")
    await one.cycle()
    single.close()
    merged, reference = _features(both), _features(one)
    assert merged["age"]["samples"] == reference["age"]["samples"] == 700 + 350 + 500 + 250 + 900 + 450
    for name in merged:
        assert merged[name]["measures"] == reference[name]["measures"]
    both.close()
    one.close()


async def test_polling_again_adds_nothing(
    repo: Path, replica: FakeReplica, predict: Predictor, clock: Clock, tmp_path: Path
) -> None:
    monitor = _monitor(repo, [replica.url], clock, tmp_path)
    rng = np.random.default_rng(24)
    _window(replica, predict, clock, rng, 900)
    await monitor.cycle()
    first = _features(monitor)["age"]["samples"]
    await monitor.cycle()
    await monitor.cycle()
    assert _features(monitor)["age"]["samples"] == first == 900
    assert any("since=" in r and not r.endswith("since=0") for r in replica.requests)
    monitor.close()


async def test_a_server_restart_is_not_double_counted(
    repo: Path, baseline: Baseline, replica: FakeReplica, predict: Predictor, clock: Clock, tmp_path: Path
) -> None:
    monitor = _monitor(repo, [replica.url], clock, tmp_path)
    rng = np.random.default_rng(25)
    _window(replica, predict, clock, rng, 600)
    await monitor.cycle()
    replica.rec = recorder(baseline, clock, "r1")  # same replica, new process: new instance id, seq from 1
    _window(replica, predict, clock, rng, 400)
    await monitor.cycle()
    await monitor.cycle()
    report = _report(monitor)
    assert _features(monitor)["age"]["samples"] == 1000
    assert report.get("restarts") and report["restarts"][0]["replica"] == "r1"
    monitor.close()


async def test_history_and_alert_state_survive_a_monitor_restart(
    repo: Path, replica: FakeReplica, predict: Predictor, clock: Clock, tmp_path: Path
) -> None:
    rng = np.random.default_rng(26)
    first = _monitor(repo, [replica.url], clock, tmp_path, policy=Policy(thresholds={}, persistence=2))
    for _ in range(3):
        _window(replica, predict, clock, rng, 800, "mean")
        await first.cycle()
    assert _features(first)["age"]["state"] == "drifted"
    rows = first.store.count_evaluations()
    first.close()

    second = _monitor(repo, [replica.url], clock, tmp_path, policy=Policy(thresholds={}, persistence=2))
    assert second.store.count_evaluations() == rows > 0
    assert len(second.store.history(MODEL, "1", "age")["wasserstein"]) == 3
    assert second.latest[(MODEL, "1")].features  # the report has the last evaluation before any poll
    alerts_before = len(second.store.alerts())
    _window(replica, predict, clock, rng, 800, "mean")
    await second.cycle()
    assert _features(second)["age"]["state"] == "drifted"
    assert len(second.store.alerts()) == alerts_before  # still drifted: no second alert after the restart
    second.close()


async def test_history_older_than_the_retention_is_deleted(
    repo: Path, replica: FakeReplica, predict: Predictor, clock: Clock, tmp_path: Path
) -> None:
    monitor = _monitor(repo, [replica.url], clock, tmp_path, retention_s=100.0)
    rng = np.random.default_rng(27)
    _window(replica, predict, clock, rng, 800)
    await monitor.cycle()
    old = monitor.store.count_evaluations()
    clock.t += 200.0
    _window(replica, predict, clock, rng, 800)
    await monitor.cycle()
    assert monitor.store.count_evaluations() <= old + 40  # the first evaluation's rows are gone
    assert min(t for t, _, _ in monitor.store.history(MODEL, "1", "age")["psi"]) > clock.t - 100.0
    monitor.close()


async def test_webhook_receives_exactly_one_alert_per_state_change(
    repo: Path, replica: FakeReplica, predict: Predictor, clock: Clock, tmp_path: Path
) -> None:
    receiver = WebhookReceiver()
    monitor = _monitor(
        repo,
        [replica.url],
        clock,
        tmp_path,
        webhook=receiver.url,
        policy=Policy(thresholds={}, persistence=2),
        horizon_s=120.0,
    )
    rng = np.random.default_rng(28)
    for shift in ["mean"] * 5 + ["none"] * 6:
        _window(replica, predict, clock, rng, 900, shift)
        await monitor.cycle()
    await monitor.alerter.drain()
    await monitor.alerter.close()
    receiver.close()
    age = [a for a in receiver.alerts if a.get("feature") == "age"]
    assert [a["state"] for a in age] == ["firing", "resolved"]
    assert age[0]["measures"]["wasserstein"]["drifted"] is True
    by_key: dict[str, list[str]] = {}
    for a in receiver.alerts:
        by_key.setdefault(a["key"], []).append(a["state"])
    assert all(states in (["firing"], ["firing", "resolved"]) for states in by_key.values()), by_key
    assert not any(a.get("feature") in INPUT_FEATURES - {"age"} for a in receiver.alerts)
    monitor.close()


async def test_webhook_calls_beyond_the_rate_limit_are_suppressed() -> None:
    receiver = WebhookReceiver()
    alerter = Alerter(receiver.url, rate_per_minute=2)
    sent = [
        alerter.emit(
            {"kind": "dataset_drift", "model": "m", "version": "1", "key": f"k{i}", "state": "firing", "message": "m"}
        )
        for i in range(5)
    ]
    await alerter.drain()
    await alerter.close()
    receiver.close()
    assert sent == [True, True, False, False, False]
    assert len(receiver.alerts) == 2 and alerter.counters.suppressed == 3


async def test_webhook_is_retried_until_it_gives_up() -> None:
    receiver = WebhookReceiver(status=500)
    alerter = Alerter(receiver.url, retries=2, backoff_s=0.01)
    alerter.emit({"kind": "dataset_drift", "model": "m", "version": "1", "key": "k", "state": "firing", "message": "m"})
    await alerter.drain()
    await alerter.close()
    receiver.close()
    assert alerter.counters.failed == 1 and alerter.counters.delivered == 0


async def test_a_failing_replica_is_marked_stale_and_retried(
    repo: Path, baseline: Baseline, predict: Predictor, clock: Clock, tmp_path: Path
) -> None:
    a, b = FakeReplica(recorder(baseline, clock, "a")), FakeReplica(recorder(baseline, clock, "b"))
    monitor = _monitor(repo, [a.url, b.url], clock, tmp_path)
    rng = np.random.default_rng(29)
    feed(a.rec, sample(rng, 500), predict)
    feed(b.rec, sample(rng, 500), predict)
    clock.t += 60.0
    await monitor.cycle()
    b.fail = True
    feed(a.rec, sample(rng, 500), predict)
    clock.t += 60.0
    await monitor.cycle()
    status = monitor.servers[b.url]
    assert status.stale and not status.up and "503" in (status.last_error or "")
    assert _features(monitor)["age"]["samples"] == 1500  # b's earlier window still counts, a's new one too
    b.fail = False
    await monitor.cycle()
    assert not monitor.servers[b.url].stale
    a.close()
    b.close()
    monitor.close()


async def test_a_stale_baseline_is_reported_and_not_used(baseline: Baseline, clock: Clock, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write_model(repo, seed=5)  # a different model than the one the baseline was computed for
    (repo / MODEL / "baseline.json").write_bytes(orjson_dump(baseline.document))
    rep = FakeReplica(recorder(Baseline.load(repo / MODEL / "baseline.json"), clock))
    monitor = _monitor(repo, [rep.url], clock, tmp_path)
    await monitor.cycle()
    rep.close()
    report = _report(monitor)
    assert report["baseline"]["status"] == "stale"
    assert any("stale" in p for p in report["problems"]) and report["features"] == []
    monitor.close()


def orjson_dump(document: dict) -> bytes:
    import orjson

    return orjson.dumps(document)


METRICS = """
# TYPE serve_requests counter
serve_requests_total{model="churn",version="1",protocol="http",outcome="success"} 980
serve_requests_total{model="churn",version="1",protocol="http",outcome="model_error"} 20
serve_requests_total{model="churn",version="1",protocol="http",outcome="invalid_input"} 5
# TYPE serve_request_duration_seconds histogram
serve_request_duration_seconds_bucket{model="churn",version="1",protocol="http",outcome="success",le="0.01"} 900
serve_request_duration_seconds_bucket{model="churn",version="1",protocol="http",outcome="success",le="0.1"} 970
serve_request_duration_seconds_bucket{model="churn",version="1",protocol="http",outcome="success",le="1.0"} 980
serve_request_duration_seconds_bucket{model="churn",version="1",protocol="http",outcome="success",le="+Inf"} 980
serve_request_duration_seconds_count{model="churn",version="1",protocol="http",outcome="success"} 980
serve_request_duration_seconds_sum{model="churn",version="1",protocol="http",outcome="success"} 9.0
"""


def test_slo_figures_come_from_the_request_counter_and_latency_histogram() -> None:
    counters = parse_metrics(METRICS)[("churn", "1")]
    assert counters.requests == 1005 and counters.errors == 20
    p99 = quantile(counters.buckets, 0.99)
    assert p99 == pytest.approx(0.1 + 0.9 * (0.99 * 980 - 970) / 10)


def _scaled(line: str, k: int) -> str:
    if line.startswith("#") or not line.strip():
        return line
    name, value = line.rsplit(" ", 1)
    return f"{name} {float(value) * k}"


async def test_slo_violation_alerts_after_persistence(
    repo: Path, baseline: Baseline, clock: Clock, tmp_path: Path
) -> None:
    scrapes = iter(range(1, 100))

    def growing() -> str:  # counters grow by METRICS' values between scrapes
        k = next(scrapes)
        return "\n".join(_scaled(line, k) for line in METRICS.splitlines())

    rep = FakeReplica(recorder(baseline, clock), metrics=growing)
    policy = Policy(thresholds={}, persistence=2)
    monitor = _monitor(repo, [rep.url], clock, tmp_path, policy=policy)
    monitor.settings.model_overrides = {MODEL: {"slo": {"p99_latency_s": 0.05, "error_rate": 0.05}}}
    for _ in range(3):
        clock.t += 30.0
        await monitor.cycle()
    rep.close()
    slo = monitor.latest[(MODEL, "1")].to_json()["slo"]
    assert slo["requests"] == 2 * 1005 and slo["p99_latency_s"] == pytest.approx(0.118)
    assert slo["latency_violated"] is True and slo["errors_violated"] is False
    assert slo["latency_state"] == "drifted"
    assert [a["alert"]["kind"] for a in monitor.store.alerts()] == ["slo_latency"]
    monitor.close()


def test_once_prints_measures_thresholds_counts_and_verdicts_including_the_open_window(
    repo: Path,
    replica: FakeReplica,
    predict: Predictor,
    clock: Clock,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    feed(replica.rec, sample(np.random.default_rng(30), 1500, "category"), predict)  # the window is still open
    code = main(
        [
            "monitor",
            "--server",
            replica.url,
            "--model-repository",
            str(repo),
            "--once",
            "--format",
            "json",
            "--db",
            str(tmp_path / "once.db"),
        ]
    )
    assert code == 1  # drift found
    document = json.loads(capsys.readouterr().out)
    (model,) = document["models"]
    assert (model["model"], model["version"], model["window"]["include_open"]) == (MODEL, "1", True)
    features = {f["name"]: f for f in model["features"]}
    assert features["country"]["samples"] == 1500 and features["country"]["drifted"] is True
    assert features["country"]["measures"]["unseen"]["threshold"] == 0.1
    assert features["age"]["drifted"] is False
    assert {"value", "threshold", "drifted"} <= set(features["age"]["measures"]["psi"])


def test_once_exits_0_on_clean_traffic_and_writes_no_history_file_unless_asked(
    repo: Path,
    replica: FakeReplica,
    predict: Predictor,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    feed(replica.rec, sample(np.random.default_rng(32), 1500), predict)
    monkeypatch.chdir(tmp_path)
    code = main(["monitor", "--server", replica.url, "--model-repository", str(repo), "--once"])
    assert code == 0, capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []


def test_once_exits_3_when_a_model_has_no_baseline(
    replica: FakeReplica, predict: Predictor, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    feed(replica.rec, sample(np.random.default_rng(33), 200), predict)
    empty = tmp_path / "no-baselines"
    empty.mkdir()
    # the fake replica serves no baseline of its own, and this repository holds none
    code = main(["monitor", "--server", replica.url, "--model-repository", str(empty), "--once"])
    out = capsys.readouterr().out
    assert code == 3, out
    assert "not evaluated: no usable baseline" in out


def test_once_as_text_gives_the_dataset_and_prediction_verdicts_and_never_a_python_none(
    repo: Path, replica: FakeReplica, predict: Predictor, capsys: pytest.CaptureFixture[str]
) -> None:
    feed(replica.rec, sample(np.random.default_rng(34), 1500, "mean"), predict)
    code = main(["monitor", "--server", replica.url, "--model-repository", str(repo), "--once"])
    out = capsys.readouterr().out
    assert code == 1
    model_line = next(line for line in out.splitlines() if line.startswith("  dataset "))
    assert "of inputs drifted, threshold 50%" in model_line and "prediction " in model_line
    assert "None" not in out


async def test_low_traffic_is_pooled_past_the_horizon_until_a_verdict_and_the_span_is_reported(
    repo: Path, replica: FakeReplica, predict: Predictor, clock: Clock, tmp_path: Path
) -> None:
    monitor = _monitor(repo, [replica.url], clock, tmp_path, horizon_s=120.0)
    rng = np.random.default_rng(31)
    for _ in range(12):
        _window(replica, predict, clock, rng, 120)
        await monitor.cycle()
    age = _features(monitor)["age"]
    assert age["verdict"] == "stable" and age["window"]["pooled"] is True
    assert age["samples"] > 2 * 120  # more than the horizon's two windows
    assert age["window"]["end"] - age["window"]["start"] > 120.0
    window = _report(monitor)["window"]
    assert window is not None and window["rows"] == 240  # the horizon itself
    monitor.close()


async def test_without_pooling_a_small_clean_window_is_undecided_with_the_rows_still_needed(
    repo: Path, replica: FakeReplica, predict: Predictor, clock: Clock, tmp_path: Path
) -> None:
    monitor = _monitor(repo, [replica.url], clock, tmp_path, policy=Policy(thresholds={}, pool_s=0.0))
    _window(replica, predict, clock, np.random.default_rng(32), 150)
    await monitor.cycle()
    age = _features(monitor)["age"]
    assert (age["verdict"], age["drifted"]) == ("undecided", None)
    assert age["rows_needed"] > 0 and age["window"]["pooled"] is False
    assert age["detectable"]["unit"] == "σ" and age["detectable"]["shift"] > 0.2
    monitor.close()


async def test_a_large_shift_alerts_from_small_windows_and_undecided_windows_do_not_resolve_it(
    repo: Path, replica: FakeReplica, predict: Predictor, clock: Clock, tmp_path: Path
) -> None:
    policy = Policy(thresholds={}, persistence=2, pool_s=0.0)
    monitor = _monitor(repo, [replica.url], clock, tmp_path, policy=policy, horizon_s=60.0)
    rng = np.random.default_rng(33)
    for _ in range(2):
        _window(replica, predict, clock, rng, 200, "mean")  # +1σ in age: 200 rows are enough to say so
        await monitor.cycle()
    assert _features(monitor)["age"]["verdict"] == "drifted" and _features(monitor)["age"]["state"] == "drifted"
    for _ in range(3):
        _window(replica, predict, clock, rng, 120)  # clean but too few rows for "stable"
        await monitor.cycle()
        assert _features(monitor)["age"]["verdict"] == "undecided"
    assert _features(monitor)["age"]["state"] == "drifted"  # persistence counts decided verdicts only
    age_alerts = [a["state"] for a in monitor.store.alerts() if a["alert"].get("feature") == "age"]
    assert age_alerts == ["firing"]
    monitor.close()


def test_the_config_file_sets_the_model_budget_and_the_pooling_reach(tmp_path: Path) -> None:
    from serve.monitor.config import load_config_file

    path = tmp_path / "monitor.toml"
    path.write_text('model_false_alarm = 0.05\npool = "30m"\n')
    policy = load_config_file(path, MonitorSettings(servers=[])).policy_for(MODEL)
    assert (policy.model_false_alarm, policy.pool_s, policy.false_alarm) == (0.05, 1800.0, 0.01)
