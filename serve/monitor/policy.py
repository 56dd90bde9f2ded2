"""When a measure counts as drift: thresholds, the false-alarm budget, no-drift noise, persistence, model rules.

**Effect sizes decide, not p-values**: at serving volume every p-value is "significant"
(MONITOR.md §2.4). Defaults (MONITOR.md §4.4):

=============  =========  ===================================================
measure        default    decides for
=============  =========  ===================================================
psi            0.25       numeric (10-bin view); computed for categoricals
js             0.1        numeric (20-bin view, base 2); computed for categoricals
ks             0.1        numeric
wasserstein    0.2        numeric (W1 / baseline σ; not for a feature constant in training)
missing_rate   0.1        numeric and categorical (absolute change)
out_of_range   0.1        numeric (absolute change)
linf           0.1        categorical
unseen         0.1        categorical
=============  =========  ===================================================

**Three verdicts** per feature and evaluation (verdicts.py): *drifted*, *stable* or
*undecided*, from each deciding measure's value against its threshold and its no-drift
noise at the live window size N and the baseline size M.

**False-alarm budget**: ``false_alarm`` (1 %) per feature and evaluation, split evenly
across the feature's deciding measures (Bonferroni: measure level 1 − α/m). A model with
many features would still raise a false alarm somewhere in most evaluations, so
``model_false_alarm`` (1 %) caps the sum over a model version's features as well: a
feature gets min(``false_alarm``, ``model_false_alarm`` / features).

**No-drift noise**: the level-p quantile of a measure when live traffic comes from the
training distribution. From the baseline's calibration table where it has one
(calibration.py), otherwise from closed forms:

* psi: χ²ₚ(B−1)·(1/N + 1/M) (Wilson–Hilferty for χ²); js: √(that / (8 ln 2)) since
  PSI ≈ 8·JSD for small shifts; ks: c·√(1/N + 1/M) with c = √(−ln((1−p)/2)/2);
* wasserstein: (√(2/π)·J/σ + √(2 ln(1/(1−p))))·√(1/N + 1/M), J = ∫√(F(1−F))dx from the
  baseline bins (the mean of √N·W1 plus a Borell–TIS tail, conservative);
* rates: z·√(r(1−r)(1/N + 1/M)) around the baseline rate r, z the two-sided normal
  quantile (linf: Bonferroni over categories).

**Persistence**: a feature changes state only after ``persistence`` consecutive decided
evaluations agree (drifted to enter, stable to leave); *undecided* changes nothing.

**Pooling** (``pool_s``): an undecided feature may be judged again on the horizon plus
older consecutive windows (evaluate.py), with half of its budget kept for those looks.

**Model level**: dataset drift when the share of input features drifted is at least
``drift_share`` (0.5), no dataset drift when even counting every undecided input as
drifted stays below it; prediction drift when an output feature drifted.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

import numpy as np

from serve.drift.measures import JS_BINS, PSI_BINS, quantile_groups

DEFAULT_THRESHOLDS: dict[str, float] = {
    "psi": 0.25, "js": 0.1, "ks": 0.1, "wasserstein": 0.2, "missing_rate": 0.1, "out_of_range": 0.1,
    "linf": 0.1, "unseen": 0.1,
}  # fmt: skip
DECIDING: dict[str, tuple[str, ...]] = {
    "numeric": ("psi", "js", "ks", "wasserstein", "missing_rate", "out_of_range"),
    "categorical": ("linf", "unseen", "missing_rate"),
}
MEASURES = tuple(DEFAULT_THRESHOLDS)
_NORMAL = NormalDist()


@dataclass(frozen=True, slots=True)
class SloPolicy:
    p99_latency_s: float | None = None
    error_rate: float | None = None
    min_requests: int = 100


@dataclass(frozen=True, slots=True)
class Policy:
    """Resolved settings for one model (a feature may override ``thresholds``)."""

    thresholds: Mapping[str, float | None] = field(default_factory=lambda: dict(DEFAULT_THRESHOLDS))
    feature_thresholds: Mapping[str, Mapping[str, float | None]] = field(default_factory=dict)
    false_alarm: float = 0.01  # per feature and evaluation, split across its deciding measures
    model_false_alarm: float = 0.01  # per model version and evaluation, split across its features
    min_samples: int = 100  # no verdict below this many values, whatever the noise says
    persistence: int = 3
    drift_share: float = 0.5
    pool_s: float = 3600.0  # how far beyond the horizon an undecided feature may pool older windows (0: never)
    slo: SloPolicy = field(default_factory=SloPolicy)

    def feature_alpha(self, features: int) -> float:
        """The false-alarm budget of one feature of a model version with ``features`` features."""
        return min(self.false_alarm, self.model_false_alarm / max(1, features))

    def for_feature(self, name: str, kind: str) -> dict[str, float]:
        """The decision measures of a feature and their thresholds (``None`` disables a measure)."""
        merged = {**self.thresholds, **self.feature_thresholds.get(name, {})}
        deciding = DECIDING.get(kind, ())
        extra = [m for m in self.feature_thresholds.get(name, {}) if m not in deciding]
        return {m: float(value) for m in (*deciding, *extra) if (value := merged.get(m)) is not None}


# ---------------------------------------------------------------- null quantiles (closed forms)


def chi2_quantile(p: float, k: int) -> float:
    """χ² quantile by Wilson–Hilferty (within 1.5 % of the exact value for k ≥ 4 at p ≥ 0.99)."""
    if k <= 0:
        return 0.0
    z = _NORMAL.inv_cdf(p)
    h = 2.0 / (9.0 * k)
    return max(0.0, k * (1.0 - h + z * math.sqrt(h)) ** 3)


@dataclass(frozen=True, slots=True)
class NullContext:
    """What a feature's null quantiles depend on, all from the baseline."""

    m: int  # baseline values behind the binned measures
    psi_bins: int = 10
    js_bins: int = 20
    j_over_sigma: float = 1.6  # ∫√(F(1−F))dx / σ; 1.61 for a normal
    missing_rate: float = 0.0
    m_count: int = 0  # baseline values seen (missing included)
    out_of_range: float = 0.0
    max_share_var: float = 0.25  # max over categories of p(1−p)
    categories: int = 1
    unseen_rate: float = 0.0


