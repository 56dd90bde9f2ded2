"""No-drift distributions of the drift measures, calibrated from a baseline's own bins (``null_calibration``).

``serve baseline`` stores, per feature, how each bin-based measure is distributed when live
traffic comes from the training distribution, at a ladder of window sizes (100 … 100,000
values). Closed forms (policy.py) are asymptotic: they are least accurate exactly where a
small or odd baseline needs them most — discrete and near-constant features, tiny
categories, zero-inflated data — and where the baseline's own sampling noise matters.

**How.** A parametric bootstrap of the two-sample statistic on the baseline's bins: each
replicate draws a baseline of M values and a live window of N values, both multinomial
from the baseline's bin shares (M = the baseline's own size, so its sampling noise is in
the result), and computes the measure as the monitor does (measures.py: same groups,
pseudo-counts and bin-mean positions; W1 divided by the replicate baseline's σ). Beyond
the training range each side gets a point with the 1/(M+1) share a continuous feature
puts there. The baseline draw is shared by every
rung of the ladder (common random numbers keep the curve smooth in N). Seeded per
feature, so a file is reproducible.

**Stored** per measure and window size: the 0.5, 0.9 and 0.95 quantiles, the share of
replicates above the 0.95 quantile and their mean excess over it. Levels beyond 0.95 use
that exponential tail (peaks over a threshold): q(p) = q95 + excess · ln(share / (1 − p)).
The statistics here have tails no heavier than exponential, so this errs on the high
(quiet) side, and it reaches the deep levels a model-wide false-alarm budget needs
without millions of replicates.

**Read** (``NullTable``): quantiles at any N by interpolating, in log N, the quantile
divided by the measure's natural scale (√(1/N + 1/M), or 1/N + 1/M for PSI), so the
ladder's ends extend with the closed form's rate. Rate measures (missing, out of range,
unseen) stay with the closed form: a bootstrap from the baseline cannot see values it
never had (it would put every out-of-range value at zero probability).

Table, per feature in baseline.json::

    "null_calibration": {"method": "bootstrap", "replicates": 2000, "seed": 17, "baseline_values": 14133,
                         "windows": [100, 200, …, 100000], "levels": [0.5, 0.9, 0.95],
                         "measures": {"ks": [[q50, q90, q95, share, excess], …one per window], …}}
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypedDict, cast

import numpy as np

from serve.drift import measures as ms

log = logging.getLogger("serve.drift.calibration")

# Dense where the shape of the distributions changes (small windows: discreteness), sparse beyond.
WINDOWS: tuple[int, ...] = (100, 200, 500, 1000, 2000, 5000, 20_000, 100_000)
LEVELS: tuple[float, ...] = (0.5, 0.9, 0.95)
TAIL_LEVEL = 0.95
DEFAULT_REPLICATES = 2000
NUMERIC_MEASURES = ("psi", "js", "ks", "wasserstein")
CATEGORICAL_MEASURES = ("linf", "psi", "js")


class NullCalibrationJson(TypedDict):
    """One feature's table (the module docstring); per measure one row per window: q50, q90, q95, share, excess."""

    method: str
    replicates: int
    seed: int
    baseline_values: int
    windows: list[int]
    levels: list[float]
    measures: dict[str, list[list[float]]]


class CalibrationSummaryJson(TypedDict):
    """What a calibration did, for baseline.json's ``source``."""

    method: str
    replicates: int
    seed: int
    windows: list[int]
    features: int
    calibrated: int
    skipped: list[str]
    seconds: float


SQUARED = frozenset({"psi"})  # scale 1/N + 1/M; the others scale with its square root
OUTER_VALUES = 5  # the outermost values whose mean sets how far beyond the range the tail points lie


def natural_scale(measure: str, n: np.ndarray | float, m: float) -> np.ndarray:
    inv = 1.0 / np.asarray(n, dtype=np.float64) + 1.0 / m
    return np.asarray(inv if measure in SQUARED else np.sqrt(inv))


# ---------------------------------------------------------------- measures over replicates (rows)


def _shares(counts: np.ndarray) -> np.ndarray:
    total = counts.sum(axis=1, keepdims=True)
    return counts / np.where(total > 0, total, 1.0)


