"""The numeric group: counts, moments, and per feature either bins over the baseline's edges or a KLL sketch.

Block fields (the ``numeric`` kind) are described in blocks.py.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import datasketches as ds
import numpy as np

from serve.input_stats.binning import BinLayout, validate_edges
from serve.input_stats.block_json import Block, MomentArrays, MomentsJson, b64, unb64

DEFAULT_KLL_K = 200


class NumericSpec:
    """What a numeric group tracks; shared by every window's group of one extractor."""

    kind = "numeric"

    def __init__(
        self,
        names: Sequence[str],
        edges: Sequence[np.ndarray | Sequence[float] | None] | None = None,
        missing_values: Sequence[Sequence[float]] | None = None,
        kll_k: int = DEFAULT_KLL_K,
    ) -> None:
        self.names = tuple(names)
        d = len(self.names)
        raw_edges = list(edges) if edges is not None else [None] * d
        self.edges: list[np.ndarray | None] = [
            None if e is None else validate_edges(e, n) for e, n in zip(raw_edges, self.names, strict=True)
        ]
        self.missing_values = [tuple(float(v) for v in m) for m in (missing_values or [()] * d)]
        self.kll_k = kll_k
        self.binned = np.array([j for j, e in enumerate(self.edges) if e is not None], dtype=np.int64)
        self.sketched = np.array(
            [j for j, e in enumerate(self.edges) if e is None] if kll_k > 0 else [], dtype=np.int64
        )
        self.all_binned = self.binned.size == d
        self.layout = BinLayout([e for e in self.edges if e is not None]) if self.binned.size else None
        self.with_missing = [j for j, m in enumerate(self.missing_values) if m]
        if self.layout is not None:
            self.tail_lo = self.layout.offsets
            self.tail_hi = self.layout.offsets + self.layout.sizes - 1

    @classmethod
    def for_merging(cls, features: Sequence[Sequence[Block]]) -> NumericSpec:
        """A spec that every block of every feature fits (``features[j]``: feature j's blocks): what merging
        them needs, the number of bins and the KLL k. A block carries no edges, and a merge needs none:
        stand-in edges give the bins their number."""
        shapes: list[int | None] = []
        for blocks in features:
            binned = {"bins" in b for b in blocks}
            if len(binned) > 1 or len({"kll" in b for b in blocks}) > 1:
                raise ValueError("cannot merge a binned block with a sketched one (different baselines?)")
            sizes = list(dict.fromkeys(len(b["bins"]["counts"]) for b in blocks if "bins" in b))
            if len(sizes) > 1:
                raise ValueError(f"cannot merge bins of different lengths ({' and '.join(map(str, sizes))})")
            shapes.append(sizes[0] if sizes else None)
        kll_k = min((b["kll"]["k"] for blocks in features for b in blocks if "kll" in b), default=0)
        return _merging_spec(tuple(shapes), kll_k)

    def new_group(self) -> NumericGroup:
        return NumericGroup(self)

    def group_from_json(self, blocks: Sequence[Block]) -> NumericGroup:
        return NumericGroup.from_json(self, blocks)


@functools.lru_cache(maxsize=256)
def _merging_spec(bins: tuple[int | None, ...], kll_k: int) -> NumericSpec:
    """Specs are never changed once made, so merges share one per shape (it costs more than the merge)."""
    edges = [None if size is None else np.arange(size - 1, dtype=np.float64) for size in bins]
    return NumericSpec([""] * len(bins), edges, kll_k=kll_k)


