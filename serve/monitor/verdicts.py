"""Drifted, stable or undecided: what one evaluation's evidence allows to say about a feature.

For every deciding measure with threshold T, at the live window size N and baseline size
M, the **no-drift noise** is the range of values the measure takes without drift:
*typical* = its median, *ceiling* = its 1 − α/m quantile (α the feature's false-alarm
budget, m its deciding measures). Then, with v the measured value:

* **drifted** when v ≥ max(T, ceiling): the change is large enough to matter *and* larger
  than no drift produces, except with probability α/m. The test needs no minimum window:
  a large shift clears the ceiling of a few hundred rows, and a false alarm stays as rare
  at N = 200 as at N = 200,000.
* **stable** when v + (ceiling − typical) < T: even with the noise added, the measure is
  below its threshold (a drift of size T would show a value that low with probability
  of the order of α/m).
* **undecided** otherwise, with the rows still needed: the value's excess over the typical
  no-drift value is kept and the noise shrinks with N' (typical(N') + excess), and the
  first N' at which that is judged drifted or stable is the window needed. "None" when
  no window size would do with this baseline: its own sampling noise keeps the ceiling
  too high (1/M does not shrink with traffic).

A feature is drifted when one of its measures is, stable when all are, else undecided;
its rows needed are those of the undecided measure that decides soonest towards drift if
any leans that way, else of the slowest measure towards stable.

**Detectable shift**: the smallest shift of the mean (in baseline σ; W1/σ of a pure
location shift equals the shift) that this window would flag in about 95 % of windows:
max(T, ceiling) of ``wasserstein`` plus 1.645·√(1/N + 1/M) (the spread of a difference of
means). Categorical features: the same for a category's share (``linf``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypedDict

import numpy as np

from serve.drift.calibration import NullTable
from serve.monitor.policy import NullContext, closed_form_quantile

DRIFTED = "drifted"
STABLE = "stable"
UNDECIDED = "undecided"
STATES = (DRIFTED, STABLE, UNDECIDED)
MAX_ROWS = 10**9
_GRID_STEP = 1.05  # rows needed are found on a geometric grid: within 5 %
_Z95 = 1.6449
_GRID = np.unique(np.ceil(_GRID_STEP ** np.arange(int(math.log(MAX_ROWS) / math.log(_GRID_STEP)) + 2))).astype(np.int64)


class NoiseJson(TypedDict):
    typical: float | None
    ceiling: float | None
    level: float | None
    source: str


class DetectableShift(TypedDict):
    shift: float
    unit: str  # "σ" (baseline standard deviations) or "share"
    of: str


@dataclass(frozen=True, slots=True)
class Noise:
    typical: float
    ceiling: float
    level: float
    source: str  # "calibrated" (the baseline's table) or "closed form"

    def to_json(self) -> NoiseJson:
        return {
            "typical": _round(self.typical), "ceiling": _round(self.ceiling), "level": _round(self.level),
            "source": self.source,
        }  # fmt: skip


def _round(value: float) -> float | None:
    return float(f"{value:.6g}") if math.isfinite(value) else None


class NoiseModel:
    """One feature's no-drift quantiles: calibrated where the baseline has a table for the measure."""

    def __init__(self, ctx: NullContext, table: NullTable | None) -> None:
        self.ctx = ctx
        self.table = table
        self._grids: dict[tuple[str, float], tuple[np.ndarray, np.ndarray]] = {}
        self.stable_from: dict[tuple[str, float, float], int | None] = {}  # verdicts.stable_from's cache

    def source(self, measure: str) -> str:
        return "calibrated" if self.table is not None and measure in self.table else "closed form"

    def quantile(self, measure: str, n: np.ndarray | float, level: float) -> np.ndarray:
        if self.table is not None and measure in self.table:
            return self.table.quantile(measure, n, level)
        return closed_form_quantile(measure, n, self.ctx, level)

    def at(self, measure: str, n: int, level: float) -> Noise:
        typical = float(self.quantile(measure, n, 0.5))
        ceiling = max(typical, float(self.quantile(measure, n, level)))
        return Noise(typical, ceiling, level, self.source(measure))

    def grid(self, measure: str, start: int, level: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Window sizes from ``start`` to MAX_ROWS (one geometric grid) with the typical value and ceiling at each."""
        key = (measure, round(level, 12))
        cached = self._grids.get(key)
        if cached is None:
            typical = self.quantile(measure, _GRID, 0.5)
            cached = self._grids[key] = (typical, np.maximum(typical, self.quantile(measure, _GRID, level)))
        first = int(np.searchsorted(_GRID, max(1, start)))
        return _GRID[first:], cached[0][first:], cached[1][first:]


def decide(value: float, threshold: float, noise: Noise) -> str:
    v = abs(value)  # a change either way (e.g. fewer missing values) counts
    if v >= max(threshold, noise.ceiling):
        return DRIFTED
    if v + (noise.ceiling - noise.typical) < threshold:
        return STABLE
    return UNDECIDED


def window_for_verdict(
    value: float, threshold: float, noise: Noise, model: NoiseModel, measure: str, n: int
) -> tuple[bool, int | None]:
    """(leans to drift, window size at which this measure would decide) for an undecided measure.

    The projection keeps the value's excess over the typical no-drift value and lets the noise
    shrink: at N' the value would be typical(N') + excess. Drifted there when that reaches
    max(T, ceiling(N')), stable when excess + ceiling(N') < T; whichever comes first.
    """
    excess = max(0.0, abs(value) - noise.typical)
    sizes, typical, ceiling = model.grid(measure, n + 1, noise.level)
    projected = typical + excess
    drift = np.flatnonzero(projected >= np.maximum(threshold, ceiling))
    stable = np.flatnonzero(excess + ceiling < threshold)
    first_drift = int(drift[0]) if drift.size else None
    first_stable = int(stable[0]) if stable.size else None
    if first_drift is not None and (first_stable is None or first_drift <= first_stable):
        return True, int(sizes[first_drift])
    if first_stable is not None:
        return False, int(sizes[first_stable])
    return abs(value) >= threshold, None


def stable_from(threshold: float, model: NoiseModel, measure: str, level: float) -> int | None:
    """The smallest window at which a window without drift is typically judged stable (ceiling < T)."""
    key = (measure, round(level, 12), threshold)
    if key not in model.stable_from:
        sizes, _, ceiling = model.grid(measure, 1, level)
        hit = np.flatnonzero(ceiling < threshold)
        model.stable_from[key] = int(sizes[hit[0]]) if hit.size else None
    return model.stable_from[key]


def combine(states: Mapping[str, str]) -> str:
    if any(s == DRIFTED for s in states.values()):
        return DRIFTED
    if states and all(s == STABLE for s in states.values()):
        return STABLE
    return UNDECIDED


def rows_for_feature(leanings: Mapping[str, tuple[bool, int | None]]) -> int | None:
    """The window size at which an undecided feature is expected to be decided (None: not with this baseline)."""
    towards_drift = [w for lean, w in leanings.values() if lean]
    if any(lean for lean, _ in leanings.values()):
        reachable = [w for w in towards_drift if w is not None]
        return min(reachable) if reachable else None
    windows = [w for _, w in leanings.values()]
    if not windows or any(w is None for w in windows):
        return None
    return max(w for w in windows if w is not None)


def detectable_shift(
    kind: str, thresholds: Mapping[str, float], model: NoiseModel, n: int, level: float
) -> DetectableShift | None:
    """The smallest shift this window flags in ≈ 95 % of windows (module docstring); None without the measure."""
    measure = "wasserstein" if kind == "numeric" else "linf"
    if measure not in thresholds or n <= 0 or model.ctx.m <= 0:
        return None
    boundary = max(thresholds[measure], model.at(measure, n, level).ceiling)
    spread = math.sqrt(1.0 / n + 1.0 / model.ctx.m)
    if kind == "numeric":
        return {"shift": float(f"{boundary + _Z95 * spread:.3g}"), "unit": "σ", "of": "mean"}
    # a category's share p moves by δ: its sampling spread is at most √(¼ (1/N + 1/M))
    return {"shift": float(f"{boundary + _Z95 * spread / 2:.3g}"), "unit": "share", "of": "a category's share"}