def batch_psi(p_counts: np.ndarray, q_counts: np.ndarray, pseudo: float = ms.PSEUDO_COUNT) -> np.ndarray:
    k = p_counts.shape[1]
    p = (p_counts + pseudo) / (p_counts.sum(axis=1, keepdims=True) + pseudo * k)
    q = (q_counts + pseudo) / (q_counts.sum(axis=1, keepdims=True) + pseudo * k)
    return np.asarray(np.sum((q - p) * np.log(q / p), axis=1))


def batch_js(p_counts: np.ndarray, q_counts: np.ndarray) -> np.ndarray:
    p, q = _shares(p_counts), _shares(q_counts)
    m = (p + q) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        kl_p = np.where(p > 0, p * np.log2(p / m), 0.0).sum(axis=1)
        kl_q = np.where(q > 0, q * np.log2(q / m), 0.0).sum(axis=1)
    return np.asarray(np.sqrt(np.maximum(0.0, (kl_p + kl_q) / 2)))


def batch_ks(p_counts: np.ndarray, q_counts: np.ndarray) -> np.ndarray:
    gap = np.cumsum(_shares(p_counts) - _shares(q_counts), axis=1)
    return np.asarray(np.abs(gap).max(axis=1))


def batch_wasserstein(
    p_counts: np.ndarray, q_counts: np.ndarray, x: np.ndarray, scale: float | np.ndarray
) -> np.ndarray:
    """W1 / scale between point masses at the same sorted positions ``x`` (the baseline's bin means)."""
    gap = np.cumsum(_shares(p_counts) - _shares(q_counts), axis=1)[:, :-1]
    return np.asarray(np.abs(gap) @ np.diff(x) / scale)


def batch_scale(p_counts: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Each replicate baseline's own σ (floored as measures.scale_of does), from its counts at positions ``x``."""
    n = p_counts.sum(axis=1)
    mean = p_counts @ x / n
    var = np.maximum(p_counts @ (x * x) / n - mean * mean, 0.0) * n / np.maximum(n - 1, 1)
    return np.asarray(np.maximum(np.sqrt(var), ms.STD_FLOOR))


def batch_linf(p_counts: np.ndarray, q_counts: np.ndarray) -> np.ndarray:
    return np.asarray(np.abs(_shares(p_counts) - _shares(q_counts)).max(axis=1))


def _group_sums(groups: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """Counts per group for every replicate; ``groups`` is non-decreasing (bins in order)."""
    starts = np.flatnonzero(np.r_[True, groups[1:] != groups[:-1]])
    return lambda counts: np.add.reduceat(counts, starts, axis=1)


# ---------------------------------------------------------------- the bootstrap


@dataclass(frozen=True, slots=True)
class _Sampler:
    """What one feature's replicates need: bin shares, and per measure a function of (baseline, live) counts."""

    shares: np.ndarray
    m: int
    measures: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]]


def _numeric_sampler(stats: Mapping[str, Any]) -> _Sampler | None:
    counts = np.asarray(stats["bins"]["counts"], dtype=np.float64)
    sums = np.asarray(stats["bins"]["sums"], dtype=np.float64)
    total = counts.sum()
    if total <= 0:
        return None
    groups10 = ms.quantile_groups(counts, ms.PSI_BINS)
    groups20 = ms.quantile_groups(counts, ms.JS_BINS)
    keep = np.flatnonzero(counts > 0)  # bins the baseline never saw (the open tails) are not drawn …
    x = sums[keep] / counts[keep]
    mass = counts[keep] / (total + 1.0)
    # … except beyond the training range, where a continuous feature puts 1/(M+1) of its values on each
    # side: one point per side, beyond the extreme value by as much as the mean of the outermost ≥ 5 values
    # is inside it (the mean excess of an exponential tail). Without it the bootstrap misses the extremes
    # that dominate W1's noise on heavy-tailed data. Where the outermost values are all equal (discrete
    # features) there is no such point.
    tails = []
    if stats.get("min") is not None and stats.get("max") is not None:
        for slot, edge in ((0, float(stats["min"])), (-1, float(stats["max"]))):
            order_k = keep if slot == 0 else keep[::-1]
            reach = int(np.searchsorted(np.cumsum(counts[order_k]), OUTER_VALUES)) + 1
            outer = order_k[:reach]
            inside = float(sums[outer].sum() / counts[outer].sum())
            if abs(edge - inside) > 0:
                tails.append((slot, 2 * edge - inside))
    share = np.concatenate([mass, [1.0 / (total + 1.0)] * len(tails)])
    x = np.concatenate([x, [far for _, far in tails]])
    slot_groups = [(groups10[slot], groups20[slot]) for slot, _ in tails]
    g10 = np.concatenate([groups10[keep], [g for g, _ in slot_groups]]).astype(np.int64)
    g20 = np.concatenate([groups20[keep], [g for _, g in slot_groups]]).astype(np.int64)
    order = np.argsort(x, kind="stable")
    x, share = x[order], share[order]
    v10, v20 = _group_sums(g10[order]), _group_sums(g20[order])
    # W1 is divided by the baseline's σ: each replicate divides by its own baseline's, so that a σ resting
    # on a handful of values (near-constant features) shows its uncertainty in the noise.
    return _Sampler(
        share / share.sum(),
        int(total),
        {
            "psi": lambda p, q: batch_psi(v10(p), v10(q)),
            "js": lambda p, q: batch_js(v20(p), v20(q)),
            "ks": batch_ks,
            "wasserstein": lambda p, q: batch_wasserstein(p, q, x, batch_scale(p, x)),
        },
    )


