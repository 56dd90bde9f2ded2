"""How a batch of one tensor turns into feature values, per view: rows × … → features × rows (views.py)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from serve.scores import as_probabilities


def _float64(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float64, copy=False)


def classifier_views(a: np.ndarray) -> np.ndarray:
    p = as_probabilities(_float64(a))
    ranked = np.sort(p, axis=1)  # K is small; a sort beats partition at these sizes
    top1, top2 = ranked[:, -1], ranked[:, -2]
    # 0 · log(tiny) = 0: the 0 log 0 = 0 convention without a branch.
    entropy = -(p * np.log(np.maximum(p, 1e-300))).sum(axis=1)
    return np.stack([top1, top1 - top2, entropy])


def predicted_class(a: np.ndarray) -> np.ndarray:
    cls = np.argmax(a, axis=1).astype(np.float64)
    if a.dtype.kind == "f":
        cls[np.isnan(a).any(axis=1)] = np.nan
    out: np.ndarray = cls[None, :]
    return out


def _row_moments(flat: np.ndarray) -> list[np.ndarray]:
    x = _float64(flat)
    return [np.sqrt(np.einsum("ij,ij->i", x, x)), x.mean(axis=1), x.std(axis=1)]


def scalar_extract(bytes_like: bool) -> Callable[[np.ndarray], np.ndarray]:
    if bytes_like:
        return lambda a: a.reshape(1, -1)
    return lambda a: _float64(a).reshape(1, -1)


def columns_extract(bytes_like: bool) -> Callable[[np.ndarray], np.ndarray]:
    if bytes_like:
        return lambda a: a.T
    return lambda a: np.ascontiguousarray(a.T, dtype=np.float64)


def flatten_extract(bytes_like: bool) -> Callable[[np.ndarray], np.ndarray]:
    if bytes_like:
        return lambda a: a.reshape(1, -1)
    return lambda a: _float64(a).reshape(1, -1)


def embedding(a: np.ndarray) -> np.ndarray:
    return np.stack(_row_moments(a))


def sequence(a: np.ndarray) -> np.ndarray:
    rows = a.shape[0]
    return np.stack([np.full(rows, a.shape[1], dtype=np.float64), np.count_nonzero(a, axis=1).astype(np.float64)])


def generic(with_length: bool) -> Callable[[np.ndarray], np.ndarray]:
    def extract(a: np.ndarray) -> np.ndarray:
        views = _row_moments(a.reshape(a.shape[0], -1))
        if with_length:
            views.append(np.full(a.shape[0], a.shape[1], dtype=np.float64))
        return np.stack(views)

    return extract