class NumericGroup:
    __slots__ = (
        "spec", "count", "missing", "nan", "posinf", "neginf", "moments", "bin_counts", "bin_sums", "tail_sumsq",
        "kll",
    )  # fmt: skip

    def __init__(self, spec: NumericSpec) -> None:
        d = len(spec.names)
        self.spec = spec
        self.count = np.zeros(d, np.int64)
        self.missing = np.zeros(d, np.int64)
        self.nan = np.zeros(d, np.int64)
        self.posinf = np.zeros(d, np.int64)
        self.neginf = np.zeros(d, np.int64)
        self.moments = MomentArrays(d)  # of the finite, non-missing values
        total = spec.layout.total if spec.layout is not None else 0
        self.bin_counts = np.zeros(total, np.int64)
        self.bin_sums = np.zeros(total)
        self.tail_sumsq = np.zeros((spec.binned.size, 2))
        self.kll = ds.vector_of_kll_floats_sketches(spec.kll_k, int(spec.sketched.size)) if spec.sketched.size else None

    @classmethod
    def from_json(cls, spec: NumericSpec, blocks: Sequence[Block]) -> NumericGroup:
        """The group ``to_json`` wrote these blocks of (one per feature of ``spec``)."""
        # Arrays made from the lists at once, not filled in element by element: merges of many small
        # blocks (the monitor's, window by window) pay this per block.
        group = cls.__new__(cls)
        group.spec = spec
        counters = np.array([(b["count"], b["missing"], b["nan"], b["posinf"], b["neginf"]) for b in blocks], np.int64)
        group.count, group.missing, group.nan, group.posinf, group.neginf = counters.reshape(-1, 5).T.copy()
        group.moments = MomentArrays.from_json([_moments_of(b) for b in blocks])
        bins = [blocks[j]["bins"] for j in spec.binned.tolist()]
        group.bin_counts = np.array(_chained([b["counts"] for b in bins]), np.int64)
        group.bin_sums = np.array(_chained([b["sums"] for b in bins]), np.float64)
        group.tail_sumsq = np.array([b["tail_sumsq"] for b in bins], np.float64).reshape(len(bins), 2)
        if group.bin_counts.size != (spec.layout.total if spec.layout is not None else 0):
            raise ValueError("blocks with other bins than the spec's")
        group.kll = (
            ds.vector_of_kll_floats_sketches(spec.kll_k, int(spec.sketched.size)) if spec.sketched.size else None
        )
        for i, j in enumerate(spec.sketched.tolist()):
            assert group.kll is not None
            group.kll.deserialize(unb64(blocks[j]["kll"]["sketch"]), i)
        return group

    def update(self, values: np.ndarray) -> None:
        """``values``: float64, features × rows."""
        spec = self.spec
        xt = np.ascontiguousarray(values, dtype=np.float64)
        d, rows = xt.shape
        if rows == 0:
            return
        self.count += rows
        finite = np.isfinite(xt)
        miss = None
        if spec.with_missing:
            miss = np.zeros_like(finite)
            for j in spec.with_missing:
                miss[j] = np.isin(xt[j], spec.missing_values[j])
            self.missing += miss.sum(axis=1)
        all_finite = bool(finite.all())
        if all_finite and (miss is None or not miss.any()):
            # The common case: no masks, no copies.
            valid = None
            cnt: Any = rows
            xv = xt
        else:
            if not all_finite:
                self.nan += np.isnan(xt).sum(axis=1)
                self.posinf += (xt == np.inf).sum(axis=1)
                self.neginf += (xt == -np.inf).sum(axis=1)
            valid = finite if miss is None else finite & ~miss
            cnt = valid.sum(axis=1)
            xv = np.where(valid, xt, 0.0)
        # Invalid entries of xv are 0, so a feature without valid values gets mean 0, as chan_merge needs.
        batch_mean = xv.sum(axis=1) / np.maximum(cnt, 1)
        dev = xv - batch_mean[:, None]
        if valid is not None:
            dev[~valid] = 0.0
        batch_m2 = np.einsum("ij,ij->i", dev, dev)
        moments = self.moments
        moments.add(cnt, batch_mean, batch_m2)
        if valid is None:
            np.minimum(moments.min, xt.min(axis=1), out=moments.min)
            np.maximum(moments.max, xt.max(axis=1), out=moments.max)
        else:
            np.minimum(moments.min, np.where(valid, xt, np.inf).min(axis=1), out=moments.min)
            np.maximum(moments.max, np.where(valid, xt, -np.inf).max(axis=1), out=moments.max)
        if spec.layout is not None:
            self._update_bins(xv, valid)
        if self.kll is not None:
            xs = xt if spec.sketched.size == d else xt[spec.sketched]
            if valid is not None:
                xs = np.where(valid[spec.sketched], xs, np.nan)  # the sketch skips NaN
            # rows × features, read column-major from the feature-major buffer without a copy.
            self.kll.update(np.ascontiguousarray(xs, dtype=np.float32).T, order="F")

    def _update_bins(self, xv: np.ndarray, valid: np.ndarray | None) -> None:
        spec = self.spec
        layout = spec.layout
        assert layout is not None
        xb = xv if spec.all_binned else xv[spec.binned]
        vb = valid if (valid is None or spec.all_binned) else valid[spec.binned]
        flat = layout.flat_index(xb, vb)
        slots = layout.total + 1  # the last slot collects invalid values and is dropped
        weights = xb.ravel()
        self.bin_counts += np.bincount(flat, minlength=slots)[:-1]
        self.bin_sums += np.bincount(flat, weights=weights, minlength=slots)[:-1]
        sumsq = np.bincount(flat, weights=weights * weights, minlength=slots)
        self.tail_sumsq[:, 0] += sumsq[spec.tail_lo]
        self.tail_sumsq[:, 1] += sumsq[spec.tail_hi]

    def merge(self, other: NumericGroup) -> None:
        for name in ("count", "missing", "nan", "posinf", "neginf", "bin_counts", "bin_sums", "tail_sumsq"):
            getattr(self, name).__iadd__(getattr(other, name))
        self.moments.merge(other.moments)
        if self.kll is not None and other.kll is not None:
            self.kll.merge(other.kll)

    def copy(self) -> NumericGroup:
        twin = NumericGroup(self.spec)
        twin.merge(self)
        return twin

    def to_json(self) -> list[Block]:
        spec = self.spec
        blocks: list[Block] = []
        layout = spec.layout
        counts = layout.split(self.bin_counts) if layout is not None else []
        sums = layout.split(self.bin_sums) if layout is not None else []
        binned_pos = {int(j): i for i, j in enumerate(spec.binned)}
        sketched_pos = {int(j): i for i, j in enumerate(spec.sketched)}
        sketches = self.kll.serialize() if self.kll is not None else []
        count, missing, nan = self.count.tolist(), self.missing.tolist(), self.nan.tolist()
        posinf, neginf = self.posinf.tolist(), self.neginf.tolist()
        for j, m in enumerate(self.moments.to_json()):
            block: Block = {
                "kind": "numeric", "count": count[j], "missing": missing[j], "nan": nan[j], "posinf": posinf[j],
                "neginf": neginf[j], "n": m["n"], "mean": m["mean"], "m2": m["m2"], "min": m["min"], "max": m["max"],
            }  # fmt: skip
            if j in binned_pos:
                i = binned_pos[j]
                block["bins"] = {
                    "counts": counts[i].tolist(),
                    "sums": sums[i].tolist(),
                    "tail_sumsq": self.tail_sumsq[i].tolist(),
                }
            if j in sketched_pos:
                block["kll"] = {"k": spec.kll_k, "sketch": b64(sketches[sketched_pos[j]])}
            blocks.append(block)
        return blocks


def _chained(lists: list[list[Any]]) -> list[Any]:
    return lists[0] if len(lists) == 1 else [x for part in lists for x in part]


def _moments_of(block: Block) -> MomentsJson:
    """A numeric block holds its moments inline; the BYTES block under ``length``."""
    return {"n": block["n"], "mean": block["mean"], "m2": block["m2"], "min": block["min"], "max": block["max"]}