def _categorical_sampler(stats: Mapping[str, Any]) -> _Sampler | None:
    counts = np.asarray([*stats["counts"], stats["other"]], dtype=np.float64)
    total = counts.sum()
    if total <= 0:
        return None
    # Every category stays (empty ones too): PSI's pseudo-count gives them mass.
    return _Sampler(counts / total, int(total), {"linf": batch_linf, "psi": batch_psi, "js": batch_js})


def _sampler(kind: str, stats: Mapping[str, Any] | None) -> _Sampler | None:
    if not stats:
        return None
    if kind == "numeric" and "bins" in stats:
        return _numeric_sampler(stats)
    if kind == "categorical" and "counts" in stats:
        return _categorical_sampler(stats)
    return None


def _summary(values: np.ndarray) -> list[float]:
    """[q50, q90, q95, share above q95, mean excess above q95] of one measure's replicates."""
    q50, q90, q95 = (float(v) for v in np.quantile(values, LEVELS))
    above = values[values > q95]
    share = above.size / values.size
    excess = float(np.mean(above - q95)) if above.size else 0.0
    return [_sig(q50), _sig(q90), _sig(q95), _sig(share), _sig(excess)]


def _sig(value: float) -> float:
    return float(f"{value:.5g}")


def _draw(rng: np.random.Generator, n: int, shares: np.ndarray, replicates: int) -> np.ndarray:
    return rng.multinomial(n, shares, size=replicates).astype(np.float64)


def calibrate_feature(
    kind: str,
    stats: Mapping[str, Any] | None,
    *,
    replicates: int = DEFAULT_REPLICATES,
    windows: Sequence[int] = WINDOWS,
    seed: int = 0,
) -> NullCalibrationJson | None:
    """The ``null_calibration`` entry of one feature (None when it has no bins or counts to resample)."""
    sampler = _sampler(kind, stats)
    if sampler is None or replicates < 100:
        return None
    rng = np.random.default_rng(seed)
    shares = sampler.shares / sampler.shares.sum()
    baseline = _draw(rng, sampler.m, shares, replicates)
    table: dict[str, list[list[float]]] = {name: [] for name in sampler.measures}
    for n in windows:
        live = _draw(rng, int(n), shares, replicates)
        for name, fn in sampler.measures.items():
            table[name].append(_summary(fn(baseline, live)))
    return {
        "method": "bootstrap",
        "replicates": replicates,
        "seed": seed,
        "baseline_values": sampler.m,
        "windows": [int(n) for n in windows],
        "levels": list(LEVELS),
        "measures": table,
    }


@dataclass(slots=True)
class CalibrationReport:
    features: int = 0
    calibrated: int = 0
    skipped: list[str] = field(default_factory=list)  # left to the closed form: the time budget ran out
    seconds: float = 0.0

    def to_json(self, replicates: int, seed: int) -> CalibrationSummaryJson:
        return {
            "method": "bootstrap", "replicates": replicates, "seed": seed, "windows": list(WINDOWS),
            "features": self.features, "calibrated": self.calibrated, "skipped": self.skipped,
            "seconds": round(self.seconds, 1),
        }  # fmt: skip


