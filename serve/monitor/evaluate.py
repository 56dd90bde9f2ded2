"""One evaluation: a model version's merged live blocks against its baseline, feature by feature."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np

from serve.monitor import measures as ms
from serve.monitor.policy import NullContext, Policy, categorical_context, min_window, numeric_context
from serve.stats.baseline import Baseline, BaselineFeature
from serve.stats.blocks import Block, merge_blocks


@dataclass(slots=True)
class MeasureResult:
    value: float
    threshold: float | None  # None: computed, not deciding
    drifted: bool | None  # None: not deciding, or too few values for this measure
    min_samples: int | None = None
    bound: float | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "value": _round(self.value),
            "threshold": self.threshold,
            "drifted": self.drifted,
        }
        if self.min_samples is not None:
            out["min_samples"] = self.min_samples
        if self.bound is not None:
            out["error_bound"] = _round(self.bound)
        return out


@dataclass(slots=True)
class FeatureResult:
    name: str
    role: str
    tensor: str
    kind: str
    samples: int
    min_samples: int
    measures: dict[str, MeasureResult] = field(default_factory=dict)
    verdict: bool | None = None
    score: float = 0.0  # max over deciding measures of value / threshold: the sort key
    rates: dict[str, tuple[float, float]] = field(default_factory=dict)
    view: dict[str, Any] | None = None  # baseline vs live shares for the plot
    problem: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "role": self.role, "tensor": self.tensor, "kind": self.kind,
            "samples": self.samples, "min_samples": self.min_samples, "drifted": self.verdict,
            "score": _round(self.score), "measures": {k: m.to_json() for k, m in self.measures.items()},
            "rates": {k: {"baseline": _round(b), "live": _round(v)} for k, (b, v) in self.rates.items()},
            "problem": self.problem,
        }  # fmt: skip


def _round(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return float(f"{value:.6g}")


def merge_windows(windows: Iterable[Mapping[str, Any]]) -> tuple[dict[str, Block], int]:
    """Feature blocks summed over windows, and the rows they cover."""
    merged: dict[str, Block] = {}
    rows = 0
    for w in windows:
        rows += int(w.get("rows", 0))
        for name, block in w["features"].items():
            merged[name] = merge_blocks(merged[name], block) if name in merged else block
    return merged, rows


@lru_cache(maxsize=4096)
def _min_windows(kind: str, ctx: NullContext, items: tuple[tuple[str, float], ...], alpha: float) -> tuple[int, ...]:
    return tuple(min_window(m, t, ctx, alpha) for m, t in items)


def _context(feature: BaselineFeature) -> NullContext | None:
    stats = feature.stats or {}
    if feature.kind == "numeric" and "bins" in stats and feature.edges is not None:
        counts = np.asarray(stats["bins"]["counts"], dtype=np.float64)
        n = int(stats["n"])
        std = math.sqrt(stats["m2"] / (n - 1)) if n > 1 else 0.0
        return numeric_context(counts, feature.edges, std, stats)
    if feature.kind == "categorical" and "counts" in stats:
        return categorical_context(stats)
    return None


def evaluate_feature(feature: BaselineFeature, live: Block | None, policy: Policy) -> FeatureResult:
    stats = feature.stats or {}
    thresholds = policy.for_feature(feature.name, feature.kind)
    result = FeatureResult(feature.name, feature.role, feature.tensor, feature.kind, 0, policy.min_samples)
    ctx = _context(feature)
    if ctx is None:
        result.problem = "the baseline has no counts for this feature" if feature.kind != "bytes" else None
        return result
    if live is None:
        result.problem = "no live statistics for this feature"
        return result
    result.samples = int(live["count"])
    if feature.kind == "numeric":
        if "bins" not in live:
            result.problem = "the server bins this feature without the baseline's edges (baseline not loaded there)"
            return result
        if len(live["bins"]["counts"]) != len(stats["bins"]["counts"]):
            result.problem = "the server's bins differ from the baseline's (another baseline?)"
            return result
        p, q = ms.Binned.from_block(stats), ms.Binned.from_block(live)
        raw = ms.numeric_measures(p, q, feature.edges if feature.edges is not None else np.empty(0))
        sub_n = {"missing_rate": q.count, "out_of_range": q.n + q.infinite}
        default_n = q.n
    else:
        p_c, q_c = ms.Categories.from_block(stats), ms.Categories.from_block(live)
        raw = ms.categorical_measures(p_c, q_c)
        sub_n = {"missing_rate": q_c.count}
        default_n = q_c.count - q_c.missing
    result.rates = raw.pop("rates", {})
    view = raw.pop("view", None)
    bounds = {"ks": raw.pop("ks_bound", None), "wasserstein": raw.pop("wasserstein_bound", None)}
    raw.pop("mean_shift", None)
    deciding = [(m, t) for m, t in thresholds.items() if m in raw]
    alpha = policy.false_alarm / max(1, len(deciding))
    mins = dict(zip([m for m, _ in deciding], _min_windows(feature.kind, ctx, tuple(deciding), alpha), strict=True))
    result.min_samples = max([policy.min_samples, *mins.values()])
    enough = result.samples >= result.min_samples
    any_drift = False
    for name, value in raw.items():
        threshold = thresholds.get(name)
        m = MeasureResult(float(value), threshold, None, mins.get(name), bounds.get(name))
        if threshold is not None:
            eligible = enough and sub_n.get(name, default_n) >= mins[name]
            if eligible:
                m.drifted = abs(value) >= threshold  # a change either way (e.g. fewer missing values) counts
                any_drift = any_drift or m.drifted
            result.score = max(result.score, abs(value) / threshold if threshold > 0 else 0.0)
        result.measures[name] = m
    result.verdict = any_drift if enough else None
    if view is not None:
        result.view = _plot_view(feature, view)
    return result


def _plot_view(feature: BaselineFeature, view: Mapping[str, Any]) -> dict[str, Any]:
    if feature.kind == "categorical":
        labels = [str(v) for v in (feature.vocabulary or ())] + ["(other)"]
        return {"labels": labels, "baseline": view["baseline"].tolist(), "live": view["live"].tolist()}
    groups: np.ndarray = view["groups"]
    edges = feature.edges if feature.edges is not None else np.empty(0)
    labels = []
    for g in range(int(groups.max()) + 1):
        members = np.flatnonzero(groups == g)
        lo = members[0] - 1  # fine bin b spans [edges[b-1], edges[b])
        labels.append(f"{edges[lo]:.3g}" if 0 <= lo < edges.size else "-inf")
    return {"labels": labels, "baseline": view["baseline"].tolist(), "live": view["live"].tolist()}


@dataclass(slots=True)
class ModelEvaluation:
    model: str
    version: str
    features: list[FeatureResult]
    rows: int
    window_start: float | None
    window_end: float | None
    drifted_share: float | None = None
    dataset_verdict: bool | None = None
    prediction_verdict: bool | None = None
    problems: list[str] = field(default_factory=list)


def evaluate_model(
    model: str,
    version: str,
    baseline: Baseline,
    windows: Sequence[Mapping[str, Any]],
    policy: Policy,
) -> ModelEvaluation:
    """Every baseline feature against the sum of ``windows``; features sorted by drift score."""
    live, rows = merge_windows(windows)
    starts = [w["start"] for w in windows]
    ends = [w["end"] for w in windows]
    results = [evaluate_feature(f, live.get(f.name), policy) for f in baseline.features if f.kind != "bytes"]
    results.sort(key=lambda r: (-r.score, r.role, r.name))
    ev = ModelEvaluation(model, version, results, rows, min(starts) if starts else None, max(ends) if ends else None)
    inputs = [r for r in results if r.role == "input" and r.verdict is not None]
    if inputs:
        ev.drifted_share = sum(1 for r in inputs if r.verdict) / len(inputs)
        ev.dataset_verdict = ev.drifted_share >= policy.drift_share
    outputs = [r for r in results if r.role == "output" and r.verdict is not None]
    if outputs:
        ev.prediction_verdict = any(r.verdict for r in outputs)
    return ev
