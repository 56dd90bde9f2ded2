"""How a classifier's output row reads as class probabilities: one rule for the statistics' views, the join
store and the baseline, so that a confidence, a predicted class and a label's probability mean the same in each."""

from __future__ import annotations

import numpy as np

# A row is already a distribution when it is non-negative and sums to 1 within this.
DISTRIBUTION_TOLERANCE = 1e-3


def as_probabilities(x: np.ndarray) -> np.ndarray:
    """Rows (rows x K) that are distributions as they are; others (logits) through softmax."""
    is_distribution = (x.min(axis=1) >= 0) & (np.abs(x.sum(axis=1) - 1.0) <= DISTRIBUTION_TOLERANCE)
    if is_distribution.all():
        return x
    e = np.exp(x - x.max(axis=1, keepdims=True))
    out: np.ndarray = np.where(is_distribution[:, None], x, e / e.sum(axis=1, keepdims=True))
    return out
