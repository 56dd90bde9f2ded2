"""How long the monitor's drift report page (``GET /``) takes, for a model with many features and a full history.

A monitor's history store is filled with ``--days`` of evaluations every ``--interval`` seconds for a model of
``--features`` features (every measure of every feature, as ``Monitor.record`` writes them), its latest
evaluation is a real one (``evaluate_model`` on a live window, the report built as ``Monitor`` builds it), and
the page is then asked for through the monitor's own app:

* **after an evaluation**: the first request once the monitor has evaluated again and drawn that evaluation's
  plots, as it does right after each evaluation (before issue 17: drawn by this request);
* **again**: a second request for the same evaluation;
* **during drawing**: a request that arrives while the plots of a new evaluation are still being drawn (it is
  shown the evaluation before, drawn, and told a newer one is on its way);
* **drawing (background)**: how long the monitor takes to draw one evaluation's plots, off the request path.

``python -m bench.report_render`` (defaults: 30 features, 7 days every 30 s; about 3.6 M history rows,
which take minutes to write). Needs the monitor extra (matplotlib).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from serve.input_stats.baseline import Baseline, build_baseline_features, make_baseline_document
from serve.input_stats.blocks import NumericSpec
from serve.monitor.app import create_monitor_app
from serve.monitor.baselines import BaselineJson
from serve.monitor.config import MonitorSettings
from serve.monitor.evaluate import evaluate_model
from serve.monitor.model_report import Findings, ModelReport, build_report, slo_status
from serve.monitor.plots import PlotCache
from serve.monitor.service import Monitor
from serve.monitor.slo import SloFigures
from serve.monitor.store import HistoryRow
from serve.types import TensorSpec

MODEL, VERSION = "wide", "1"


def make_baseline(names: Sequence[str], rng: np.random.Generator) -> Baseline:
    train = _rows(rng, 20_000, len(names), shift=0.0)
    spec = TensorSpec("x", "FP64", (len(names),))
    features, tensors = build_baseline_features({"x": train}, [spec], feature_names={"x": list(names)})
    return Baseline.from_dict(make_baseline_document({"name": MODEL, "version": VERSION}, features, tensors))


def _rows(rng: np.random.Generator, n: int, width: int, shift: float) -> np.ndarray:
    """Columns of several shapes (normal, lognormal, uniform, discrete), the first third shifted by ``shift`` σ."""
    columns = []
    for j in range(width):
        kind = j % 4
        if kind == 0:
            c = rng.normal(0.0, 1.0, n)
        elif kind == 1:
            c = rng.lognormal(0.0, 0.5, n)
        elif kind == 2:
            c = rng.uniform(0.0, 1.0, n)
        else:
            c = rng.poisson(3.0, n).astype(np.float64)
        if j < width // 3:
            c = c + shift * float(np.std(c))
        columns.append(c)
    return np.stack(columns, axis=1)


def live_window(baseline: Baseline, names: Sequence[str], rows: np.ndarray, start: float, end: float) -> dict[str, Any]:
    by_name = {f.name: f for f in baseline.features}
    group = NumericSpec(list(names), [by_name[n].edges for n in names]).new_group()
    group.update(np.ascontiguousarray(rows.T))
    blocks = group.to_json()
    return {"features": dict(zip(names, blocks, strict=True)), "rows": len(rows), "start": start, "end": end}


def latest_report(monitor: Monitor, baseline: Baseline, names: Sequence[str], now: float) -> ModelReport:
    """An evaluation of a live window as ``Monitor`` reports it (what the page shows)."""
    rng = np.random.default_rng(1)
    window = live_window(baseline, names, _rows(rng, 2_000, len(names), shift=0.5), now - 60.0, now)
    policy = monitor.settings.policy_for(MODEL)
    ev = evaluate_model(MODEL, VERSION, baseline, [window], policy)
    findings = Findings(
        (), (),
        {"start": ev.window_start, "end": ev.window_end, "rows": ev.rows, "horizon_s": monitor.settings.horizon_s,
         "include_open": False, "windows": 1, "pool_s": policy.pool_s, "pool_windows": 0},
        ev.drifted_share, ev.dataset_verdict, ev.prediction_verdict, policy.drift_share, policy.persistence,
    )  # fmt: skip
    slo = slo_status(SloFigures(0.0, None, None), policy.slo)
    base: BaselineJson = {"status": "ok", "source": "file", "path": "baseline.json", "sha256": None, "problems": []}
    report = build_report(MODEL, VERSION, now, base, [], slo, ev, findings)
    return report.with_states({f.name: "ok" for f in report.features}, slo, None)


def fill_history(monitor: Monitor, report: ModelReport, days: float, interval_s: float, now: float) -> int:
    """``days`` of evaluation rows every ``interval_s``: each measure of each feature, a slow random walk."""
    rng = np.random.default_rng(2)
    evaluations = int(days * 86400 / interval_s)
    times = now - interval_s * np.arange(evaluations, 0, -1)
    written = 0
    chunk = max(1, int(86400 / interval_s) // 4)  # a quarter of a day per transaction
    for f in report.features:
        for measure, m in f.measures.items():
            threshold = m.threshold
            walk = np.abs(np.cumsum(rng.normal(0.0, 0.01, evaluations)) + (threshold or 0.1) * 0.5)
            for lo in range(0, evaluations, chunk):
                rows = [
                    HistoryRow(float(t), MODEL, VERSION, f.name, f.role, measure, float(v), threshold,
                               None if threshold is None else bool(v >= threshold), 2_000, float(t) - 900.0, float(t))
                    for t, v in zip(times[lo : lo + chunk], walk[lo : lo + chunk], strict=True)
                ]  # fmt: skip
                monitor.store.add_evaluations(rows, now)
                written += len(rows)
    return written


async def get_page(client: httpx.AsyncClient) -> float:
    started = time.perf_counter()
    response = await client.get("/")
    response.raise_for_status()
    assert response.text.count("data:image/png;base64,") > 0, "the page has no plots"
    return time.perf_counter() - started


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


async def measure(monitor: Monitor, clock: Clock, report: ModelReport, repeats: int) -> dict[str, list[float]]:
    plots = PlotCache(monitor)
    app = create_monitor_app(monitor, plots)
    await asyncio.to_thread(plots.wait_drawn, 600.0)
    results: dict[str, list[float]] = {
        "after an evaluation": [], "again": [], "during drawing": [], "drawing (background)": [],
    }  # fmt: skip
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://monitor") as client:
        for _ in range(repeats):
            # A new evaluation; the page is asked for once the monitor has drawn it (it has until the next one).
            started = time.perf_counter()
            evaluate_again(monitor, clock, report)
            await asyncio.to_thread(plots.wait_drawn, 600.0)
            results["drawing (background)"].append(time.perf_counter() - started)
            results["after an evaluation"].append(await get_page(client))
            results["again"].append(await get_page(client))
            # A new evaluation, and the page asked for at once, while its plots are being drawn.
            evaluate_again(monitor, clock, report)
            results["during drawing"].append(await get_page(client))
            await asyncio.to_thread(plots.wait_drawn, 600.0)
    return results


def evaluate_again(monitor: Monitor, clock: Clock, report: ModelReport) -> None:
    """What ``Monitor.record`` leaves behind: a newer latest evaluation, and its listeners told."""
    clock.t += monitor.settings.interval_s
    monitor.latest[(MODEL, VERSION)] = replace(report, evaluated_at=clock.t)
    monitor.last_evaluation = clock.t
    for listener in monitor.evaluation_listeners:
        listener()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--features", type=int, default=30)
    parser.add_argument("--days", type=float, default=7.0)
    parser.add_argument("--interval", type=float, default=30.0, help="seconds between the history's evaluations")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    names = [f"f{i:02d}" for i in range(args.features)]
    with tempfile.TemporaryDirectory() as tmp:
        settings = MonitorSettings(servers=[], db_path=str(Path(tmp) / "monitor.db"), interval_s=args.interval)
        clock = Clock(time.time())
        now = clock.t
        monitor = Monitor(settings, clock=clock)
        try:
            baseline = make_baseline(names, np.random.default_rng(0))
            report = latest_report(monitor, baseline, names, now)
            started = time.perf_counter()
            rows = fill_history(monitor, report, args.days, args.interval, now)
            print(f"history: {rows:,} rows ({args.features} features, {args.days:g} days every {args.interval:g} s) "
                  f"written in {time.perf_counter() - started:.0f} s")  # fmt: skip
            results = asyncio.run(measure(monitor, clock, report, args.repeats))
        finally:
            monitor.close()
    drawn = min(args.features, settings.max_plot_features)
    print(f"GET / for {args.features} features ({drawn} plots), median of {args.repeats}:")
    medians = {k: statistics.median(v) for k, v in results.items()}
    for what, seconds in medians.items():
        print(f"  {what:<22} {seconds:7.3f} s   (runs: {', '.join(f'{s:.3f}' for s in results[what])})")
    print(f"  after an evaluation / again: {medians['after an evaluation'] / medians['again']:.2f}x; "
          f"during drawing / again: {medians['during drawing'] / medians['again']:.2f}x")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
