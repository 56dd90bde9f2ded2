"""The JSON documents of a model version's report (model_report.py writes and reads them), key for key.

Keys marked NotRequired are left out where the report has nothing for them: a measure that does not decide
has no state or noise, a model version without a usable baseline has ``"window": null`` and none of the
model-level findings, and states appear once the evaluation is recorded.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NotRequired, TypedDict

from serve.monitor import verdicts as vd
from serve.monitor.baselines import BaselineJson
from serve.monitor.collector import InstanceSeen, RestartJson
from serve.monitor.evaluate import FeatureWindow, PlotView
from serve.monitor.performance import PerformanceReportJson


class MeasureJson(TypedDict):
    value: float | None
    threshold: float | None
    drifted: bool | None
    state: NotRequired[str]
    noise: NotRequired[vd.NoiseJson]
    rows_needed: NotRequired[int | None]  # present while undecided
    min_samples: NotRequired[int]
    error_bound: NotRequired[float | None]


class RateJson(TypedDict):
    baseline: float | None
    live: float | None


History = Mapping[str, list[tuple[float, float | None, float | None]]]  # measure → [(ts, value, threshold)]


class FeatureJson(TypedDict):
    name: str
    role: str
    tensor: str
    kind: str
    samples: int
    min_samples: int | None
    drifted: bool | None
    verdict: str | None
    rows_needed: int | None
    detectable: vd.DetectableShift | None
    window: FeatureWindow | None
    score: float | None
    measures: dict[str, MeasureJson]
    rates: dict[str, RateJson]
    problem: str | None
    view: NotRequired[PlotView | None]  # not in --once output
    state: NotRequired[str]  # once recorded; not in --once output
    history: NotRequired[History]  # /api/drift?history=…


class SloJson(TypedDict):
    requests: float
    error_rate: float | None
    p99_latency_s: float | None
    p99_latency_threshold_s: float | None
    error_rate_threshold: float | None
    min_requests: int
    latency_violated: bool | None
    errors_violated: bool | None
    latency_state: NotRequired[str]  # once recorded, where the SLO has a latency threshold
    errors_state: NotRequired[str]


class ReplicaJson(InstanceSeen):
    stale: bool  # its server is not answering, or gone


class ReportWindow(TypedDict):
    start: float | None
    end: float | None
    rows: int
    horizon_s: float
    include_open: bool
    windows: int
    pool_s: float
    pool_windows: int


class ModelReportJson(TypedDict):
    model: str
    version: str
    evaluated_at: float
    baseline: BaselineJson
    problems: list[str]
    features: list[FeatureJson]
    slo: SloJson
    window: ReportWindow | None  # None: no usable baseline, and none of the keys below
    replicas: NotRequired[list[ReplicaJson]]  # not in --once output
    restarts: NotRequired[list[RestartJson]]
    drifted_share: NotRequired[float | None]
    dataset_drift: NotRequired[bool | None]
    prediction_drift: NotRequired[bool | None]
    drift_share_threshold: NotRequired[float]
    persistence: NotRequired[int]
    drifted_state_share: NotRequired[float | None]  # once recorded
    prediction_drift_state: NotRequired[str | None]
    dataset_state: NotRequired[str]
    performance: NotRequired[PerformanceReportJson]  # --once, where the version's servers join labels
