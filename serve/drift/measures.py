"""Drift measures from binned statistics (counts and sums per bin), with their error bounds (MONITOR.md §4.4).

Inputs are the additive blocks the server and ``serve baseline`` write (serve/input_stats/blocks.py):
fine bins at training percentiles plus two open tail bins, ``counts`` and ``sums`` per bin,
``tail_sumsq`` for the tails. p = baseline proportions (M values), q = live (N values).

========================  =========================================  ===================================
measure                   computed from                              exact? / bound
========================  =========================================  ===================================
``psi``                   10-bin view (fine bins grouped at baseline  exact on the view; 0.5 pseudo-count
                          deciles), Jeffreys pseudo-counts            per bin (Jeffreys prior) on both sides
``js``                    Jensen–Shannon *distance*, base 2, on the   exact on the view (no smoothing)
                          20-bin view; in [0, 1]
``ks``                    max CDF gap at every fine edge              D_edges ≤ D ≤ D_edges + ``ks_bound``,
                                                                      ks_bound = maxᵢ max(pᵢ, qᵢ) (fine bins)
``wasserstein``           W1 between bin-mean point masses, divided   \\|Ŵ − W\\| ≤ ``wasserstein_bound`` =
                          by the baseline's standard deviation       Σ finite (pᵢ+qᵢ)·wᵢ/2 + Σ tails p·σₜ + q·σₜ
``missing_rate``          (missing + NaN) / count, live − baseline    exact
``out_of_range``          share of finite values in the open tail    exact
                          bins (outside the training range) or ±Inf,
                          live − baseline
``linf``                  categorical: max over categories (and       exact
                          "other") of \\|qᵢ − pᵢ\\|
``unseen``                categorical: live share outside the         exact
                          training vocabulary, minus the baseline's
========================  =========================================  ===================================

Categorical features also get ``psi`` and ``js`` over their categories (vocabulary + other).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

PSEUDO_COUNT = 0.5
PSI_BINS = 10
JS_BINS = 20
STD_FLOOR = 1e-3  # as Evidently: W1 of a (near-)constant feature is measured in units, not in σ


@dataclass(frozen=True, slots=True)
class Binned:
    """One side's numeric statistics for one feature, as numpy arrays."""

    count: int  # every value seen, missing included
    missing: int  # declared sentinels + NaN
    infinite: int  # ±Inf
    counts: np.ndarray  # per fine bin, float64
    sums: np.ndarray
    tail_sumsq: np.ndarray  # (2,)
    n: int  # finite, non-missing values
    mean: float | None
    m2: float

    @classmethod
    def from_block(cls, block: Mapping[str, Any]) -> Binned:
        bins = block["bins"]
        return cls(
            count=int(block["count"]),
            missing=int(block["missing"]) + int(block["nan"]),
            infinite=int(block["posinf"]) + int(block["neginf"]),
            counts=np.asarray(bins["counts"], dtype=np.float64),
            sums=np.asarray(bins["sums"], dtype=np.float64),
            tail_sumsq=np.asarray(bins["tail_sumsq"], dtype=np.float64),
            n=int(block["n"]),
            mean=block["mean"],
            m2=float(block["m2"]),
        )

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / (self.n - 1)) if self.n > 1 else 0.0


@dataclass(frozen=True, slots=True)
class Categories:
    count: int
    missing: int
    counts: np.ndarray  # vocabulary counts followed by "other"

    @classmethod
    def from_block(cls, block: Mapping[str, Any]) -> Categories:
        counts = np.asarray([*block["counts"], block["other"]], dtype=np.float64)
        return cls(int(block["count"]), int(block["missing"]), counts)


# ---------------------------------------------------------------- views


def quantile_groups(baseline_counts: np.ndarray, k: int) -> np.ndarray:
    """Group id (0 … ≤ k−1, consecutive) of every fine bin, so groups hold ≈ 1/k of the baseline each.

    A fine bin joins the group its baseline midpoint mass falls in; the open tails (empty
    in the baseline) join the first and last groups. Discrete features with few values get
    fewer groups: a bin is never split.
    """
    total = baseline_counts.sum()
    if total <= 0:
        return np.zeros(baseline_counts.size, dtype=np.int64)
    cum = np.cumsum(baseline_counts) / total
    mid = cum - baseline_counts / total / 2
    raw = np.minimum((mid * k).astype(np.int64), k - 1)
    _, ids = np.unique(raw, return_inverse=True)
    return ids.astype(np.int64)


def regroup(counts: np.ndarray, groups: np.ndarray) -> np.ndarray:
    return np.bincount(groups, weights=counts, minlength=int(groups.max()) + 1 if groups.size else 0)


# ---------------------------------------------------------------- measures on count vectors


def psi(p_counts: np.ndarray, q_counts: np.ndarray, pseudo: float = PSEUDO_COUNT) -> float:
    """Population stability index Σ (q−p)·ln(q/p) with ``pseudo`` added to every bin on both sides."""
    p = (p_counts + pseudo) / (p_counts.sum() + pseudo * p_counts.size)
    q = (q_counts + pseudo) / (q_counts.sum() + pseudo * q_counts.size)
    return float(np.sum((q - p) * np.log(q / p)))


