"""Recording an evaluation: persistent states (policy.StateTracker), alerts on their changes, and history rows.

Every tracked condition has a key (``feature:<model>:<version>:<role>:<name>``, ``dataset:…``, ``slo_latency:…``,
``slo_errors:…``) and a state that changes only after ``persistence`` agreeing verdicts; a change is an alert.
The states are kept in the history store, so a restarted monitor neither forgets a drift nor alerts twice for it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

from serve.monitor.alerts import Alerter, AlertJson
from serve.monitor.evaluate import FeatureResult, ModelEvaluation
from serve.monitor.model_report import MeasureEntry, ModelOutcome, ModelReport, SloStatus
from serve.monitor.performance import PerformanceReportJson, number
from serve.monitor.policy import StateTracker
from serve.monitor.store import HistoryRow, HistoryStore


def condition_key(kind: str, model: str, version: str, *rest: str) -> str:
    return ":".join((kind, model, version, *rest))


@dataclass(frozen=True, slots=True)
class Condition:
    """A tracked condition: its key, the details its alerts carry, and their messages."""

    key: str
    details: AlertJson  # kind, model, version and what the condition is about
    firing: str
    resolved: str


class Recorder:
    def __init__(
        self, store: HistoryStore, alerter: Alerter, clock: Callable[[], float], default_persistence: int
    ) -> None:
        self.store = store
        self.alerter = alerter
        self.clock = clock
        self.default_persistence = default_persistence
        self.trackers: dict[str, StateTracker] = {
            key: StateTracker(state, streak, since) for key, (state, streak, since) in store.load_states().items()
        }

    def tracker(self, key: str) -> StateTracker:
        tracker = self.trackers.get(key)
        if tracker is None:
            tracker = self.trackers[key] = StateTracker(since=self.clock())
        return tracker

    def record_performance(self, reports: Iterable[PerformanceReportJson], now: float) -> None:
        """Accuracy drops and divergences: alerts on their state changes, like drift."""
        for report in reports:
            for condition, verdict in _performance_conditions(report):
                self.observe(condition, verdict, self.default_persistence, now)

    def observe(self, condition: Condition, verdict: bool | None, persistence: int, now: float) -> str:
        """Feed the condition's verdict; alert when its state changes. Returns the state."""
        tracker = self.tracker(condition.key)
        if tracker.observe(verdict, persistence, now):
            firing = tracker.state == "drifted"
            alert: AlertJson = {
                **condition.details, "key": condition.key, "state": "firing" if firing else "resolved", "time": now,
                "message": condition.firing if firing else condition.resolved,
            }  # fmt: skip
            sent = self.alerter.emit(alert)
            self.store.add_alert(
                now, condition.key, alert["state"], alert, None if self.alerter.webhook is None else sent
            )
        return tracker.state

    def record(self, outcome: ModelOutcome, now: float, rows: list[HistoryRow]) -> ModelReport:
        """Observe every condition of one model version; its history rows go to ``rows``. Returns the report
        with the states."""
        report, ev = outcome
        persistence = (report.findings.persistence if report.findings else 0) or self.default_persistence
        feature_states: dict[str, str] = {}
        dataset_state = None
        if ev is not None:
            feature_states = self._record_features(report, ev, persistence, now, rows)
            dataset_state = self._record_dataset(report, ev, persistence, now, rows)
        slo = self._record_slo(report, persistence, now, rows)
        return report.with_states(feature_states, slo, dataset_state)

    def save_states(self) -> None:
        """Keep every state in the store (once per evaluation, after every model version is recorded)."""
        self.store.save_states((k, t.state, t.streak, t.since) for k, t in self.trackers.items())

    def _record_features(
        self, report: ModelReport, ev: ModelEvaluation, persistence: int, now: float, rows: list[HistoryRow]
    ) -> dict[str, str]:
        model, version = report.key
        states = {}
        for f in ev.features:
            key = condition_key("feature", model, version, f.role, f.name)
            if f.samples == 0 and f.verdict is None:
                states[f.name] = self.tracker(key).state
                continue
            rows += [
                HistoryRow(now, model, version, f.name, f.role, name, m.value, m.threshold, m.drifted, f.samples,
                           ev.window_start, ev.window_end)
                for name, m in f.measures.items()
            ]  # fmt: skip
            states[f.name] = self.observe(_feature_condition(key, model, version, f), f.verdict, persistence, now)
        return states

    def _record_dataset(
        self, report: ModelReport, ev: ModelEvaluation, persistence: int, now: float, rows: list[HistoryRow]
    ) -> str:
        model, version = report.key
        share = ev.drifted_share
        threshold = report.findings.drift_share_threshold if report.findings else 0.0
        condition = Condition(
            condition_key("dataset", model, version),
            {"kind": "dataset_drift", "model": model, "version": version, "drifted_share": share,
             "threshold": threshold},
            f"{model} v{version}: {share or 0:.0%} of input features drifted (threshold {threshold:.0%})",
            f"{model} v{version}: dataset drift cleared ({share or 0:.0%} of inputs drifted)",
        )  # fmt: skip
        state = self.observe(condition, ev.dataset_verdict, persistence, now)
        if share is not None:
            rows.append(
                HistoryRow(now, model, version, "", "model", "drifted_share", share, threshold, ev.dataset_verdict,
                           ev.rows, ev.window_start, ev.window_end)
            )  # fmt: skip
        return state

    def _record_slo(self, report: ModelReport, persistence: int, now: float, rows: list[HistoryRow]) -> SloStatus:
        model, version = report.key
        slo = report.slo
        states: dict[str, str] = {}
        for what, violated, value, threshold in (
            ("latency", slo.latency_violated, slo.p99_latency_s, slo.p99_latency_threshold_s),
            ("errors", slo.errors_violated, slo.error_rate, slo.error_rate_threshold),
        ):
            if threshold is None:
                continue
            label = "p99 latency" if what == "latency" else "error rate"
            condition = Condition(
                condition_key("slo_" + what, model, version),
                {"kind": "slo_" + what, "model": model, "version": version, "value": value, "threshold": threshold},
                f"{model} v{version}: {label} {value:.4g} is over the SLO {threshold:.4g}" if value is not None else "",
                f"{model} v{version}: {label} back within the SLO {threshold:.4g}",
            )  # fmt: skip
            states[what] = self.observe(condition, violated, persistence, now)
            if value is not None:
                rows.append(
                    HistoryRow(now, model, version, "", "model", f"slo_{what}", value, threshold, violated,
                               int(slo.requests or 0), None, None)
                )  # fmt: skip
        return replace(slo, latency_state=states.get("latency"), errors_state=states.get("errors"))


