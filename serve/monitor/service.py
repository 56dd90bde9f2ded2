"""The monitor's cycle: poll every replica (polling.py), evaluate each model version against its baseline,
compare the versions of each rollout side by side (rollout_compare.py), record states, history and alerts
(recording.py).

The evaluation itself is numpy work and runs in a worker thread, so the monitor's own HTTP endpoints stay
responsive; recording runs on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from typing import TypedDict

from serve.monitor.alerts import Alerter
from serve.monitor.baselines import BaselineRegistry
from serve.monitor.collector import StatsCollector
from serve.monitor.config import MonitorSettings
from serve.monitor.discovery import Discovery, Resolver, TargetJson
from serve.monitor.evaluate import evaluate_model
from serve.monitor.model_report import Findings, ModelOutcome, ModelReport, build_report, slo_status
from serve.monitor.model_report_json import ModelReportJson, ReplicaJson
from serve.monitor.performance import PerformanceReportJson, evaluate_performance
from serve.monitor.polling import Poller, ServerJson, ServerStatus
from serve.monitor.recording import Recorder
from serve.monitor.rollout_compare import Horizon, ReplicaRollout, RolloutComparisonJson, compare_rollouts
from serve.monitor.rollouts import MonitorRollouts
from serve.monitor.slo import SloTracker
from serve.monitor.store import HistoryRow, HistoryStore

log = logging.getLogger("serve.monitor")

Outcomes = dict[tuple[str, str], ModelOutcome]  # (model, version) → its evaluation


class OnceDocument(TypedDict):
    """``serve monitor --once --format json``."""

    generated_at: float
    servers: list[ServerJson]
    discovery: list[TargetJson]
    models: list[ModelReportJson]  # each with its "performance" where its server joins labels
    rollouts: list[RolloutComparisonJson]  # each rollout's arms against its primary


class Monitor:
    def __init__(
        self,
        settings: MonitorSettings,
        *,
        store: HistoryStore | None = None,
        alerter: Alerter | None = None,
        registry: BaselineRegistry | None = None,
        clock: Callable[[], float] = time.time,
        resolver: Resolver | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.store = store or HistoryStore(settings.db_path, settings.retention_s)
        self.alerter = alerter or Alerter(
            settings.webhook, rate_per_minute=settings.alert_rate_per_minute, retries=settings.webhook_retries,
            timeout_s=settings.timeout_s,
        )  # fmt: skip
        self.registry = registry or BaselineRegistry(settings.model_repository, settings.baselines)
        self.collector = StatsCollector()
        self.slo = SloTracker(settings.horizon_s)
        self.poller = Poller(settings, self.collector, self.registry, self.slo, clock, resolver)
        self.recorder = Recorder(self.store, self.alerter, clock, settings.policy.persistence)
        self.latest: dict[tuple[str, str], ModelReport] = _stored_reports(self.store)
        self.last_evaluation: float | None = None
        self.evaluations = 0
        self.comparisons: list[RolloutComparisonJson] = []  # the latest cycle's rollout comparisons
        self.performance: dict[tuple[str, str], PerformanceReportJson] = {}  # the latest cycle's, by version
        self.closed = False
        # Called on the event loop after each evaluation is recorded (the report app draws its plots then).
        self.evaluation_listeners: list[Callable[[], None]] = []
        self.rollouts = (
            MonitorRollouts.polling(
                lambda: self.servers.values(),
                lambda: {model for status in self.servers.values() for model, _ in status.models},
                token=settings.token,
                timeout_s=settings.timeout_s,
            )
            if settings.rollouts
            else None
        )

    @property
    def servers(self) -> dict[str, ServerStatus]:
        return self.poller.servers

    @property
    def discovery(self) -> Discovery:
        return self.poller.discovery

    async def poll(self) -> None:
        await self.poller.poll()

    # ---------------------------------------------------------------- evaluation

    def evaluate(self, *, include_open: bool = False) -> Outcomes:
        """Evaluate every model version (blocking: numpy work)."""
        now = self.clock()
        # windows older than the horizon stay for pooling (Policy.pool_s), and at least an hour
        self.collector.forget_before(now - self.settings.horizon_s - max(3600.0, self.settings.policy.pool_s))
        return {
            (model, version): self._evaluate_model(model, version, now, include_open)
            for model, version in self.poller.model_keys()
        }

    def _evaluate_model(self, model: str, version: str, now: float, include_open: bool) -> ModelOutcome:
        entry = self.registry.get(model, version, self.collector.baseline_shas(model, version))
        baseline = entry.baseline
        policy = self.settings.policy_for(model, (baseline.document.get("thresholds") if baseline else None) or {})
        slo = slo_status(self.slo.figures(model, version), policy.slo)
        if not entry.usable or baseline is None:
            return ModelOutcome(build_report(model, version, now, entry.to_json(), entry.problems, slo), None)
        horizon_start = now - self.settings.horizon_s
        collected = self.collector.collected(
            model, version, horizon_start - policy.pool_s, include_open=include_open, baseline_sha256=baseline.sha256
        )
        recent = [w for w in collected.windows if w["end"] > horizon_start]
        older = [w for w in collected.windows if w["end"] <= horizon_start]
        ev = evaluate_model(model, version, baseline, recent, policy, older=older)
        findings = Findings(
            self._replicas(model, version), tuple(collected.restarts),
            {"start": ev.window_start, "end": ev.window_end, "rows": ev.rows, "horizon_s": self.settings.horizon_s,
             "include_open": include_open, "windows": len(recent), "pool_s": policy.pool_s,
             "pool_windows": len(older)},
            ev.drifted_share, ev.dataset_verdict, ev.prediction_verdict, policy.drift_share, policy.persistence,
        )  # fmt: skip
        problems = [*entry.problems, *collected.problems]
        return ModelOutcome(build_report(model, version, now, entry.to_json(), problems, slo, ev, findings), ev)

    def compare_rollouts(self, *, include_open: bool = False) -> list[RolloutComparisonJson]:
        """Each rollout the replicas report, its arms against its primary over the horizon (blocking: numpy)."""
        now = self.clock()
        found: dict[str, list[ReplicaRollout]] = {}
        for status in self.servers.values():
            if status.up:
                for model, document in status.rollouts.items():
                    found.setdefault(model, []).append(ReplicaRollout(status.url, document))
        decided = {m: self.rollouts.driver.evaluation(m) for m in found} if self.rollouts is not None else None
        horizon = Horizon(now - self.settings.horizon_s, now, self.settings.horizon_s, include_open)
        comparisons = compare_rollouts(found, self.collector, horizon, decided)
        for c in comparisons:
            c["problems"] += [
                f"{s.url}: {s.rollout_problems[c['model']]}"
                for s in self.servers.values()
                if c["model"] in s.rollout_problems
            ]
        return comparisons

    def evaluate_performance(self) -> dict[tuple[str, str], PerformanceReportJson]:
        """Realized, estimated and held-out performance of every version whose servers join labels (blocking)."""
        now = self.clock()
        start = now - self.settings.horizon_s
        reports = {}
        for model, version in self.poller.performance.versions():
            target, windows = self.poller.performance.windows(model, version, -math.inf)  # all the servers hold
            entry = self.registry.get(model, version, self.collector.baseline_shas(model, version))
            baseline = entry.baseline if entry.usable else None
            stats = []
            if baseline is not None:  # the output's confidence bins of each window, for the estimate
                collected = self.collector.collected(
                    model, version, -math.inf, include_open=True, baseline_sha256=baseline.sha256
                )
                stats = collected.windows
            held_out = baseline.document.get("performance") if baseline is not None else None
            reports[(model, version)] = evaluate_performance(
                model, version, target, windows, stats, held_out, self.settings.performance, start
            )
        return reports

    def _evaluate_all(
        self, include_open: bool
    ) -> tuple[Outcomes, list[RolloutComparisonJson], dict[tuple[str, str], PerformanceReportJson]]:
        return (
            self.evaluate(include_open=include_open),
            self.compare_rollouts(include_open=include_open),
            self.evaluate_performance(),
        )

    def _replicas(self, model: str, version: str) -> tuple[ReplicaJson, ...]:
        servers = self.servers
        return tuple(
            {**i, "stale": servers[i["source"]].stale if i["source"] in servers else True}
            for i in self.collector.instances(model, version)
        )

    # ---------------------------------------------------------------- recording

    def record(self, outcomes: Outcomes) -> Outcomes:
        """States, history rows and alerts for one evaluation (call on the event loop); the outcomes with the
        reports that carry the states."""
        now = self.clock()
        rows: list[HistoryRow] = []
        recorded: Outcomes = {}
        for key, outcome in outcomes.items():
            report = self.recorder.record(outcome, now, rows)
            recorded[key] = ModelOutcome(report, outcome.evaluation)
            self.latest[key] = report
            self.store.save_latest(report.model, report.version, now, report.to_json())
        self.store.add_evaluations(rows, now)
        self.recorder.save_states()
        self.last_evaluation = now
        self.evaluations += 1
        for listener in self.evaluation_listeners:
            listener()
        return recorded

    # ---------------------------------------------------------------- cycles

    async def cycle(self, *, include_open: bool = False) -> Outcomes:
        await self.poll()
        outcomes, self.comparisons, performance = await asyncio.to_thread(self._evaluate_all, include_open)
        self.performance = performance
        self.recorder.record_performance(performance.values(), self.clock())
        return self.record(outcomes)

    async def run_forever(self, stop: asyncio.Event) -> None:
        if self.rollouts is not None:  # its own, shorter clock: rollouts judge every few seconds
            rollouts = asyncio.get_running_loop().create_task(self.rollouts.run_forever(stop))
        try:
            await self._poll_forever(stop)
        finally:
            if self.rollouts is not None:
                await rollouts

    async def _poll_forever(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            started = time.monotonic()
            try:
                await self.cycle()
            except Exception:  # one bad cycle must not end the monitor
                log.exception("monitor cycle failed")
            remaining = self.settings.interval_s - (time.monotonic() - started)
            try:
                await asyncio.wait_for(stop.wait(), timeout=max(0.0, remaining))
            except TimeoutError:
                pass

    def once_document(self, outcomes: Outcomes) -> OnceDocument:
        """``serve monitor --once --format json``: the per-evaluation verdicts, no persistence applied."""
        return {
            "generated_at": self.clock(),
            "servers": [s.to_json() for s in self.servers.values()],
            "discovery": [t.to_json() for t in self.discovery.targets],
            "models": [
                self._with_performance(key, outcome.report.once_json()) for key, outcome in sorted(outcomes.items())
            ],
            "rollouts": self.comparisons,
        }

    def _with_performance(self, key: tuple[str, str], report: ModelReportJson) -> ModelReportJson:
        performance = self.performance.get(key)
        if performance is not None:
            report["performance"] = performance
        return report

    def close(self) -> None:
        self.closed = True
        self.store.close()


def _stored_reports(store: HistoryStore) -> dict[tuple[str, str], ModelReport]:
    """The last report of every model version the store kept, for the report page right after a restart."""
    reports = {}
    for (model, version), (_, payload) in store.load_latest().items():
        try:
            reports[(model, version)] = ModelReport.from_json(payload)
        except (KeyError, TypeError, AttributeError) as exc:  # written by an older monitor: the next one replaces it
            log.warning("the stored report of %s version %s is not read (%r); shown after the next evaluation",
                        model, version, exc)  # fmt: skip
    return reports
