"""One feature of two versions of a model, compared with the drift measures (serve/drift/measures.py), the
first version (the primary) standing where a drift evaluation has the baseline. The basis depends on what both
versions' blocks carry (rollout_compare.py says when each arises):

- ``bins``: the same baseline's edges: psi, js, ks, wasserstein (in the primary's σ), missing_rate,
  out_of_range and mean_shift, exact on the two blocks; ks and wasserstein with their error bounds;
- ``categories``: the same vocabulary: linf, unseen, psi, js, missing_rate;
- ``sketch``: KLL sketches on both sides: ks between the two sketches' CDFs at both sides' percentiles, within
  the sum of their rank errors, with mean_shift and missing_rate from the moments;
- ``moments``: mean_shift and missing_rate only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypedDict

import numpy as np

from serve.drift import measures as ms
from serve.input_stats.blocks import Block, kll_from_block
from serve.input_stats.document import FeatureMeta

BINS = "bins"
CATEGORIES = "categories"
SKETCH = "sketch"
MOMENTS = "moments"

_NUMERIC = ("psi", "js", "ks", "wasserstein", "missing_rate", "out_of_range", "mean_shift")
_CATEGORICAL = ("linf", "unseen", "psi", "js", "missing_rate")
_SKETCH_RANKS = np.linspace(0.0, 1.0, 101)


class SideMoments(TypedDict):
    """One version's values of a feature over the horizon."""

    count: int  # every value, missing included
    n: int  # finite, non-missing (numeric); non-missing (categorical)
    mean: float | None
    std: float | None
    missing_rate: float | None


class PairMoments(TypedDict):
    primary: SideMoments
    other: SideMoments


class PairView(TypedDict):
    """Both versions' shares on the same groups: the primary's 20 quantile groups (lower edges), or categories."""

    labels: list[str]
    primary: list[float]
    other: list[float]


class FeatureComparisonJson(TypedDict):
    name: str
    role: str  # input | output
    tensor: str
    kind: str
    basis: str | None  # bins | categories | sketch | moments; None: not compared (problem says why)
    samples: dict[str, int]  # "primary", "other": values behind the measures
    measures: dict[str, float]  # the primary as reference (p), the other version as live (q)
    bounds: dict[str, float]  # the true value lies within measure + [0, bound] (ks) or ± bound (others)
    moments: PairMoments | None
    view: PairView | None
    problem: str | None


def compare_feature(
    meta: FeatureMeta, other_meta: FeatureMeta | None, p: Block | None, q: Block | None, primary: str, version: str
) -> FeatureComparisonJson:
    """One feature of the primary (``p``) against the same feature of the other version (``q``)."""
    entry: FeatureComparisonJson = {
        "name": meta["name"], "role": meta["role"], "tensor": meta["tensor"], "kind": meta["kind"], "basis": None,
        "samples": {"primary": int(p["count"]) if p else 0, "other": int(q["count"]) if q else 0},
        "measures": {}, "bounds": {}, "moments": None, "view": None, "problem": None,
    }  # fmt: skip
    if other_meta is None or q is None or p is None:
        missing = version if (other_meta is None or q is None) else primary
        entry["problem"] = f"no statistics of this feature from version {missing} in the horizon"
        return entry
    if other_meta["kind"] != meta["kind"]:
        entry["problem"] = f"{meta['kind']} in version {primary}, {other_meta['kind']} in version {version}"
        return entry
    if meta["kind"] == "categorical":
        _categorical(entry, meta, other_meta, p, q)
    else:
        _numeric(entry, meta, other_meta, p, q)
    return entry


