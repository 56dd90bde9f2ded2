"""One evaluation: a model version's merged live blocks against its baseline, feature by feature.

Verdicts (verdicts.py) are drifted, stable or undecided. **Pooling**: a feature still
undecided over the horizon is judged again on the horizon plus older consecutive windows
(the collector holds up to ``Policy.pool_s`` beyond the horizon), looking back 2×, 4×, 8× …
the horizon's span and stopping at the first decided look. Each look is another chance of
a false alarm, so when older windows exist the feature's budget α is split: α/2 for the
horizon and α/(2K) for each of the K pooled looks. The result records the rows and the
time span it used (``window``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np

from serve.drift import measures as ms
from serve.drift.calibration import NullTable
from serve.input_stats.baseline import Baseline, BaselineFeature
from serve.input_stats.blocks import Block, merge_blocks
from serve.monitor import verdicts as vd
from serve.monitor.policy import NullContext, Policy, categorical_context, numeric_context


@dataclass(slots=True)
class MeasureResult:
    value: float
    threshold: float | None  # None: computed, not deciding
    state: str | None = None  # drifted | stable | undecided; None: not deciding
    noise: vd.Noise | None = None
    rows_needed: int | None = None  # undecided: more values until this measure decides (None: not with this baseline)
    min_samples: int | None = None  # values at which a window without drift is judged stable
    bound: float | None = None

    @property
    def drifted(self) -> bool | None:
        return None if self.state in (None, vd.UNDECIDED) else self.state == vd.DRIFTED

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "value": _round(self.value),
            "threshold": self.threshold,
            "drifted": self.drifted,
        }
        if self.state is not None:
            out["state"] = self.state
        if self.noise is not None:
            out["noise"] = self.noise.to_json()
        if self.state == vd.UNDECIDED:
            out["rows_needed"] = self.rows_needed
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
    min_samples: int | None  # values at which a window without drift is judged stable (None: never, baseline)
    measures: dict[str, MeasureResult] = field(default_factory=dict)
    state: str | None = None  # drifted | stable | undecided; None: nothing to judge (a problem, or no data)
    rows_needed: int | None = None  # undecided: values still needed (None: no window size would do)
    detectable: dict[str, Any] | None = None
    window: dict[str, Any] | None = None  # the rows and time span judged (pooling may reach past the horizon)
    score: float = 0.0  # max over deciding measures of value / threshold: the sort key
    rates: dict[str, tuple[float, float]] = field(default_factory=dict)
    view: dict[str, Any] | None = None  # baseline vs live shares for the plot
    problem: str | None = None

    @property
    def verdict(self) -> bool | None:
        """True drifted, False stable, None undecided: what the persistent state tracker is fed."""
        return None if self.state in (None, vd.UNDECIDED) else self.state == vd.DRIFTED

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "role": self.role, "tensor": self.tensor, "kind": self.kind,
            "samples": self.samples, "min_samples": self.min_samples, "drifted": self.verdict,
            "verdict": self.state, "rows_needed": self.rows_needed,
            "detectable": self.detectable, "window": self.window,
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


@lru_cache(maxsize=4096)
def noise_model(feature: BaselineFeature) -> vd.NoiseModel | None:
    """The feature's no-drift noise (cached: a baseline feature is immutable and hashed by identity)."""
    ctx = _context(feature)
    if ctx is None:
        return None
    return vd.NoiseModel(ctx, NullTable.parse(feature.null_calibration))


def evaluate_feature(
    feature: BaselineFeature, live: Block | None, policy: Policy, *, alpha: float | None = None
) -> FeatureResult:
    """One feature against its baseline; ``alpha`` is its false-alarm budget (default ``policy.false_alarm``)."""
    stats = feature.stats or {}
    thresholds = policy.for_feature(feature.name, feature.kind)
    result = FeatureResult(feature.name, feature.role, feature.tensor, feature.kind, 0, policy.min_samples)
    model = noise_model(feature)
    if model is None:
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
        if p.std == 0:
            # Constant in training: W1 has no σ to be measured in (a single other value would score in the
            # hundreds), so it is shown, not deciding; KS and out_of_range judge the share of changed values.
            thresholds.pop("wasserstein", None)
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
    deciding = {m: t for m, t in thresholds.items() if m in raw}
    budget = policy.false_alarm if alpha is None else alpha
    level = 1.0 - budget / max(1, len(deciding))
    enough = result.samples >= policy.min_samples
    states: dict[str, str] = {}
    leanings: dict[str, tuple[bool, int | None]] = {}
    stable_at: list[int | None] = []
    for name, value in raw.items():
        threshold = thresholds.get(name)
        m = MeasureResult(float(value), threshold, bound=bounds.get(name))
        if threshold is not None:
            n = int(sub_n.get(name, default_n))
            m.noise = model.at(name, n, level)
            m.min_samples = vd.stable_from(threshold, model, name, level)
            stable_at.append(m.min_samples)
            m.state = vd.decide(float(value), threshold, m.noise) if enough else vd.UNDECIDED
            if m.state == vd.UNDECIDED:
                lean, window = vd.window_for_verdict(float(value), threshold, m.noise, model, name, n)
                if not enough:
                    window = max(window or 0, policy.min_samples) if window is not None else None
                leanings[name] = (lean, window)
                m.rows_needed = None if window is None else max(1, window - n)
            states[name] = m.state
            result.score = max(result.score, abs(value) / threshold if threshold > 0 else 0.0)
        result.measures[name] = m
    reachable = [s for s in stable_at if s is not None]
    result.min_samples = max([policy.min_samples, *reachable]) if len(reachable) == len(stable_at) else None
    result.state = vd.combine(states)
    if result.state == vd.UNDECIDED:
        window = vd.rows_for_feature(leanings)
        result.rows_needed = None if window is None else max(1, window - default_n)
    result.detectable = vd.detectable_shift(feature.kind, deciding, model, default_n, level)
    if view is not None:
        result.view = _plot_view(feature, view)
    return result


