"""``/metrics`` of the monitor (MONITOR.md §4.5): drift gauges with bounded labels only.

Labels are model, version, input (the feature name), role and method — never bin indices
or category values, which stay in the JSON API and the SQLite history. The series are
built at scrape time from the latest evaluation, so a feature or model that disappears
loses its series instead of freezing at its last value. Per model at most
``max_series_features`` features are exported (those with the highest drift score);
``serve_drift_inputs_truncated`` says how many were left out.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from serve.monitor.service import Monitor

MV = ["model", "version"]
FEATURE = [*MV, "input"]
MEASURE = [*FEATURE, "role", "method"]


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
            "1 if the statistic crossed its threshold in the last evaluation (no series below the minimum window)",
            labels=MEASURE,
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
                min_samples.add_metric(fl, f["min_samples"])
                state.add_metric([*fl, f["role"]], 1.0 if f.get("state") == "drifted" else 0.0)
                for method, r in f["measures"].items():
                    if r["value"] is None:
                        continue
                    labels = [*fl, f["role"], method]
                    score.add_metric(labels, r["value"])
                    if r["threshold"] is not None:
                        threshold.add_metric(labels, r["threshold"])
                    if r["drifted"] is not None:
                        detected.add_metric(labels, float(r["drifted"]))
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
            state,
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
