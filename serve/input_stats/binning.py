"""Bin edges and bin assignment, shared by the server and ``serve baseline``.

One rule everywhere, so that live counts and baseline counts mean the same thing:

* ``edges`` is a 1-D float64 array, finite and strictly increasing (``E`` edges).
* There are ``E + 1`` bins. Bin 0 is the open lower tail ``(-inf, e0)``, bin ``i`` is
  ``[e(i-1), e(i))`` and bin ``E`` is the open upper tail ``[e(E-1), +inf)``; that is
  ``numpy.searchsorted(edges, x, side="right")``, the number of edges ``<= x``.
* Only finite, non-missing values are binned; NaN, +Inf, -Inf and declared missing
  sentinels are counted apart (see blocks.py).

Baseline edges are the training minimum, training quantiles (``inverted_cdf``, so every
edge is an observed value and discrete features get one bin per value) and the float
just above the training maximum. The two tail bins therefore hold exactly the values
outside the training range, which is what an out-of-range rate needs.

Edges are values of the datatype the server bins (``dtype``: FP32 for most models), since
the server bins what clients send. A float64 edge such as 26.96 lies between two FP32
values: 26.96 sent as FP32 is 26.9599991, which falls below it, while the training file's
26.96 sat on it, and a feature whose values repeat (two decimals) moves a whole bin's mass
(issue 17). So ``serve baseline`` casts training values to the datatype before anything is
counted (its edges are then observed FP32 values), and ``edges_from_quantiles`` rounds each
edge to the nearest value of the datatype, which is what a client's cast does to the value
the edge came from: a value equal to an edge stays on it, in the baseline and in the server.
The edge above the maximum is the next value of the datatype, so the upper tail is still
exactly the values above the training range.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

DEFAULT_QUANTILES = 100
# Extra levels in the tails, where percentile bins are too coarse to see a shift (MONITOR.md §4.3).
DEFAULT_TAIL_LEVELS: tuple[float, ...] = (0.001, 0.005, 0.995, 0.999)


def quantile_levels(
    n_quantiles: int = DEFAULT_QUANTILES, tail_levels: Sequence[float] = DEFAULT_TAIL_LEVELS
) -> np.ndarray:
    """The interior quantile levels: ``i / n_quantiles`` for 0 < i < n plus the tail levels, sorted."""
    if n_quantiles < 1:
        raise ValueError("n_quantiles must be at least 1")
    levels = np.arange(1, n_quantiles) / n_quantiles
    extra = np.asarray(tail_levels, dtype=np.float64)
    if extra.size and (extra.min() <= 0 or extra.max() >= 1):
        raise ValueError("tail levels must lie strictly between 0 and 1")
    return np.unique(np.concatenate([levels, extra]))


def representable(edges: np.ndarray, dtype: np.dtype | type = np.float64) -> np.ndarray:
    """Each edge as the nearest value of the float type ``dtype`` (FP32, FP16), in float64; other types
    unchanged. Edges beyond the type's range become infinite (the caller drops them)."""
    e = np.asarray(edges, dtype=np.float64)
    kind = np.dtype(dtype)
    if kind.kind != "f" or kind.itemsize >= 8:
        return e
    with np.errstate(over="ignore"):  # the same cast a client makes
        narrow: np.ndarray = e.astype(kind).astype(np.float64)
    return narrow


def edges_from_quantiles(
    minimum: float,
    quantiles: Sequence[float] | np.ndarray,
    maximum: float,
    dtype: np.dtype | type = np.float64,
) -> np.ndarray:
    """Edges from a feature's range and its quantile values (e.g. from a streaming first pass), as values
    of ``dtype``, the datatype of the values binned against them; the last is the next one above ``maximum``."""
    kind = np.dtype(dtype) if np.dtype(dtype).kind == "f" else np.dtype(np.float64)
    top = representable(np.array([float(maximum)]), kind)
    with np.errstate(over="ignore"):
        upper = np.nextafter(top.astype(kind), kind.type(np.inf)).astype(np.float64)
    inner = np.concatenate([[float(minimum)], np.asarray(quantiles, dtype=np.float64).ravel()])
    values = np.concatenate([representable(inner, kind), upper])
    values = values[np.isfinite(values)]
    return np.unique(values)


def compute_edges(
    values: np.ndarray,
    n_quantiles: int = DEFAULT_QUANTILES,
    tail_levels: Sequence[float] = DEFAULT_TAIL_LEVELS,
    dtype: np.dtype | type = np.float64,
) -> np.ndarray:
    """Edges from training values (already values of ``dtype``); non-finite values are ignored. No values →
    no edges (one bin)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return np.empty(0, dtype=np.float64)
    q = np.quantile(v, quantile_levels(n_quantiles, tail_levels), method="inverted_cdf")
    return edges_from_quantiles(v.min(), q, v.max(), dtype)


def validate_edges(edges: Sequence[float] | np.ndarray, name: str = "") -> np.ndarray:
    e = np.asarray(edges, dtype=np.float64)
    if e.ndim != 1:
        raise ValueError(f"{name}: edges must be a flat list")
    if not np.isfinite(e).all():
        raise ValueError(f"{name}: edges must be finite")
    if e.size > 1 and not (np.diff(e) > 0).all():
        raise ValueError(f"{name}: edges must be strictly increasing")
    return e


def assign_bins(edges: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Bin index of each value (0 … len(edges)); callers pass finite values only."""
    return np.searchsorted(edges, values, side="right")


class BinLayout:
    """Bins of several features laid end to end, so one ``bincount`` counts them all.

    Feature ``j`` owns flat slots ``offsets[j] … offsets[j] + len(edges[j])``; slot
    ``total`` is a scratch slot for values that must not be counted.
    """

    __slots__ = ("edges", "offsets", "sizes", "total", "_below")

    def __init__(self, edges: Sequence[np.ndarray]) -> None:
        self.edges = [validate_edges(e) for e in edges]
        self.sizes = np.array([e.size + 1 for e in self.edges], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)[:-1]]).astype(np.int64)
        self.total = int(self.sizes.sum())
        # For finite x, e <= x exactly when nextafter(e, -inf) < x: searchsorted's default side
        # ("left") on these gives the "right" rule, and skips parsing the side argument per call.
        self._below = [np.nextafter(e, -np.inf) for e in self.edges]

    def flat_index(self, xt: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
        """Flat slot of every value of ``xt`` (features × rows, float64); invalid ones → ``total``."""
        d, n = xt.shape
        idx = np.empty((d, n), dtype=np.int64)
        # One searchsorted per feature: measured faster than one call over a combined key.
        for j, below in enumerate(self._below):
            idx[j] = below.searchsorted(xt[j])
        idx += self.offsets[:, None]
        if valid is not None:
            idx[~valid] = self.total
        return idx.ravel()

    def split(self, flat: np.ndarray) -> list[np.ndarray]:
        """Per-feature slices of a flat per-slot array."""
        return [flat[o : o + s] for o, s in zip(self.offsets.tolist(), self.sizes.tolist(), strict=True)]