def _numeric(entry: FeatureComparisonJson, meta: FeatureMeta, other: FeatureMeta, p: Block, q: Block) -> None:
    moments: PairMoments = {"primary": _moments(p), "other": _moments(q)}
    entry["moments"] = moments
    edges = meta.get("edges")
    if "bins" in p and "bins" in q and edges is not None and edges == other.get("edges"):
        bp, bq = ms.Binned.from_block(p), ms.Binned.from_block(q)
        entry["samples"] = {"primary": bp.n, "other": bq.n}
        raw = ms.numeric_measures(bp, bq, np.asarray(edges, dtype=np.float64))
        entry["basis"] = BINS
        entry["measures"] = {k: float(raw[k]) for k in _NUMERIC if raw.get(k) is not None}
        entry["bounds"] = {k: float(raw[f"{k}_bound"]) for k in ("ks", "wasserstein") if f"{k}_bound" in raw}
        if "view" in raw:
            view = raw["view"]
            entry["view"] = {"labels": _group_labels(view["groups"], edges), "primary": view["baseline"].tolist(),
                             "other": view["live"].tolist()}  # fmt: skip
        return
    shift = _mean_shift(p, q)
    if shift is not None:
        entry["measures"]["mean_shift"] = shift
    missing_p, missing_q = moments["primary"]["missing_rate"], moments["other"]["missing_rate"]
    if missing_p is not None and missing_q is not None:
        entry["measures"]["missing_rate"] = missing_q - missing_p
    entry["basis"] = MOMENTS
    if "kll" in p and "kll" in q:
        ks = _ks_sketches(p, q)
        if ks is not None:
            entry["measures"]["ks"], entry["bounds"]["ks"] = ks
            entry["basis"] = SKETCH


def _categorical(entry: FeatureComparisonJson, meta: FeatureMeta, other: FeatureMeta, p: Block, q: Block) -> None:
    vocabulary = meta.get("vocabulary")
    if vocabulary is None or vocabulary != other.get("vocabulary") or len(p["counts"]) != len(q["counts"]):
        entry["problem"] = "the two versions count this feature over different vocabularies"
        return
    cp, cq = ms.Categories.from_block(p), ms.Categories.from_block(q)
    raw = ms.categorical_measures(cp, cq)
    entry["basis"] = CATEGORIES
    entry["samples"] = {"primary": cp.count, "other": cq.count}
    entry["measures"] = {k: float(raw[k]) for k in _CATEGORICAL if raw.get(k) is not None}
    if "view" in raw:
        labels = [str(v) for v in vocabulary] + ["(other)"]
        entry["view"] = {"labels": labels, "primary": raw["view"]["baseline"].tolist(),
                         "other": raw["view"]["live"].tolist()}  # fmt: skip


def _moments(block: Block) -> SideMoments:
    count = int(block["count"])
    missing = int(block["missing"]) + int(block.get("nan", 0))
    n = int(block.get("n", count - missing))
    m2 = float(block.get("m2", 0.0))
    return {
        "count": count, "n": n, "mean": block.get("mean"),
        "std": float(np.sqrt(m2 / (n - 1))) if n > 1 else None,
        "missing_rate": missing / count if count else None,
    }  # fmt: skip


def _mean_shift(p: Block, q: Block) -> float | None:
    """|Δ mean| in the primary's σ (as measures.py's mean_shift: a lower bound on W1/σ)."""
    mp, mq = p.get("mean"), q.get("mean")
    if mp is None or mq is None:
        return None
    n = int(p.get("n", 0))
    std = float(np.sqrt(float(p.get("m2", 0.0)) / (n - 1))) if n > 1 else 0.0
    return abs(mq - mp) / max(std, ms.STD_FLOOR)


def _ks_sketches(p: Block, q: Block) -> tuple[float, float] | None:
    """(KS between the two KLL sketches' CDFs at both sides' percentiles, the sum of their rank errors)."""
    sp, sq = kll_from_block(p), kll_from_block(q)
    if sp.is_empty() or sq.is_empty():
        return None
    points = sorted({*sp.get_quantiles(_SKETCH_RANKS.tolist()), *sq.get_quantiles(_SKETCH_RANKS.tolist())})
    fp = np.asarray(sp.get_cdf(points), dtype=np.float64)
    fq = np.asarray(sq.get_cdf(points), dtype=np.float64)
    bound = float(sp.normalized_rank_error(False) + sq.normalized_rank_error(False))
    return float(np.max(np.abs(fp - fq))), bound


def _group_labels(groups: np.ndarray, edges: Sequence[float]) -> list[str]:
    """Lower edge of each group of fine bins (fine bin b spans [edges[b-1], edges[b]))."""
    labels = []
    for g in range(int(groups.max()) + 1 if groups.size else 0):
        lo = int(np.flatnonzero(groups == g)[0]) - 1
        labels.append(f"{edges[lo]:.3g}" if 0 <= lo < len(edges) else "-inf")
    return labels