def calibrate_features(
    features: Sequence[Mapping[str, Any]],
    *,
    replicates: int = DEFAULT_REPLICATES,
    seed: int = 0,
    time_budget_s: float = 300.0,
    progress: bool = False,
    clock: Callable[[], float] = time.monotonic,
) -> CalibrationReport:
    """Add ``null_calibration`` to every numeric and categorical feature entry (baseline.json ``features``).

    Features are done in order, each with its own seed (``seed`` + position), so the table of a
    feature does not depend on the others. Once ``time_budget_s`` is spent the remaining
    features are skipped: they keep working with the closed form, and the report names them.
    """
    from tqdm import tqdm

    report = CalibrationReport()
    started = clock()
    todo = [(i, f) for i, f in enumerate(features) if f.get("kind") in ("numeric", "categorical")]
    report.features = len(todo)
    bar = tqdm(todo, desc="calibrating", unit="feature", file=sys.stderr, disable=not progress)
    for i, entry in bar:
        if clock() - started >= time_budget_s:
            report.skipped.append(str(entry["name"]))
            continue
        table = calibrate_feature(entry["kind"], entry.get("stats"), replicates=replicates, seed=seed + i)
        if table is not None:
            # The entries are baseline.json's (TypedDicts of serve.input_stats, a package this one must not
            # import), read here as mappings; the table is the one key this adds.
            cast(MutableMapping[str, Any], entry)["null_calibration"] = table
            report.calibrated += 1
    bar.close()
    report.seconds = clock() - started
    if report.skipped:
        log.warning(
            "calibration time budget (%.0f s) spent: %d feature(s) keep the closed-form null quantiles (%s)",
            time_budget_s,
            len(report.skipped),
            ", ".join(report.skipped[:10]) + ("…" if len(report.skipped) > 10 else ""),
        )
    return report


# ---------------------------------------------------------------- reading a table


class NullTable:
    """One feature's calibration, read back: quantiles of each measure at any window size and level."""

    def __init__(self, raw: Mapping[str, Any]) -> None:
        self.m = float(raw["baseline_values"])
        self.windows = np.asarray(raw["windows"], dtype=np.float64)
        self.log_windows = np.log(self.windows)
        self.measures = {name: np.asarray(rows, dtype=np.float64) for name, rows in raw["measures"].items()}
        self._normalised: dict[tuple[str, float], np.ndarray] = {}

    @classmethod
    def parse(cls, raw: Any) -> NullTable | None:
        """The table, or None when it is absent or not one this code understands (then the closed form applies)."""
        if not isinstance(raw, Mapping) or raw.get("method") != "bootstrap" or tuple(raw.get("levels", ())) != LEVELS:
            return None
        try:
            table = cls(raw)
        except (KeyError, TypeError, ValueError):
            return None
        if table.windows.size < 2 or any(rows.shape != (table.windows.size, 5) for rows in table.measures.values()):
            return None
        return table

    def __contains__(self, measure: str) -> bool:
        return measure in self.measures

    def _at_level(self, rows: np.ndarray, level: float) -> np.ndarray:
        """The ``level`` quantile at every ladder window."""
        q50, q90, q95, share, excess = rows.T
        if level <= 0.5:
            return np.asarray(q50)
        if level <= 0.9:
            return np.asarray(q50 + (q90 - q50) * (level - 0.5) / 0.4)
        if level <= TAIL_LEVEL:
            return np.asarray(q90 + (q95 - q90) * (level - 0.9) / (TAIL_LEVEL - 0.9))
        tail = 1.0 - level
        beyond = share > tail  # the exponential tail starts where the replicates' exceedances do
        with np.errstate(divide="ignore"):
            extra = np.where(beyond, excess * np.log(np.where(beyond, share, 1.0) / tail), 0.0)
        return np.asarray(q95 + extra)

    def quantile(self, measure: str, n: np.ndarray | float, level: float) -> np.ndarray:
        key = (measure, round(level, 12))
        normalised = self._normalised.get(key)
        if normalised is None:
            at = self._at_level(self.measures[measure], level)
            normalised = self._normalised[key] = at / natural_scale(measure, self.windows, self.m)
        n_arr = np.maximum(np.asarray(n, dtype=np.float64), 1.0)
        shape = np.interp(np.log(n_arr), self.log_windows, normalised)
        return np.asarray(shape * natural_scale(measure, n_arr, self.m))
