"""The JSON shape of one feature's block (blocks.py describes the fields), and the codecs its parts share.

``Block`` lists the fields of every kind; ``kind`` says which are present. One type rather than a
union of three, because readers (the monitor, the drift measures) index a block by the kind they
already know from the baseline.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Sequence
from typing import Any, Required, TypedDict

import numpy as np


class MomentsJson(TypedDict):
    """Mergeable moments (Chan et al.) of the finite values; mean, min and max are null when n is 0."""

    n: int
    mean: float | None
    m2: float
    min: float | None
    max: float | None


class BinsJson(TypedDict):
    counts: list[int]
    sums: list[float]
    tail_sumsq: list[float]  # [below the first edge, at or above the last]


class KllJson(TypedDict):
    k: int
    sketch: str  # base64 of a DataSketches kll_floats_sketch


class FrequentJson(TypedDict):
    lg_max_map_size: int
    sketch: str | None  # base64 of a DataSketches frequent_strings_sketch; null when nothing was seen
    top: list[list[Any]]  # [item, estimate, lower bound, upper bound], most frequent first


class Block(TypedDict, total=False):
    kind: Required[str]  # "numeric" | "categorical" | "bytes"
    count: Required[int]
    missing: Required[int]
    # numeric
    nan: int
    posinf: int
    neginf: int
    n: int
    mean: float | None
    m2: float
    min: float | None
    max: float | None
    bins: BinsJson  # with baseline edges
    kll: KllJson  # without them
    # categorical
    counts: list[int]
    other: int
    other_items: FrequentJson
    # bytes
    length: MomentsJson
    items: FrequentJson


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"))


def finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def chan_merge(
    n_a: Any, mean_a: Any, m2_a: Any, n_b: Any, mean_b: Any, m2_b: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Combine (n, mean, M2) of two disjoint samples (Chan, Golub & LeVeque); works on arrays.

    An empty side (n = 0) must carry mean 0 and M2 0; then no branch is needed: the weight
    of the other side is n_b / max(n, 1), which is 0 or 1 exactly.
    """
    n = np.add(n_a, n_b, dtype=np.int64)
    frac = n_b / np.maximum(n, 1)
    delta = np.subtract(mean_b, mean_a, dtype=np.float64)
    mean = mean_a + delta * frac
    m2 = m2_a + m2_b + delta * delta * n_a * frac
    return n, mean, m2


class MomentArrays:
    """n, mean, M2, min and max of d features, in arrays; the numeric and BYTES groups hold one each."""

    __slots__ = ("n", "mean", "m2", "min", "max")

    def __init__(self, d: int) -> None:
        self.n = np.zeros(d, np.int64)
        self.mean = np.zeros(d)
        self.m2 = np.zeros(d)
        self.min = np.full(d, np.inf)
        self.max = np.full(d, -np.inf)

    def add(self, n: Any, mean: Any, m2: Any) -> None:
        self.n, self.mean, self.m2 = chan_merge(self.n, self.mean, self.m2, n, mean, m2)

    def merge(self, other: MomentArrays) -> None:
        self.add(other.n, other.mean, other.m2)
        np.minimum(self.min, other.min, out=self.min)
        np.maximum(self.max, other.max, out=self.max)

    @classmethod
    def from_json(cls, moments: Sequence[MomentsJson]) -> MomentArrays:
        """One feature per entry (an empty one gets mean 0, as ``chan_merge`` needs)."""
        arrays = cls.__new__(cls)
        arrays.n = np.array([m["n"] for m in moments], np.int64)
        floats = np.array(
            [
                (
                    m["mean"] if m["mean"] is not None else 0.0,
                    m["m2"],
                    m["min"] if m["min"] is not None else np.inf,
                    m["max"] if m["max"] is not None else -np.inf,
                )
                for m in moments
            ],
            np.float64,
        )
        arrays.mean, arrays.m2, arrays.min, arrays.max = floats.reshape(-1, 4).T.copy()
        return arrays

    def to_json(self) -> list[MomentsJson]:
        n, mean, m2 = self.n.tolist(), self.mean.tolist(), self.m2.tolist()
        return [
            {
                "n": n[j],
                "mean": mean[j] if n[j] else None,
                "m2": m2[j],
                "min": finite_or_none(lo),
                "max": finite_or_none(hi),
            }
            for j, (lo, hi) in enumerate(zip(self.min.tolist(), self.max.tolist(), strict=True))
        ]
