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
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from serve.monitor.service import Monitor

MV = ["model", "version"]
FEATURE = [*MV, "input"]
MEASURE = [*FEATURE, "role", "method"]
VERDICTS = ("drifted", "stable", "undecided")


class DriftCollector(Collector):
    def __init__(self, monitor: Monitor) -> None:
        self.monitor = monitor

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        m = self.monitor
        score = GaugeMetricFamily(
            "serve_drift_score",
            "Drift statistic of one input/output of a model version over the evaluation window",
            labels=MEASURE,
        )
        threshold = GaugeMetricFamily("serve_drift_threshold", "Threshold of the drift statistic", labels=MEASURE)
        detected = GaugeMetricFamily(
            "serve_drift_detected",
            "1 if the measure judged drift in the last evaluation, 0 if it judged stable (no series: undecided)",
            labels=MEASURE,
        )
        ceiling = GaugeMetricFamily(
            "serve_drift_noise_ceiling",
            "Largest value the measure takes without drift at this window and baseline size (1 - alpha/m quantile)",
            labels=MEASURE,
        )
        verdict = GaugeMetricFamily(
            "serve_drift_verdict",
            "1 for the feature's verdict in the last evaluation (drifted, stable or undecided), 0 for the others",
            labels=[*FEATURE, "role", "verdict"],
        )
        rows_needed = GaugeMetricFamily(
            "serve_drift_rows_needed",
            "More values an undecided feature needs for a verdict (0 when decided, +Inf: not with this baseline)",
            labels=FEATURE,
        )
        detectable = GaugeMetricFamily(
            "serve_drift_detectable_shift",
            "Smallest mean shift (baseline standard deviations; categorical: share) the window detects in ~95 % of "
            "windows",
            labels=FEATURE,
        )
        span = GaugeMetricFamily(
            "serve_drift_window_seconds",
            "Time span of the values judged (longer than the horizon when an undecided feature pooled older windows)",
            labels=FEATURE,
        )
        state = GaugeMetricFamily(
            "serve_drift_state",
            "1 while the feature is in the drifted state (after persistence), else 0",
            labels=[*FEATURE, "role"],
        )
        samples = GaugeMetricFamily(
            "serve_drift_window_samples", "Live values in the evaluation window", labels=FEATURE
        )
        min_samples = GaugeMetricFamily(
            "serve_drift_min_samples",
            "Values needed for a verdict (sample-size-aware minimum)",
            labels=FEATURE,
        )
        ratio = GaugeMetricFamily(
            "serve_drifted_inputs_ratio", "Share of input features drifted in the last evaluation", labels=MV
        )
        prediction = GaugeMetricFamily(
            "serve_prediction_drift_detected",
            "1 if an output (prediction) feature drifted in the last evaluation",
            labels=MV,
        )
        missing = GaugeMetricFamily("serve_input_missing_ratio", "Live share of missing values", labels=FEATURE)
        unseen = GaugeMetricFamily(
            "serve_input_unseen_category_ratio",
            "Live share of categories outside the training vocabulary",
            labels=FEATURE,
        )
        oor = GaugeMetricFamily(
            "serve_input_out_of_range_ratio",
            "Live share of values outside the training range",
            labels=FEATURE,
        )
        last = GaugeMetricFamily(
            "serve_drift_last_evaluation_timestamp_seconds",
            "Unix time of the last evaluation of the model version",
            labels=MV,
        )
        info = GaugeMetricFamily(
            "serve_baseline_info",
            "The baseline a model version is compared with",
            labels=[*MV, "baseline_id", "status"],
        )
        truncated = GaugeMetricFamily(
            "serve_drift_inputs_truncated",
            "Features left out of these series (only the top ones by score are exported)",
            labels=MV,
        )
        p99 = GaugeMetricFamily(
            "serve_slo_latency_p99_seconds",
            "p99 latency of successful requests over the horizon, all replicas",
            labels=MV,
        )
        errors = GaugeMetricFamily("serve_slo_error_ratio", "Share of failed requests over the horizon", labels=MV)
        up = GaugeMetricFamily(
            "serve_monitor_server_up", "1 if the last poll of the server succeeded", labels=["server"]
        )
        alerts = CounterMetricFamily("serve_monitor_alerts", "Alerts by outcome", labels=["outcome"])

        limit = m.settings.max_series_features
        for (model, version), report in sorted(m.latest.items()):
            mv = [model, version]
            base = report.get("baseline") or {}
            info.add_metric([*mv, f"sha256:{base.get('sha256') or ''}", str(base.get("status"))], 1)
            last.add_metric(mv, float(report.get("evaluated_at") or 0))
            if report.get("drifted_share") is not None:
                ratio.add_metric(mv, report["drifted_share"])
            if report.get("prediction_drift") is not None:
                prediction.add_metric(mv, float(report["prediction_drift"]))
            slo = report.get("slo") or {}
            if slo.get("p99_latency_s") is not None:
                p99.add_metric(mv, slo["p99_latency_s"])
            if slo.get("error_rate") is not None:
                errors.add_metric(mv, slo["error_rate"])
            features = report.get("features", [])
            truncated.add_metric(mv, max(0, len(features) - limit))
            for f in features[:limit]:  # already sorted by score
                fl = [*mv, f["name"]]
                samples.add_metric(fl, f["samples"])
                if f.get("min_samples") is not None:
                    min_samples.add_metric(fl, f["min_samples"])
                state.add_metric([*fl, f["role"]], 1.0 if f.get("state") == "drifted" else 0.0)
                current = f.get("verdict")  # None: nothing judged (the feature has a problem)
                if current is not None:
                    for v in VERDICTS:
                        verdict.add_metric([*fl, f["role"], v], 1.0 if v == current else 0.0)
                    needed = f.get("rows_needed") if current == "undecided" else 0
                    rows_needed.add_metric(fl, math.inf if needed is None else float(needed))
                if f.get("detectable"):
                    detectable.add_metric(fl, f["detectable"]["shift"])
                window = f.get("window") or {}
                if window.get("start") is not None and window.get("end") is not None:
                    span.add_metric(fl, window["end"] - window["start"])
                for method, r in f["measures"].items():
                    if r["value"] is None:
                        continue
                    labels = [*fl, f["role"], method]
                    score.add_metric(labels, r["value"])
                    if r["threshold"] is not None:
                        threshold.add_metric(labels, r["threshold"])
                    if r["drifted"] is not None:
                        detected.add_metric(labels, float(r["drifted"]))
                    if (r.get("noise") or {}).get("ceiling") is not None:
                        ceiling.add_metric(labels, r["noise"]["ceiling"])
                rates = f.get("rates", {})
                if "missing" in rates:
                    missing.add_metric(fl, rates["missing"]["live"] or 0.0)
                if "unseen" in rates:
                    unseen.add_metric(fl, rates["unseen"]["live"] or 0.0)
                if "out_of_range" in rates:
                    oor.add_metric(fl, rates["out_of_range"]["live"] or 0.0)
        for s in m.servers.values():
            if s.vanished_at is None:  # a replica gone from its DNS name was scaled away, not unreachable
                up.add_metric([s.url], 1.0 if s.up else 0.0)
        c = m.alerter.counters
        for outcome, value in (
            ("emitted", c.emitted),
            ("delivered", c.delivered),
            ("failed", c.failed),
            ("suppressed", c.suppressed),
        ):
            alerts.add_metric([outcome], value)
        yield from (
            score,
            threshold,
            detected,
            ceiling,
            state,
            verdict,
            rows_needed,
            detectable,
            span,
            samples,
            min_samples,
            ratio,
            prediction,
            missing,
            unseen,
            oor,
            last,
            info,
            truncated,
            p99,
            errors,
            up,
            alerts,
        )