def closed_form_quantile(measure: str, n: np.ndarray | float, ctx: NullContext, level: float) -> np.ndarray:
    """The ``level`` quantile of ``measure`` under no drift with ``n`` live values (vectorised over ``n``)."""
    n_arr = np.asarray(n, dtype=np.float64)
    if ctx.m <= 0:
        return np.full(n_arr.shape, math.inf)
    with np.errstate(divide="ignore"):
        inv = 1.0 / n_arr + 1.0 / ctx.m
        out = _closed_form(measure, n_arr, inv, ctx, level)
    return np.where(n_arr > 0, out, math.inf)


def _closed_form(measure: str, n: np.ndarray, inv: np.ndarray, ctx: NullContext, level: float) -> np.ndarray:
    alpha = 1.0 - level
    if measure == "psi":
        return chi2_quantile(level, ctx.psi_bins - 1) * inv
    if measure == "js":
        return np.asarray(np.sqrt(chi2_quantile(level, ctx.js_bins - 1) * inv / (8 * math.log(2))))
    if measure == "ks":
        return np.asarray(math.sqrt(-math.log(alpha / 2) / 2) * np.sqrt(inv))
    if measure == "wasserstein":
        tail = math.sqrt(2 * math.log(1 / alpha)) if level > 0.5 else 0.0
        return np.asarray((math.sqrt(2 / math.pi) * ctx.j_over_sigma + tail) * np.sqrt(inv))
    z = _NORMAL.inv_cdf(1 - alpha / 2)
    if measure == "missing_rate":
        r = ctx.missing_rate
        return z * np.sqrt(r * (1 - r) * (1.0 / n + 1.0 / max(ctx.m_count, 1)))
    if measure == "out_of_range":
        # A value outside the training range has probability ≈ 2/(M+1) even without drift.
        r = max(ctx.out_of_range, 2.0 / (ctx.m + 1))
        return r + z * np.sqrt(r * (1 - r) / n)
    if measure == "linf":
        z = _NORMAL.inv_cdf(1 - alpha / (2 * max(1, ctx.categories)))
        return z * np.sqrt(ctx.max_share_var * inv)
    if measure == "unseen":
        r = ctx.unseen_rate
        return z * np.sqrt(r * (1 - r) * inv)
    return np.zeros_like(n)


def numeric_context(counts: np.ndarray, edges: np.ndarray, std: float, block: Mapping[str, Any]) -> NullContext:
    total = counts.sum()
    j = 1.6
    if total > 0 and edges.size > 1 and std > 0:
        cum = np.cumsum(counts[:-1]) / total  # F at every edge
        mid_f = (cum[:-1] + cum[1:]) / 2
        j = float(np.sum(np.diff(edges) * np.sqrt(np.clip(mid_f * (1 - mid_f), 0, None))) / std)
    count = int(block["count"])
    missing = int(block["missing"]) + int(block["nan"])
    return NullContext(
        m=int(total),
        psi_bins=int(quantile_groups(counts, PSI_BINS).max() + 1) if total else PSI_BINS,
        js_bins=int(quantile_groups(counts, JS_BINS).max() + 1) if total else JS_BINS,
        j_over_sigma=j,
        missing_rate=missing / count if count else 0.0,
        m_count=count,
        out_of_range=float((counts[0] + counts[-1]) / total) if total else 0.0,
    )


def categorical_context(block: Mapping[str, Any]) -> NullContext:
    counts = np.asarray([*block["counts"], block["other"]], dtype=np.float64)
    total = counts.sum()
    shares = counts / total if total else counts
    count = int(block["count"])
    return NullContext(
        m=int(total),
        missing_rate=int(block["missing"]) / count if count else 0.0,
        m_count=count,
        max_share_var=float(np.max(shares * (1 - shares))) if total else 0.25,
        categories=int(counts.size),
        unseen_rate=float(shares[-1]) if total else 0.0,
    )


# ---------------------------------------------------------------- persistence


@dataclass(slots=True)
class StateTracker:
    """A drifted/ok state that flips only after ``persistence`` consecutive agreeing decided verdicts
    (True: drifted, False: stable; None, undecided, changes nothing)."""

    state: str = "ok"  # "ok" | "drifted"
    streak: int = 0  # consecutive verdicts that disagree with the state
    since: float = 0.0

    def observe(self, verdict: bool | None, persistence: int, now: float) -> bool:
        """Feed one verdict; True when the state changed."""
        if verdict is None:
            return False
        against = verdict if self.state == "ok" else not verdict
        if not against:
            self.streak = 0
            return False
        self.streak += 1
        if self.streak < max(1, persistence):
            return False
        self.state = "drifted" if self.state == "ok" else "ok"
        self.streak = 0
        self.since = now
        return True
