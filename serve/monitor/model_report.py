"""The report of one model version's evaluation: typed, built in one place, written out by ``to_json``.

``build_report`` makes it from the evaluation (or from a baseline that could not be used);
``Recorder`` gives it its alert states with ``with_states`` (a new report: reports are never
changed); ``to_json`` writes the document the JSON API, ``--once``, the history store and the
alerts have always shown, key for key; ``from_json`` reads back the one the store kept, so a
restarted monitor shows its last evaluation. Values in the report are those of the document
(rounded to 6 significant digits where the document rounds them), so the HTML report and
``/metrics`` show the same numbers before and after a restart.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import NamedTuple, cast

from serve.monitor import verdicts as vd
from serve.monitor.baselines import BaselineJson
from serve.monitor.collector import RestartJson
from serve.monitor.evaluate import FeatureResult, FeatureWindow, MeasureResult, ModelEvaluation, PlotView
from serve.monitor.model_report_json import (
    FeatureJson,
    MeasureJson,
    ModelReportJson,
    RateJson,
    ReplicaJson,
    ReportWindow,
    SloJson,
)
from serve.monitor.policy import SloPolicy
from serve.monitor.slo import SloFigures


def round6(value: float | None) -> float | None:
    """6 significant digits; None for a value that is not finite (JSON has no NaN)."""
    if value is None or not math.isfinite(value):
        return None
    return float(f"{value:.6g}")


# ---------------------------------------------------------------- the report


@dataclass(frozen=True, slots=True)
class MeasureEntry:
    value: float | None
    threshold: float | None
    drifted: bool | None
    state: str | None = None  # None: not deciding (no key)
    noise: vd.NoiseJson | None = None
    rows_needed: int | None = None  # written while undecided
    min_samples: int | None = None
    # None: no bound (no key); NaN: a bound that is not finite (written as null)
    error_bound: float | None = None

    @classmethod
    def of(cls, m: MeasureResult) -> MeasureEntry:
        noise = None if m.noise is None else m.noise.to_json()
        return cls(
            round6(m.value), m.threshold, m.drifted, m.state, noise, m.rows_needed, m.min_samples, _bound(m.bound)
        )

    def to_json(self) -> MeasureJson:
        out: MeasureJson = {"value": self.value, "threshold": self.threshold, "drifted": self.drifted}
        if self.state is not None:
            out["state"] = self.state
        if self.noise is not None:
            out["noise"] = self.noise
        if self.state == vd.UNDECIDED:
            out["rows_needed"] = self.rows_needed
        if self.min_samples is not None:
            out["min_samples"] = self.min_samples
        if self.error_bound is not None:
            out["error_bound"] = round6(self.error_bound)
        return out

    @classmethod
    def from_json(cls, doc: MeasureJson) -> MeasureEntry:
        bound = None
        if "error_bound" in doc:
            written = doc["error_bound"]
            bound = math.nan if written is None else written
        return cls(
            doc["value"], doc["threshold"], doc["drifted"], doc.get("state"), doc.get("noise"),
            doc.get("rows_needed"), doc.get("min_samples"), bound,
        )  # fmt: skip


def _bound(value: float | None) -> float | None:
    if value is None:
        return None
    return round6(value) if math.isfinite(value) else math.nan


@dataclass(frozen=True, slots=True)
class FeatureEntry:
    name: str
    role: str
    tensor: str
    kind: str
    samples: int
    min_samples: int | None
    drifted: bool | None
    verdict: str | None  # drifted | stable | undecided; None: nothing judged (a problem, or no data)
    rows_needed: int | None
    detectable: vd.DetectableShift | None
    window: FeatureWindow | None
    score: float | None
    measures: Mapping[str, MeasureEntry]
    rates: Mapping[str, RateJson]
    problem: str | None
    view: PlotView | None
    state: str | None = None  # the persistent state (ok | drifted), once recorded

    @classmethod
    def of(cls, f: FeatureResult) -> FeatureEntry:
        return cls(
            f.name, f.role, f.tensor, f.kind, f.samples, f.min_samples, f.verdict, f.state, f.rows_needed,
            f.detectable, f.window, round6(f.score), {k: MeasureEntry.of(m) for k, m in f.measures.items()},
            {k: {"baseline": round6(b), "live": round6(v)} for k, (b, v) in f.rates.items()}, f.problem, f.view,
        )  # fmt: skip

    def to_json(self) -> FeatureJson:
        out: FeatureJson = {
            "name": self.name, "role": self.role, "tensor": self.tensor, "kind": self.kind,
            "samples": self.samples, "min_samples": self.min_samples, "drifted": self.drifted,
            "verdict": self.verdict, "rows_needed": self.rows_needed,
            "detectable": self.detectable, "window": self.window,
            "score": self.score, "measures": {k: m.to_json() for k, m in self.measures.items()},
            "rates": dict(self.rates), "problem": self.problem, "view": self.view,
        }  # fmt: skip
        if self.state is not None:
            out["state"] = self.state
        return out

    def once_json(self) -> FeatureJson:
        """``--once`` output: without the plot's view and the persistent state."""
        out = self.to_json()
        out.pop("view", None)
        out.pop("state", None)
        return out

    @classmethod
    def from_json(cls, doc: FeatureJson) -> FeatureEntry:
        return cls(
            doc["name"], doc["role"], doc["tensor"], doc["kind"], doc["samples"], doc["min_samples"],
            doc["drifted"], doc["verdict"], doc["rows_needed"], doc["detectable"], doc["window"], doc["score"],
            {k: MeasureEntry.from_json(m) for k, m in doc["measures"].items()}, doc["rates"], doc["problem"],
            doc.get("view"), doc.get("state"),
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class SloStatus:
    requests: float
    error_rate: float | None
    p99_latency_s: float | None
    p99_latency_threshold_s: float | None
    error_rate_threshold: float | None
    min_requests: int
    latency_violated: bool | None
    errors_violated: bool | None
    latency_state: str | None = None  # once recorded, where there is a threshold
    errors_state: str | None = None

    def to_json(self) -> SloJson:
        out: SloJson = {
            "requests": self.requests, "error_rate": self.error_rate, "p99_latency_s": self.p99_latency_s,
            "p99_latency_threshold_s": self.p99_latency_threshold_s, "error_rate_threshold": self.error_rate_threshold,
            "min_requests": self.min_requests, "latency_violated": self.latency_violated,
            "errors_violated": self.errors_violated,
        }  # fmt: skip
        if self.latency_state is not None:
            out["latency_state"] = self.latency_state
        if self.errors_state is not None:
            out["errors_state"] = self.errors_state
        return out

    @classmethod
    def from_json(cls, doc: SloJson) -> SloStatus:
        return cls(
            doc["requests"], doc["error_rate"], doc["p99_latency_s"], doc["p99_latency_threshold_s"],
            doc["error_rate_threshold"], doc["min_requests"], doc["latency_violated"], doc["errors_violated"],
            doc.get("latency_state"), doc.get("errors_state"),
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class ModelStates:
    """The persistent states of a judged model version, once recorded."""

    drifted_state_share: float | None  # None: no input judged
    prediction_drift_state: str | None  # None: no output judged
    dataset_state: str


@dataclass(frozen=True, slots=True)
class Findings:
    """What the evaluation found for a model version whose baseline could be used."""

    replicas: tuple[ReplicaJson, ...]
    restarts: tuple[RestartJson, ...]
    window: ReportWindow
    drifted_share: float | None
    dataset_drift: bool | None
    prediction_drift: bool | None
    drift_share_threshold: float
    persistence: int
    states: ModelStates | None = None


@dataclass(frozen=True, slots=True)
class ModelReport:
    model: str
    version: str
    evaluated_at: float
    baseline: BaselineJson
    problems: tuple[str, ...]
    features: tuple[FeatureEntry, ...]  # sorted by drift score, the most drifted first
    slo: SloStatus
    findings: Findings | None  # None: no usable baseline, nothing judged

    @property
    def key(self) -> tuple[str, str]:
        return self.model, self.version

    def with_states(self, features: Mapping[str, str], slo: SloStatus, dataset_state: str | None) -> ModelReport:
        """The report with the persistent states: per feature name, the SLO's, and the dataset's (judged only)."""
        entries = tuple(replace(f, state=features.get(f.name, f.state)) for f in self.features)
        findings = self.findings
        if findings is not None and dataset_state is not None:
            findings = replace(findings, states=_model_states(entries, dataset_state))
        return replace(self, features=entries, slo=slo, findings=findings)

    def to_json(self) -> ModelReportJson:
        features = [f.to_json() for f in self.features]
        f = self.findings
        if f is None:
            return {
                "model": self.model, "version": self.version, "evaluated_at": self.evaluated_at,
                "baseline": self.baseline, "problems": list(self.problems), "features": features,
                "slo": self.slo.to_json(), "window": None,
            }  # fmt: skip
        out: ModelReportJson = {
            "model": self.model, "version": self.version, "evaluated_at": self.evaluated_at,
            "baseline": self.baseline, "problems": list(self.problems), "features": features,
            "slo": self.slo.to_json(), "replicas": list(f.replicas), "restarts": list(f.restarts), "window": f.window,
            "drifted_share": f.drifted_share, "dataset_drift": f.dataset_drift, "prediction_drift": f.prediction_drift,
            "drift_share_threshold": f.drift_share_threshold, "persistence": f.persistence,
        }  # fmt: skip
        if f.states is not None:
            out["drifted_state_share"] = f.states.drifted_state_share
            out["prediction_drift_state"] = f.states.prediction_drift_state
            out["dataset_state"] = f.states.dataset_state
        return out

    def once_json(self) -> ModelReportJson:
        """``serve monitor --once``: no replicas, and the features last, without views and states."""
        slim = cast(ModelReportJson, {k: v for k, v in self.to_json().items() if k not in ("features", "replicas")})
        slim["features"] = [f.once_json() for f in self.features]
        return slim

    @classmethod
    def from_json(cls, doc: ModelReportJson) -> ModelReport:
        return cls(
            doc["model"], doc["version"], doc["evaluated_at"], doc["baseline"], tuple(doc["problems"]),
            tuple(FeatureEntry.from_json(f) for f in doc["features"]), SloStatus.from_json(doc["slo"]),
            _findings_from_json(doc),
        )  # fmt: skip


def _model_states(features: tuple[FeatureEntry, ...], dataset_state: str) -> ModelStates:
    inputs = [f for f in features if f.role == "input"]
    drifted_inputs = sum(1 for f in inputs if f.state == "drifted")
    outputs = [f for f in features if f.role == "output"]
    prediction = ("drifted" if any(f.state == "drifted" for f in outputs) else "ok") if outputs else None
    return ModelStates(drifted_inputs / len(inputs) if inputs else None, prediction, dataset_state)


def _findings_from_json(doc: ModelReportJson) -> Findings | None:
    window = doc["window"]
    if window is None:
        return None
    states = None
    if "dataset_state" in doc:
        states = ModelStates(doc.get("drifted_state_share"), doc.get("prediction_drift_state"), doc["dataset_state"])
    return Findings(
        tuple(doc.get("replicas", [])), tuple(doc.get("restarts", [])), window, doc.get("drifted_share"),
        doc.get("dataset_drift"), doc.get("prediction_drift"), doc.get("drift_share_threshold", 0.0),
        doc.get("persistence", 0), states,
    )  # fmt: skip


# ---------------------------------------------------------------- building one


def slo_status(figures: SloFigures, slo: SloPolicy) -> SloStatus:
    """The SLO figures over the horizon against their thresholds (no verdict below ``slo.min_requests``)."""
    enough = (figures.requests or 0) >= slo.min_requests
    latency, errors = figures.p99_latency_s, figures.error_rate
    return SloStatus(
        figures.requests, errors, latency, slo.p99_latency_s, slo.error_rate, slo.min_requests,
        (latency >= slo.p99_latency_s) if enough and latency is not None and slo.p99_latency_s else None,
        (errors >= slo.error_rate) if enough and errors is not None and slo.error_rate else None,
    )  # fmt: skip


def build_report(
    model: str,
    version: str,
    now: float,
    baseline: BaselineJson,
    problems: Sequence[str],
    slo: SloStatus,
    evaluation: ModelEvaluation | None = None,
    findings: Findings | None = None,
) -> ModelReport:
    """A model version's report: without ``evaluation`` and ``findings`` when its baseline could not be used."""
    features = () if evaluation is None else tuple(FeatureEntry.of(f) for f in evaluation.features)
    return ModelReport(model, version, now, baseline, tuple(problems), features, slo, findings)


class ModelOutcome(NamedTuple):
    """One model version's evaluation: its report, and the evaluation behind it (None: nothing judged)."""

    report: ModelReport
    evaluation: ModelEvaluation | None
