"""When a measure counts as drift: thresholds, the minimum window size, persistence, model-level rules.

**Effect sizes decide, not p-values**: at serving volume every p-value is "significant"
(MONITOR.md §2.4). A feature is *drifted in one evaluation* when one of its decision
measures reaches its threshold. Defaults (MONITOR.md §4.4):

=============  =========  ===================================================
measure        default    decides for
=============  =========  ===================================================
psi            0.25       numeric (10-bin view); computed for categoricals
js             0.1        numeric (20-bin view, base 2); computed for categoricals
ks             0.1        numeric
wasserstein    0.2        numeric (W1 / baseline σ)
missing_rate   0.1        numeric and categorical (absolute change)
out_of_range   0.1        numeric (absolute change)
linf           0.1        categorical
unseen         0.1        categorical
=============  =========  ===================================================

**No verdict below a minimum window size.** Under no drift each measure has a null
distribution that shrinks with N (e.g. PSI·(1/N + 1/M)⁻¹ → χ²(B−1)). For every decision
measure we find the smallest N at which its null quantile at level 1 − α/m is below its
threshold (m = number of decision measures, α = ``false_alarm`` = 1 %: a Bonferroni split,
so a feature without drift is flagged in < 1 % of evaluations). The feature's minimum is
the largest of those and ``min_samples``; below it the verdict is ``null``. Null quantiles:

* psi: χ²₁₋ₐ(B−1)·(1/N + 1/M) (Wilson–Hilferty for χ²); js: √(that / (8 ln 2)) since
  PSI ≈ 8·JSD for small shifts; ks: c(α)·√(1/N + 1/M) with c(α) = √(−ln(α/2)/2);
* wasserstein: (√(2/π)·J/σ + √(2 ln(1/α)))·√(1/N + 1/M), J = ∫√(F(1−F))dx from the
  baseline bins (the mean of √N·W1 plus a Borell–TIS tail, conservative);
* rates: z₁₋ₐ/₂·√(p(1−p)(1/N + 1/M)) around the baseline rate p (linf: Bonferroni over
  categories).

**Persistence**: a feature changes state only after ``persistence`` consecutive
evaluations agree (drifted to enter, not drifted to leave); no verdict changes nothing.

**Model level**: dataset drift when the share of input features in the drifted state
is at least ``drift_share`` (0.5); prediction drift when an output feature is drifted.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

import numpy as np

from serve.monitor.measures import JS_BINS, PSI_BINS, quantile_groups

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
    false_alarm: float = 0.01
    min_samples: int = 100
    persistence: int = 3
    drift_share: float = 0.5
    slo: SloPolicy = field(default_factory=SloPolicy)

    def for_feature(self, name: str, kind: str) -> dict[str, float]:
        """The decision measures of a feature and their thresholds (``None`` disables a measure)."""
        merged = {**self.thresholds, **self.feature_thresholds.get(name, {})}
        deciding = DECIDING.get(kind, ())
        extra = [m for m in self.feature_thresholds.get(name, {}) if m not in deciding]
        return {m: float(value) for m in (*deciding, *extra) if (value := merged.get(m)) is not None}


# ---------------------------------------------------------------- null quantiles


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


def null_quantile(measure: str, n: int, ctx: NullContext, alpha: float) -> float:
    """The 1 − ``alpha`` quantile of ``measure`` under no drift, with ``n`` live values."""
    if n <= 0 or ctx.m <= 0:
        return math.inf
    inv = 1.0 / n + 1.0 / ctx.m
    if measure == "psi":
        return chi2_quantile(1 - alpha, ctx.psi_bins - 1) * inv
    if measure == "js":
        return math.sqrt(chi2_quantile(1 - alpha, ctx.js_bins - 1) * inv / (8 * math.log(2)))
    if measure == "ks":
        return math.sqrt(-math.log(alpha / 2) / 2) * math.sqrt(inv)
    if measure == "wasserstein":
        return (math.sqrt(2 / math.pi) * ctx.j_over_sigma + math.sqrt(2 * math.log(1 / alpha))) * math.sqrt(inv)
    z = _NORMAL.inv_cdf(1 - alpha / 2)
    m_count = max(ctx.m_count, 1)
    if measure == "missing_rate":
        p = ctx.missing_rate
        return z * math.sqrt(p * (1 - p) * (1.0 / n + 1.0 / m_count))
    if measure == "out_of_range":
        # A value outside the training range has probability ≈ 2/(M+1) even without drift.
        p = max(ctx.out_of_range, 2.0 / (ctx.m + 1))
        return p + z * math.sqrt(p * (1 - p) / n)
    if measure == "linf":
        z = _NORMAL.inv_cdf(1 - alpha / (2 * max(1, ctx.categories)))
        return z * math.sqrt(ctx.max_share_var * inv)
    if measure == "unseen":
        p = ctx.unseen_rate
        return z * math.sqrt(p * (1 - p) * inv)
    return 0.0


def min_window(measure: str, threshold: float, ctx: NullContext, alpha: float, cap: int = 10**9) -> int:
    """Smallest N whose null quantile is below ``threshold`` (``cap`` when none is: baseline too small)."""
    if null_quantile(measure, cap, ctx, alpha) > threshold:
        return cap
    lo, hi = 1, cap
    while lo < hi:
        mid = (lo + hi) // 2
        if null_quantile(measure, mid, ctx, alpha) <= threshold:
            hi = mid
        else:
            lo = mid + 1
    return lo


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
    """A drifted/ok state that flips only after ``persistence`` consecutive agreeing verdicts."""

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