def js_distance(p_counts: np.ndarray, q_counts: np.ndarray) -> float:
    """Jensen–Shannon distance, base 2 (as ``scipy.spatial.distance.jensenshannon(p, q, base=2)``)."""
    p = p_counts / p_counts.sum()
    q = q_counts / q_counts.sum()
    m = (p + q) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        kl_p = np.where(p > 0, p * np.log2(p / m), 0.0).sum()
        kl_q = np.where(q > 0, q * np.log2(q / m), 0.0).sum()
    return float(math.sqrt(max(0.0, (kl_p + kl_q) / 2)))


def ks_binned(p_counts: np.ndarray, q_counts: np.ndarray) -> tuple[float, float]:
    """(D at the bin edges, bound): the true two-sample D lies in [D, D + bound]."""
    p = p_counts / p_counts.sum()
    q = q_counts / q_counts.sum()
    d = float(np.max(np.abs(np.cumsum(p) - np.cumsum(q))))
    return d, float(np.max(np.maximum(p, q)))


def _point_masses(b: Binned) -> tuple[np.ndarray, np.ndarray]:
    nz = b.counts > 0
    return b.sums[nz] / b.counts[nz], b.counts[nz] / b.counts.sum()


def wasserstein_points(xa: np.ndarray, wa: np.ndarray, xb: np.ndarray, wb: np.ndarray) -> float:
    """W1 = ∫|F − G| between two weighted point sets (weights summing to 1 on each side)."""
    x = np.concatenate([xa, xb])
    w = np.concatenate([wa, -wb])
    order = np.argsort(x, kind="stable")
    x, w = x[order], w[order]
    gap = np.diff(x)
    return float(np.sum(np.abs(np.cumsum(w)[:-1]) * gap))


def _discretisation_error(b: Binned, edges: np.ndarray) -> float:
    """W1 between a side and its bin-mean point masses is at most this (triangle inequality)."""
    share = b.counts / b.counts.sum()
    widths = np.diff(edges)
    err = float(np.sum(share[1:-1] * widths) / 2) if widths.size else 0.0
    for i, slot in ((0, 0), (1, -1)):
        c = b.counts[slot]
        if c > 0:
            mean = b.sums[slot] / c
            var = max(0.0, b.tail_sumsq[i] / c - mean * mean)
            err += float(share[slot]) * math.sqrt(var)
    return err


def wasserstein_binned(p: Binned, q: Binned, edges: np.ndarray, scale: float) -> tuple[float, float]:
    """(W1/scale from bin-mean point masses, bound on its error in the same units)."""
    xa, wa = _point_masses(p)
    xb, wb = _point_masses(q)
    w = wasserstein_points(xa, wa, xb, wb)
    bound = _discretisation_error(p, edges) + _discretisation_error(q, edges)
    return w / scale, bound / scale


def scale_of(p: Binned) -> float:
    return max(p.std, STD_FLOOR)


# ---------------------------------------------------------------- per feature


def numeric_measures(p: Binned, q: Binned, edges: np.ndarray) -> dict[str, Any]:
    """Every numeric measure, plus the values behind them (views for plots, bounds, rates)."""
    out: dict[str, Any] = {}
    p_missing = p.missing / p.count if p.count else 0.0
    q_missing = q.missing / q.count if q.count else 0.0
    out["missing_rate"] = q_missing - p_missing
    p_oor = (p.counts[0] + p.counts[-1] + p.infinite) / max(1, p.n + p.infinite)
    q_oor = (q.counts[0] + q.counts[-1] + q.infinite) / max(1, q.n + q.infinite)
    out["out_of_range"] = float(q_oor - p_oor)
    out["rates"] = {"missing": (p_missing, q_missing), "out_of_range": (float(p_oor), float(q_oor))}
    if p.counts.sum() <= 0 or q.counts.sum() <= 0:
        return out
    g10 = quantile_groups(p.counts, PSI_BINS)
    g20 = quantile_groups(p.counts, JS_BINS)
    out["psi"] = psi(regroup(p.counts, g10), regroup(q.counts, g10))
    p20, q20 = regroup(p.counts, g20), regroup(q.counts, g20)
    out["js"] = js_distance(p20, q20)
    out["ks"], out["ks_bound"] = ks_binned(p.counts, q.counts)
    out["wasserstein"], out["wasserstein_bound"] = wasserstein_binned(p, q, edges, scale_of(p))
    out["mean_shift"] = (
        abs(q.mean - p.mean) / scale_of(p) if q.mean is not None and p.mean is not None else None
    )  # a lower bound on W1/σ, exact from the sums
    out["view"] = {"groups": g20, "baseline": p20 / p20.sum(), "live": q20 / q20.sum()}
    return out


def categorical_measures(p: Categories, q: Categories) -> dict[str, Any]:
    out: dict[str, Any] = {}
    p_missing = p.missing / p.count if p.count else 0.0
    q_missing = q.missing / q.count if q.count else 0.0
    out["missing_rate"] = q_missing - p_missing
    out["rates"] = {"missing": (p_missing, q_missing)}
    if p.counts.sum() <= 0 or q.counts.sum() <= 0:
        return out
    ps, qs = p.counts / p.counts.sum(), q.counts / q.counts.sum()
    out["linf"] = float(np.max(np.abs(qs - ps)))
    out["unseen"] = float(qs[-1] - ps[-1])
    out["rates"]["unseen"] = (float(ps[-1]), float(qs[-1]))
    out["psi"] = psi(p.counts, q.counts)
    out["js"] = js_distance(p.counts, q.counts)
    out["view"] = {"baseline": ps, "live": qs}
    return out