def _plot_view(feature: BaselineFeature, view: Mapping[str, Any]) -> dict[str, Any]:
    if feature.kind == "categorical":
        labels = [str(v) for v in (feature.vocabulary or ())] + ["(other)"]
        return {"labels": labels, "baseline": view["baseline"].tolist(), "live": view["live"].tolist()}
    return {"labels": _group_labels(feature), "baseline": view["baseline"].tolist(), "live": view["live"].tolist()}


@lru_cache(maxsize=4096)
def _group_labels(feature: BaselineFeature) -> list[str]:
    """Lower edge of each 20-bin view group (they depend on the baseline only)."""
    counts = np.asarray((feature.stats or {})["bins"]["counts"], dtype=np.float64)
    groups = ms.quantile_groups(counts, ms.JS_BINS)
    edges = feature.edges if feature.edges is not None else np.empty(0)
    labels = []
    for g in range(int(groups.max()) + 1):
        members = np.flatnonzero(groups == g)
        lo = members[0] - 1  # fine bin b spans [edges[b-1], edges[b])
        labels.append(f"{edges[lo]:.3g}" if 0 <= lo < edges.size else "-inf")
    return labels


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
    *,
    older: Sequence[Mapping[str, Any]] = (),
) -> ModelEvaluation:
    """Every baseline feature against the sum of ``windows`` (the horizon); features sorted by drift score.

    ``older``: windows before the horizon an undecided feature may pool (module docstring).
    """
    live, rows = merge_windows(windows)
    starts = [w["start"] for w in windows]
    ends = [w["end"] for w in windows]
    start, end = (min(starts), max(ends)) if starts else (None, None)
    features = [f for f in baseline.features if f.kind != "bytes"]
    alpha = policy.feature_alpha(len(features))
    looks = _pooled_looks(windows, older) if policy.pool_s > 0 and start is not None else []
    horizon_alpha = alpha / 2 if looks else alpha
    results = []
    for f in features:
        r = evaluate_feature(f, live.get(f.name), policy, alpha=horizon_alpha)
        r.window = {"start": start, "end": end, "windows": len(windows), "rows": rows, "pooled": False}
        if r.state == vd.UNDECIDED and looks:
            r = _pool(f, live.get(f.name), r, looks, policy, alpha / (2 * len(looks)), end, len(windows), rows)
        results.append(r)
    results.sort(key=lambda r: (-r.score, r.role, r.name))
    ev = ModelEvaluation(model, version, results, rows, start, end)
    inputs = [r for r in results if r.role == "input" and r.state is not None]
    if inputs:
        drifted = sum(1 for r in inputs if r.state == vd.DRIFTED)
        undecided = sum(1 for r in inputs if r.state == vd.UNDECIDED)
        ev.drifted_share = drifted / len(inputs)
        if ev.drifted_share >= policy.drift_share:
            ev.dataset_verdict = True
        elif (drifted + undecided) / len(inputs) < policy.drift_share:
            ev.dataset_verdict = False  # even if every undecided input drifted, the share would stay below
    outputs = [r for r in results if r.role == "output" and r.state is not None]
    if outputs:
        states = {r.name: r.state for r in outputs if r.state is not None}
        combined = vd.combine(states)
        ev.prediction_verdict = None if combined == vd.UNDECIDED else combined == vd.DRIFTED
    return ev


def _pooled_looks(
    windows: Sequence[Mapping[str, Any]], older: Sequence[Mapping[str, Any]]
) -> list[list[Mapping[str, Any]]]:
    """Older windows (newest first) added by each pooled look: spans of 2×, 4×, 8× … the horizon's, then all."""
    if not windows or not older:
        return []
    start = min(w["start"] for w in windows)
    span = max(max(w["end"] for w in windows) - start, 1e-9)
    pending = sorted((w for w in older if w["start"] < start), key=lambda w: w["start"], reverse=True)
    looks: list[list[Mapping[str, Any]]] = []
    factor = 2.0
    while pending:
        reach = start - (factor - 1.0) * span
        step = [w for w in pending if w["start"] >= reach]
        if step:
            looks.append(step)
            pending = pending[len(step) :]
        factor *= 2.0
    return looks


def _pool(
    feature: BaselineFeature,
    block: Block | None,
    horizon: FeatureResult,
    looks: Sequence[Sequence[Mapping[str, Any]]],
    policy: Policy,
    alpha: float,
    end: float | None,
    windows: int,
    rows: int,
) -> FeatureResult:
    """Judge ``feature`` again with each look's older windows added, until one look decides."""
    result = horizon
    earliest = horizon.window["start"] if horizon.window else None
    for step in looks:
        for w in step:
            older = w["features"].get(feature.name)
            if older is not None:
                block = merge_blocks(block, older) if block is not None else older
            windows += 1
            rows += int(w.get("rows", 0))
            earliest = w["start"] if earliest is None else min(earliest, w["start"])
        if block is None:
            continue
        result = evaluate_feature(feature, block, policy, alpha=alpha)
        result.window = {"start": earliest, "end": end, "windows": windows, "rows": rows, "pooled": True}
        if result.problem is not None or result.state != vd.UNDECIDED:
            break
    return result
