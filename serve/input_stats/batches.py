"""What the recorder's worker makes of queued batches: a sample of their rows, and one batch of several.

Tensors are keyed ``"input:<name>"`` / ``"output:<name>"``, rows on axis 0.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from serve.input_stats.options import StatsOptions


def rows_of(tensors: Mapping[str, np.ndarray]) -> int:
    for array in tensors.values():
        return int(array.shape[0]) if array.ndim else 1
    return 0


def sample_rows(
    tensors: dict[str, np.ndarray], rows: int, options: StatsOptions, rng: np.random.Generator
) -> tuple[dict[str, np.ndarray], int]:
    """The rows ``sample_rate`` and ``max_rows_per_batch`` keep, and how many they are."""
    o = options
    if o.sample_rate >= 1 and (o.max_rows_per_batch is None or rows <= o.max_rows_per_batch):
        return tensors, rows
    keep = np.arange(rows)
    if o.sample_rate < 1:
        keep = np.flatnonzero(rng.random(rows) < o.sample_rate)
    if o.max_rows_per_batch is not None and keep.size > o.max_rows_per_batch:
        keep = np.sort(rng.choice(keep, o.max_rows_per_batch, replace=False))
    sampled = {k: (v[keep] if v.ndim and v.shape[0] == rows else v) for k, v in tensors.items()}
    return sampled, int(keep.size)


def coalesce(batches: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    """One concatenated batch when every batch has the same tensors with the same row shapes."""
    if len(batches) == 1:
        return batches
    first = batches[0]
    for b in batches[1:]:
        if b.keys() != first.keys():
            return batches
        for k, v in b.items():
            f = first[k]
            if v.ndim == 0 or v.shape[1:] != f.shape[1:] or v.dtype != f.dtype:
                return batches
    return [{k: np.concatenate([b[k] for b in batches]) for k in first}]