def _feature_condition(key: str, model: str, version: str, f: FeatureResult) -> Condition:
    return Condition(
        key,
        {"kind": f"{f.role}_drift", "model": model, "version": version, "feature": f.name, "role": f.role,
         "samples": f.samples, "measures": {k: MeasureEntry.of(m).to_json() for k, m in f.measures.items()}},
        f"{model} v{version} {f.role} '{f.name}' drifted: {_crossed(f)} (N={f.samples})",
        f"{model} v{version} {f.role} '{f.name}' stable again (N={f.samples})",
    )  # fmt: skip


def _crossed(f: FeatureResult) -> str:
    hits = []
    for k, m in f.measures.items():
        if m.drifted and m.threshold is not None:
            noise = (
                f" and its no-drift ceiling {m.noise.ceiling:.3g}" if m.noise and m.noise.ceiling > m.threshold else ""
            )
            hits.append(f"{k} {m.value:.3g} ≥ threshold {m.threshold:.3g}{noise}")
    return ", ".join(hits) or "threshold crossed"


def _performance_conditions(report: PerformanceReportJson) -> list[tuple[Condition, bool | None]]:
    """A version's accuracy drop and its divergence of realized from estimated, as tracked conditions."""
    model, version, verdicts = report["model"], report["version"], report["verdicts"]
    regression = report["target"] is not None and report["target"]["task"] == "regression"
    metric = "mae" if regression else "accuracy"
    source = verdicts["accuracy_drop_source"] or "realized"
    judged = report["realized"] if source == "realized" else report["estimated"]
    value = number(judged, metric)
    reference = number(report["baseline"], metric)
    realized = number(report["realized"], "accuracy")
    estimated = number(report["estimated"], "accuracy")
    shown = f"{metric} {value:.4g}" if value is not None else metric
    held = f"held-out {reference:.4g}" if reference is not None else "no held-out value"
    drop = Condition(
        condition_key("accuracy_drop", model, version),
        {"kind": "accuracy_drop", "model": model, "version": version, "value": value, "source": source,
         "reference": reference, "threshold": verdicts["accuracy_drop_threshold"]},
        f"{model} v{version}: {source} {shown} against {held} (ServeAccuracyDrop)",
        f"{model} v{version}: {source} {shown} back near {held}",
    )  # fmt: skip
    gap = abs(realized - estimated) if realized is not None and estimated is not None else None
    divergence = Condition(
        condition_key("performance_divergence", model, version),
        {"kind": "performance_divergence", "model": model, "version": version, "value": realized,
         "reference": estimated, "threshold": verdicts["divergence_threshold"]},
        f"{model} v{version}: realized accuracy {realized} and estimated {estimated} differ by {gap:.3g} "
        "(concept drift: the estimate cannot see it)" if gap is not None else "",
        f"{model} v{version}: realized and estimated accuracy agree again",
    )  # fmt: skip
    return [(drop, verdicts["accuracy_drop"]), (divergence, verdicts["divergence"])]
