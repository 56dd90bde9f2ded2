"""``/metrics`` of the monitor (MONITOR.md §4.5): drift gauges with bounded labels only.

Labels are model, version, input (the feature name), role and method — never bin indices
or category values, which stay in the JSON API and the SQLite history. The series are
built at scrape time from the latest evaluation, so a feature or model that disappears
loses its series instead of freezing at its last value. Per model at most
``max_series_features`` features are exported (those with the highest drift score);
``serve_drift_inputs_truncated`` says how many were left out.

Verdicts are a state set: ``serve_drift_verdict{…,verdict="drifted|stable|undecided"}`` is 1
for the feature's verdict in the last evaluation and 0 for the two others, so a rule can
ask for ``verdict="drifted"`` and a dashboard can count undecided features.
``serve_drift_rows_needed`` is 0 for a decided feature, +Inf when no window size would do
with this baseline.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from serve.monitor.model_report import FeatureEntry, MeasureEntry, ModelReport
from serve.monitor.performance import PerformanceReportJson

if TYPE_CHECKING:
    from serve.monitor.service import Monitor

MV = ("model", "version")
FEATURE = (*MV, "input")
MEASURE = (*FEATURE, "role", "method")
VERDICTS = ("drifted", "stable", "undecided")


@dataclass(frozen=True, slots=True)
class Family:
    """One exported metric family: its name, help and labels; built afresh at every scrape."""

    name: str
    help: str
    labels: tuple[str, ...]
    counter: bool = False

    def new(self) -> GaugeMetricFamily | CounterMetricFamily:
        kind = CounterMetricFamily if self.counter else GaugeMetricFamily
        return kind(self.name, self.help, labels=list(self.labels))


# In the order they are exposed.
FAMILIES = (
    Family("serve_drift_score", "Drift statistic of one input/output of a model version over the evaluation window",
           MEASURE),
    Family("serve_drift_threshold", "Threshold of the drift statistic", MEASURE),
    Family("serve_drift_detected",
           "1 if the measure judged drift in the last evaluation, 0 if it judged stable (no series: undecided)",
           MEASURE),
    Family("serve_drift_noise_ceiling",
           "Largest value the measure takes without drift at this window and baseline size (1 - alpha/m quantile)",
           MEASURE),
    Family("serve_drift_state", "1 while the feature is in the drifted state (after persistence), else 0",
           (*FEATURE, "role")),
    Family("serve_drift_verdict",
           "1 for the feature's verdict in the last evaluation (drifted, stable or undecided), 0 for the others",
           (*FEATURE, "role", "verdict")),
    Family("serve_drift_rows_needed",
           "More values an undecided feature needs for a verdict (0 when decided, +Inf: not with this baseline)",
           FEATURE),
    Family("serve_drift_detectable_shift",
           "Smallest mean shift (baseline standard deviations; categorical: share) the window detects in ~95 % of "
           "windows", FEATURE),
    Family("serve_drift_window_seconds",
           "Time span of the values judged (longer than the horizon when an undecided feature pooled older windows)",
           FEATURE),
    Family("serve_drift_window_samples", "Live values in the evaluation window", FEATURE),
    Family("serve_drift_min_samples", "Values needed for a verdict (sample-size-aware minimum)", FEATURE),
    Family("serve_drifted_inputs_ratio", "Share of input features drifted in the last evaluation", MV),
    Family("serve_prediction_drift_detected", "1 if an output (prediction) feature drifted in the last evaluation",
           MV),
    Family("serve_input_missing_ratio", "Live share of missing values", FEATURE),
    Family("serve_input_unseen_category_ratio", "Live share of categories outside the training vocabulary", FEATURE),
    Family("serve_input_out_of_range_ratio", "Live share of values outside the training range", FEATURE),
    Family("serve_drift_last_evaluation_timestamp_seconds", "Unix time of the last evaluation of the model version",
           MV),
    Family("serve_baseline_info", "The baseline a model version is compared with", (*MV, "baseline_id", "status")),
    Family("serve_drift_inputs_truncated",
           "Features left out of these series (only the top ones by score are exported)", MV),
    Family("serve_slo_latency_p99_seconds", "p99 latency of successful requests over the horizon, all replicas", MV),
    Family("serve_slo_error_ratio", "Share of failed requests over the horizon", MV),
    Family("serve_model_performance",
           "A model version's performance over the horizon: realized from joined labels, estimated from its output "
           "statistics and the baseline's calibration, or the baseline's held-out value", (*MV, "metric", "source")),
    Family("serve_label_coverage_ratio", "Share of the horizon's predicted rows that have a joined label", MV),
    Family("serve_labelled_rows", "Predicted rows of the horizon with a joined label", MV),
    Family("serve_accuracy_drop_detected",
           "1 if accuracy (realized, else estimated) fell below the held-out accuracy by more than the threshold "
           "(a regressor: MAE rose), 0 if not; no series while there is not enough to judge", MV),
    Family("serve_performance_divergence_detected",
           "1 if realized and estimated accuracy differ by more than the threshold (concept drift), 0 if not", MV),
    Family("serve_monitor_server_up", "1 if the last poll of the server succeeded", ("server",)),
    Family("serve_monitor_alerts", "Alerts by outcome", ("outcome",), counter=True),
)  # fmt: skip

# A feature's live rates (the report's "rates") and the family each is exported as.
RATES = (
    ("missing", "serve_input_missing_ratio"),
    ("unseen", "serve_input_unseen_category_ratio"),
    ("out_of_range", "serve_input_out_of_range_ratio"),
)


class Series:
    """The families of one scrape, by name."""

    def __init__(self) -> None:
        self.families = {family.name: family.new() for family in FAMILIES}

    def add(self, name: str, labels: Sequence[str], value: float) -> None:
        self.families[name].add_metric(list(labels), value)


class DriftCollector(Collector):
    def __init__(self, monitor: Monitor) -> None:
        self.monitor = monitor

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        m = self.monitor
        series = Series()
        for (model, version), report in sorted(m.latest.items()):
            _add_model(series, [model, version], report, m.settings.max_series_features)
        for performance in m.performance.values():
            _add_performance(series, [performance["model"], performance["version"]], performance)
        for s in m.servers.values():
            if s.vanished_at is None:  # a replica gone from its DNS name was scaled away, not unreachable
                series.add("serve_monitor_server_up", [s.url], 1.0 if s.up else 0.0)
        c = m.alerter.counters
        for outcome, value in (
            ("emitted", c.emitted), ("delivered", c.delivered), ("failed", c.failed), ("suppressed", c.suppressed)
        ):  # fmt: skip
            series.add("serve_monitor_alerts", [outcome], value)
        yield from series.families.values()


def _add_model(series: Series, mv: list[str], report: ModelReport, limit: int) -> None:
    base = report.baseline
    series.add("serve_baseline_info", [*mv, f"sha256:{base['sha256'] or ''}", str(base["status"])], 1)
    series.add("serve_drift_last_evaluation_timestamp_seconds", mv, float(report.evaluated_at or 0))
    findings = report.findings
    if findings is not None and findings.drifted_share is not None:
        series.add("serve_drifted_inputs_ratio", mv, findings.drifted_share)
    if findings is not None and findings.prediction_drift is not None:
        series.add("serve_prediction_drift_detected", mv, float(findings.prediction_drift))
    if report.slo.p99_latency_s is not None:
        series.add("serve_slo_latency_p99_seconds", mv, report.slo.p99_latency_s)
    if report.slo.error_rate is not None:
        series.add("serve_slo_error_ratio", mv, report.slo.error_rate)
    features = report.features
    series.add("serve_drift_inputs_truncated", mv, max(0, len(features) - limit))
    for f in features[:limit]:  # already sorted by score
        _add_feature(series, [*mv, f.name], f)


def _add_feature(series: Series, fl: list[str], f: FeatureEntry) -> None:
    series.add("serve_drift_window_samples", fl, f.samples)
    if f.min_samples is not None:
        series.add("serve_drift_min_samples", fl, f.min_samples)
    series.add("serve_drift_state", [*fl, f.role], 1.0 if f.state == "drifted" else 0.0)
    if f.verdict is not None:  # None: nothing judged (the feature has a problem)
        for v in VERDICTS:
            series.add("serve_drift_verdict", [*fl, f.role, v], 1.0 if v == f.verdict else 0.0)
        needed = f.rows_needed if f.verdict == "undecided" else 0
        series.add("serve_drift_rows_needed", fl, math.inf if needed is None else float(needed))
    if f.detectable:
        series.add("serve_drift_detectable_shift", fl, f.detectable["shift"])
    window = f.window
    if window is not None and window["start"] is not None and window["end"] is not None:
        series.add("serve_drift_window_seconds", fl, window["end"] - window["start"])
    for method, m in f.measures.items():
        _add_measure(series, [*fl, f.role, method], m)
    for rate, name in RATES:
        if rate in f.rates:
            series.add(name, fl, f.rates[rate]["live"] or 0.0)


def _add_measure(series: Series, labels: list[str], m: MeasureEntry) -> None:
    if m.value is None:
        return
    series.add("serve_drift_score", labels, m.value)
    if m.threshold is not None:
        series.add("serve_drift_threshold", labels, m.threshold)
    if m.drifted is not None:
        series.add("serve_drift_detected", labels, float(m.drifted))
    if m.noise is not None and m.noise["ceiling"] is not None:
        series.add("serve_drift_noise_ceiling", labels, m.noise["ceiling"])


PERFORMANCE_METRICS = ("accuracy", "f1", "auc", "log_loss", "mae", "rmse", "bias")


def _add_performance(series: Series, mv: list[str], report: PerformanceReportJson) -> None:
    sources: tuple[tuple[str, Mapping[str, object] | None], ...] = (
        ("realized", report["realized"]), ("estimated", report["estimated"]), ("baseline", report["baseline"])
    )  # fmt: skip
    for source, values in sources:
        for metric in PERFORMANCE_METRICS:
            value = values.get(metric) if values is not None else None
            if isinstance(value, int | float):
                series.add("serve_model_performance", [*mv, metric, source], float(value))
    if report["label_coverage"] is not None:
        series.add("serve_label_coverage_ratio", mv, report["label_coverage"])
    realized = report["realized"]
    series.add("serve_labelled_rows", mv, float(realized.get("rows", 0)) if realized is not None else 0.0)
    verdicts = report["verdicts"]
    if verdicts["accuracy_drop"] is not None:
        series.add("serve_accuracy_drop_detected", mv, float(verdicts["accuracy_drop"]))
    if verdicts["divergence"] is not None:
        series.add("serve_performance_divergence_detected", mv, float(verdicts["divergence"]))
