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
from typing import Any, TypedDict

import numpy as np

from serve.drift import measures as ms
from serve.drift.calibration import NullTable
from serve.input_stats.baseline import Baseline, BaselineFeature
from serve.input_stats.blocks import Block, merge_blocks, merge_feature_blocks
from serve.monitor import verdicts as vd
from serve.monitor.policy import NullContext, Policy, categorical_context, numeric_context


class FeatureWindow(TypedDict):
    """The rows and time span a feature was judged on (pooling may reach past the horizon)."""

    start: float | None
    end: float | None
    windows: int
    rows: int
    pooled: bool


class PlotView(TypedDict):
    """Baseline against live shares per plotted group (20 quantile groups, or the categories)."""

    labels: list[str]
    baseline: list[float]
    live: list[float]


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
    detectable: vd.DetectableShift | None = None
    window: FeatureWindow | None = None
    score: float = 0.0  # max over deciding measures of value / threshold: the sort key
    rates: dict[str, tuple[float, float]] = field(default_factory=dict)  # (baseline, live)
    view: PlotView | None = None
    problem: str | None = None

    @property
    def verdict(self) -> bool | None:
        """True drifted, False stable, None undecided: what the persistent state tracker is fed."""
        return None if self.state in (None, vd.UNDECIDED) else self.state == vd.DRIFTED


def merge_windows(windows: Iterable[Mapping[str, Any]]) -> tuple[dict[str, Block], int]:
    """Feature blocks summed over windows, and the rows they cover.

    Windows that list the same features merge in one pass (each kind's group reads every window's blocks, merges
    and writes once: 60 windows of 21 features in ~17 ms against ~150 ms pair by pair); windows of a model
    whose features changed merge group by group."""
    alike: dict[frozenset[str], list[Mapping[str, Block]]] = {}
    rows = 0
    for w in windows:
        rows += int(w.get("rows", 0))
        alike.setdefault(frozenset(w["features"]), []).append(w["features"])
    merged: dict[str, Block] = {}
    for sources in alike.values():
        for name, block in merge_feature_blocks(sources).items():
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


@dataclass(slots=True)
class _Comparison:
    """A feature's measures on its live block, before any verdict."""

    values: dict[str, float]
    thresholds: dict[str, float]  # the deciding measures
    sizes: dict[str, int]  # live values behind a measure, where not ``size``
    size: int  # live values behind the other measures
    bounds: dict[str, float | None]
    rates: dict[str, tuple[float, float]]
    view: Mapping[str, Any] | None


def evaluate_feature(
    feature: BaselineFeature, live: Block | None, policy: Policy, *, alpha: float | None = None
) -> FeatureResult:
    """One feature against its baseline; ``alpha`` is its false-alarm budget (default ``policy.false_alarm``)."""
    result = FeatureResult(feature.name, feature.role, feature.tensor, feature.kind, 0, policy.min_samples)
    model = noise_model(feature)
    if model is None:
        result.problem = "the baseline has no counts for this feature" if feature.kind != "bytes" else None
        return result
    if live is None:
        result.problem = "no live statistics for this feature"
        return result
    result.samples = int(live["count"])
    result.problem = _bins_problem(feature, live)
    if result.problem is not None:
        return result
    comparison = _compare(feature, live, policy.for_feature(feature.name, feature.kind))
    result.rates = comparison.rates
    budget = policy.false_alarm if alpha is None else alpha
    level = 1.0 - budget / max(1, len(comparison.thresholds))
    _judge(result, comparison, model, policy, level)
    result.detectable = vd.detectable_shift(feature.kind, comparison.thresholds, model, comparison.size, level)
    if comparison.view is not None:
        result.view = _plot_view(feature, comparison.view)
    return result


def _bins_problem(feature: BaselineFeature, live: Block) -> str | None:
    """Why a numeric feature's live bins cannot be compared with the baseline's (None: they can)."""
    if feature.kind != "numeric":
        return None
    if "bins" not in live:
        return "the server bins this feature without the baseline's edges (baseline not loaded there)"
    if len(live["bins"]["counts"]) != len((feature.stats or {})["bins"]["counts"]):
        return "the server's bins differ from the baseline's (another baseline?)"
    return None


def _compare(feature: BaselineFeature, live: Block, thresholds: dict[str, float]) -> _Comparison:
    stats = feature.stats or {}
    if feature.kind == "numeric":
        p, q = ms.Binned.from_block(stats), ms.Binned.from_block(live)
        raw = ms.numeric_measures(p, q, feature.edges if feature.edges is not None else np.empty(0))
        if p.std == 0:
            # Constant in training: W1 has no σ to be measured in (a single other value would score in the
            # hundreds), so it is shown, not deciding; KS and out_of_range judge the share of changed values.
            thresholds.pop("wasserstein", None)
        sizes = {"missing_rate": q.count, "out_of_range": q.n + q.infinite}
        size = q.n
    else:
        p_c, q_c = ms.Categories.from_block(stats), ms.Categories.from_block(live)
        raw = ms.categorical_measures(p_c, q_c)
        sizes = {"missing_rate": q_c.count}
        size = q_c.count - q_c.missing
    rates = raw.pop("rates", {})
    view = raw.pop("view", None)
    bounds = {"ks": raw.pop("ks_bound", None), "wasserstein": raw.pop("wasserstein_bound", None)}
    raw.pop("mean_shift", None)
    deciding = {m: t for m, t in thresholds.items() if m in raw}
    return _Comparison(raw, deciding, sizes, size, bounds, rates, view)


def _judge(result: FeatureResult, comparison: _Comparison, model: vd.NoiseModel, policy: Policy, level: float) -> None:
    """Each measure's verdict (against its threshold and no-drift noise), then the feature's."""
    enough = result.samples >= policy.min_samples
    states: dict[str, str] = {}
    leanings: dict[str, tuple[bool, int | None]] = {}
    stable_at: list[int | None] = []
    for name, value in comparison.values.items():
        threshold = comparison.thresholds.get(name)
        m = MeasureResult(float(value), threshold, bound=comparison.bounds.get(name))
        if threshold is not None:
            n = int(comparison.sizes.get(name, comparison.size))
            leaning = _judge_measure(m, threshold, model, name, n, level, policy.min_samples, enough)
            if leaning is not None:
                leanings[name] = leaning
            stable_at.append(m.min_samples)
            states[name] = str(m.state)
            result.score = max(result.score, abs(value) / threshold if threshold > 0 else 0.0)
        result.measures[name] = m
    reachable = [s for s in stable_at if s is not None]
    result.min_samples = max([policy.min_samples, *reachable]) if len(reachable) == len(stable_at) else None
    result.state = vd.combine(states)
    if result.state == vd.UNDECIDED:
        window = vd.rows_for_feature(leanings)
        result.rows_needed = None if window is None else max(1, window - comparison.size)


def _judge_measure(
    m: MeasureResult,
    threshold: float,
    model: vd.NoiseModel,
    name: str,
    n: int,
    level: float,
    min_samples: int,
    enough: bool,
) -> tuple[bool, int | None] | None:
    """Set one deciding measure's noise, verdict and rows needed; its leaning when undecided."""
    m.noise = model.at(name, n, level)
    m.min_samples = vd.stable_from(threshold, model, name, level)
    m.state = vd.decide(m.value, threshold, m.noise) if enough else vd.UNDECIDED
    if m.state != vd.UNDECIDED:
        return None
    lean, window = vd.window_for_verdict(m.value, threshold, m.noise, model, name, n)
    if not enough:
        window = max(window or 0, min_samples) if window is not None else None
    m.rows_needed = None if window is None else max(1, window - n)
    return lean, window


def _plot_view(feature: BaselineFeature, view: Mapping[str, Any]) -> PlotView:
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
        olders = [w["features"][feature.name] for w in step if feature.name in w["features"]]
        if olders:
            # One pass over the look's windows, not one merge per window (merge_windows).
            pooled = [block, *olders] if block is not None else olders
            block = (
                merge_feature_blocks([{feature.name: b} for b in pooled])[feature.name]
                if len(pooled) > 1
                else pooled[0]
            )
        for w in step:
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
