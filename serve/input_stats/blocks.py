"""Mergeable accumulators for groups of features, and merging of their JSON blocks.

A *group* holds the statistics of the ``d`` features one extractor yields (e.g. every
column of a 2-D input) in arrays, so a batch updates them with a few vectorised numpy
calls. ``update`` takes feature-major values (``d × rows``); ``merge`` adds another
group with the same spec; ``to_json`` writes one block per feature. Every field is a
sum, a min/max, mergeable moments (Chan et al.) or a mergeable sketch, so a window of
one replica, the windows of many replicas and the total since start all combine with
``merge`` (in memory) or ``merge_blocks`` (on the JSON), without double counting as
long as each source is added once.

Blocks (the ``kind`` field):

* ``numeric``: ``count`` (values seen), ``missing`` (declared sentinels), ``nan``,
  ``posinf``, ``neginf``; over the remaining finite values ``n``, ``mean``, ``m2``
  (sum of squared deviations; variance = m2 / n or m2 / (n - 1)), ``min``, ``max``; with
  baseline edges ``bins`` = ``counts`` and ``sums`` per bin (binning.py) and
  ``tail_sumsq`` (sum of squares in the two open tail bins); without edges ``kll``, an
  Apache DataSketches KLL float sketch (base64; values held as float32), normalized rank
  error 1.33 % at k = 200 (single-sided, 99 % confidence; 1.65 % for PMF queries).
* ``categorical``: ``count``, ``missing``, ``counts`` over the baseline vocabulary (in
  its order), ``other``, and ``other_items``, a frequent-items sketch naming the values
  outside the vocabulary.
* ``bytes``: ``count``, ``missing`` (empty or declared), ``length`` moments of the
  UTF-8 byte length, and ``items``, a frequent-items sketch of the values.

Frequent-items sketches (Misra–Gries, DataSketches ``frequent_strings_sketch``) are
exact while fewer than 0.75·2^lg distinct values arrive; beyond that an estimate is
within ``epsilon · total weight`` (epsilon = 3.5 / 2^lg, 2.7 % at lg = 7). Values are
truncated to ``ITEM_MAX_CHARS`` characters to bound their memory.
"""

from __future__ import annotations

import base64
import math
from collections import Counter
from collections.abc import Sequence
from typing import Any, Protocol

import datasketches as ds
import numpy as np

from serve.input_stats.binning import BinLayout, validate_edges

DEFAULT_KLL_K = 200
DEFAULT_FREQUENT_LG = 7
ITEM_MAX_CHARS = 64
TOP_ITEMS = 10

Block = dict[str, Any]


class Group(Protocol):
    def update(self, values: np.ndarray) -> None: ...

    def merge(self, other: Any) -> None: ...

    def copy(self) -> Any: ...

    def to_json(self) -> list[Block]: ...


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


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"))


def _finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


# ---------------------------------------------------------------- numeric


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

    def new_group(self) -> NumericGroup:
        return NumericGroup(self)


class NumericGroup:
    __slots__ = (
        "spec", "count", "missing", "nan", "posinf", "neginf", "n", "mean", "m2", "min", "max",
        "bin_counts", "bin_sums", "tail_sumsq", "kll",
    )  # fmt: skip

    def __init__(self, spec: NumericSpec) -> None:
        d = len(spec.names)
        self.spec = spec
        self.count = np.zeros(d, np.int64)
        self.missing = np.zeros(d, np.int64)
        self.nan = np.zeros(d, np.int64)
        self.posinf = np.zeros(d, np.int64)
        self.neginf = np.zeros(d, np.int64)
        self.n = np.zeros(d, np.int64)
        self.mean = np.zeros(d)
        self.m2 = np.zeros(d)
        self.min = np.full(d, np.inf)
        self.max = np.full(d, -np.inf)
        total = spec.layout.total if spec.layout is not None else 0
        self.bin_counts = np.zeros(total, np.int64)
        self.bin_sums = np.zeros(total)
        self.tail_sumsq = np.zeros((spec.binned.size, 2))
        self.kll = ds.vector_of_kll_floats_sketches(spec.kll_k, int(spec.sketched.size)) if spec.sketched.size else None

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
        self.n, self.mean, self.m2 = chan_merge(self.n, self.mean, self.m2, cnt, batch_mean, batch_m2)
        if valid is None:
            np.minimum(self.min, xt.min(axis=1), out=self.min)
            np.maximum(self.max, xt.max(axis=1), out=self.max)
        else:
            np.minimum(self.min, np.where(valid, xt, np.inf).min(axis=1), out=self.min)
            np.maximum(self.max, np.where(valid, xt, -np.inf).max(axis=1), out=self.max)
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
        self.n, self.mean, self.m2 = chan_merge(self.n, self.mean, self.m2, other.n, other.mean, other.m2)
        np.minimum(self.min, other.min, out=self.min)
        np.maximum(self.max, other.max, out=self.max)
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
        for j in range(len(spec.names)):
            n = int(self.n[j])
            block: Block = {
                "kind": "numeric",
                "count": int(self.count[j]),
                "missing": int(self.missing[j]),
                "nan": int(self.nan[j]),
                "posinf": int(self.posinf[j]),
                "neginf": int(self.neginf[j]),
                "n": n,
                "mean": float(self.mean[j]) if n else None,
                "m2": float(self.m2[j]),
                "min": _finite_or_none(self.min[j]),
                "max": _finite_or_none(self.max[j]),
            }
            if j in binned_pos:
                i = binned_pos[j]
                block["bins"] = {
                    "counts": counts[i].tolist(),
                    "sums": sums[i].tolist(),
                    "tail_sumsq": self.tail_sumsq[i].tolist(),
                }
            if j in sketched_pos:
                block["kll"] = {"k": spec.kll_k, "sketch": _b64(sketches[sketched_pos[j]])}
            blocks.append(block)
        return blocks


# ---------------------------------------------------------------- frequent items


def item_key(value: Any) -> str:
    """The string under which a categorical or BYTES value is counted and named."""
    if isinstance(value, (bytes, bytearray, memoryview, np.bytes_)):
        text = bytes(value).decode("utf-8", errors="backslashreplace")
    elif isinstance(value, (float, np.floating)):
        f = float(value)
        text = str(int(f)) if f.is_integer() else repr(f)
    else:
        text = str(value)
    return text[:ITEM_MAX_CHARS]


def _frequent_json(sketch: Any, lg: int) -> Block:
    if sketch is None:
        return {"lg_max_map_size": lg, "sketch": None, "top": []}
    items = sketch.get_frequent_items(ds.frequent_items_error_type.NO_FALSE_NEGATIVES)
    items.sort(key=lambda t: (-t[1], t[0]))
    return {
        "lg_max_map_size": lg,
        "sketch": _b64(sketch.serialize()),
        "top": [[item, int(est), int(lo), int(hi)] for item, est, lo, hi in items[:TOP_ITEMS]],
    }


def _merge_frequent(target: Any, other: Any) -> Any:
    if other is None:
        return target
    if target is None:
        return ds.frequent_strings_sketch.deserialize(other.serialize())
    target.merge(other)
    return target


# ---------------------------------------------------------------- categorical


class CategoricalSpec:
    """Exact counts over a declared vocabulary; numbers compare as float64, anything else as strings."""

    kind = "categorical"

    def __init__(
        self,
        names: Sequence[str],
        vocabularies: Sequence[Sequence[Any]],
        missing_values: Sequence[Sequence[Any]] | None = None,
        lg_max_map_size: int = DEFAULT_FREQUENT_LG,
    ) -> None:
        self.names = tuple(names)
        self.vocabularies = [list(v) for v in vocabularies]
        if len(self.vocabularies) != len(self.names):
            raise ValueError("one vocabulary per categorical feature")
        self.missing_values = [tuple(m) for m in (missing_values or [()] * len(self.names))]
        self.lg = lg_max_map_size
        self.numeric: list[bool] = []
        self.sorted_vocab: list[np.ndarray] = []
        self.order: list[np.ndarray] = []
        self.index: list[dict[str, int]] = []
        self.missing_keys: list[frozenset[str]] = []
        self.missing_numbers: list[np.ndarray] = []
        for vocab, missing in zip(self.vocabularies, self.missing_values, strict=True):
            numeric = bool(vocab) and all(
                isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) for v in vocab
            )
            self.numeric.append(numeric)
            if numeric:
                arr = np.asarray(vocab, dtype=np.float64)
                order = np.argsort(arr, kind="stable")
                self.sorted_vocab.append(arr[order])
                self.order.append(order)
            else:
                self.sorted_vocab.append(np.empty(0))
                self.order.append(np.empty(0, np.int64))
            self.index.append({item_key(v): i for i, v in enumerate(vocab)})
            self.missing_keys.append(frozenset(item_key(v) for v in missing) | {""})
            nums = [float(v) for v in missing if isinstance(v, (int, float)) and not isinstance(v, bool)]
            self.missing_numbers.append(np.asarray(nums, dtype=np.float64))

    def new_group(self) -> CategoricalGroup:
        return CategoricalGroup(self)


class CategoricalGroup:
    __slots__ = ("spec", "count", "missing", "other", "counts", "frequent")

    def __init__(self, spec: CategoricalSpec) -> None:
        d = len(spec.names)
        self.spec = spec
        self.count = np.zeros(d, np.int64)
        self.missing = np.zeros(d, np.int64)
        self.other = np.zeros(d, np.int64)
        self.counts = [np.zeros(len(v), np.int64) for v in spec.vocabularies]
        self.frequent: list[Any] = [None] * d  # created on the first unseen value

    def update(self, values: np.ndarray) -> None:
        """``values``: features × rows, numbers or objects (bytes / str)."""
        for j in range(values.shape[0]):
            col = values[j]
            self.count[j] += col.shape[0]
            if self.spec.numeric[j] and col.dtype.kind in "biuf":
                self._update_numbers(j, col.astype(np.float64, copy=False))
            else:
                self._update_keys(j, Counter(col.tolist()))

    def _update_numbers(self, j: int, col: np.ndarray) -> None:
        spec = self.spec
        miss = np.isnan(col)
        if spec.missing_numbers[j].size:
            miss |= np.isin(col, spec.missing_numbers[j])
        vocab = spec.sorted_vocab[j]
        pos = np.minimum(np.searchsorted(vocab, col), vocab.size - 1)
        hit = (vocab[pos] == col) & ~miss
        self.missing[j] += int(miss.sum())
        self.counts[j] += np.bincount(spec.order[j][pos[hit]], minlength=vocab.size)
        other = ~hit & ~miss
        if other.any():
            self.other[j] += int(other.sum())
            values, counts = np.unique(col[other], return_counts=True)
            self._remember(j, ((item_key(v), int(c)) for v, c in zip(values.tolist(), counts.tolist(), strict=True)))

    def _update_keys(self, j: int, counted: Counter[Any]) -> None:
        spec = self.spec
        index, missing_keys = spec.index[j], spec.missing_keys[j]
        unseen: list[tuple[str, int]] = []
        for value, c in counted.items():
            if isinstance(value, float) and math.isnan(value):
                self.missing[j] += c
                continue
            key = item_key(value)
            if key in missing_keys:
                self.missing[j] += c
            elif key in index:
                self.counts[j][index[key]] += c
            else:
                self.other[j] += c
                unseen.append((key, c))
        if unseen:
            self._remember(j, unseen)

    def _remember(self, j: int, items: Any) -> None:
        sketch = self.frequent[j]
        if sketch is None:
            sketch = self.frequent[j] = ds.frequent_strings_sketch(self.spec.lg)
        for key, c in items:
            sketch.update(key, c)

    def merge(self, other: CategoricalGroup) -> None:
        self.count += other.count
        self.missing += other.missing
        self.other += other.other
        for mine, theirs in zip(self.counts, other.counts, strict=True):
            mine += theirs
        self.frequent = [_merge_frequent(a, b) for a, b in zip(self.frequent, other.frequent, strict=True)]

    def copy(self) -> CategoricalGroup:
        twin = CategoricalGroup(self.spec)
        twin.merge(self)
        return twin

    def to_json(self) -> list[Block]:
        return [
            {
                "kind": "categorical",
                "count": int(self.count[j]),
                "missing": int(self.missing[j]),
                "counts": self.counts[j].tolist(),
                "other": int(self.other[j]),
                "other_items": _frequent_json(self.frequent[j], self.spec.lg),
            }
            for j in range(len(self.spec.names))
        ]


# ---------------------------------------------------------------- BYTES


class BytesSpec:
    kind = "bytes"

    def __init__(
        self,
        names: Sequence[str],
        missing_values: Sequence[Sequence[Any]] | None = None,
        lg_max_map_size: int = DEFAULT_FREQUENT_LG,
    ) -> None:
        self.names = tuple(names)
        self.missing_keys = [
            frozenset(item_key(v) for v in m) | {""} for m in (missing_values or [()] * len(self.names))
        ]
        self.lg = lg_max_map_size

    def new_group(self) -> BytesGroup:
        return BytesGroup(self)


class BytesGroup:
    __slots__ = ("spec", "count", "missing", "n", "mean", "m2", "min", "max", "frequent")

    def __init__(self, spec: BytesSpec) -> None:
        d = len(spec.names)
        self.spec = spec
        self.count = np.zeros(d, np.int64)
        self.missing = np.zeros(d, np.int64)
        self.n = np.zeros(d, np.int64)  # length statistics cover the non-missing values
        self.mean = np.zeros(d)
        self.m2 = np.zeros(d)
        self.min = np.full(d, np.inf)
        self.max = np.full(d, -np.inf)
        self.frequent: list[Any] = [None] * d

    def update(self, values: np.ndarray) -> None:
        for j in range(values.shape[0]):
            col = values[j]
            self.count[j] += col.shape[0]
            lengths: list[int] = []
            weights: list[int] = []
            sketch = self.frequent[j]
            for value, c in Counter(col.tolist()).items():
                key = item_key(value)
                if key in self.spec.missing_keys[j]:
                    self.missing[j] += c
                    continue
                raw = value if isinstance(value, bytes) else str(value).encode("utf-8")
                lengths.append(len(raw))
                weights.append(c)
                if sketch is None:
                    sketch = self.frequent[j] = ds.frequent_strings_sketch(self.spec.lg)
                sketch.update(key, c)
            if not lengths:
                continue
            length = np.asarray(lengths, dtype=np.float64)
            weight = np.asarray(weights, dtype=np.float64)
            n_b = int(weight.sum())
            mean_b = float((length * weight).sum() / n_b)
            m2_b = float((weight * (length - mean_b) ** 2).sum())
            n, mean, m2 = chan_merge(self.n[j], self.mean[j], self.m2[j], n_b, mean_b, m2_b)
            self.n[j], self.mean[j], self.m2[j] = n, mean, m2
            self.min[j] = min(self.min[j], length.min())
            self.max[j] = max(self.max[j], length.max())

    def merge(self, other: BytesGroup) -> None:
        self.count += other.count
        self.missing += other.missing
        self.n, self.mean, self.m2 = chan_merge(self.n, self.mean, self.m2, other.n, other.mean, other.m2)
        np.minimum(self.min, other.min, out=self.min)
        np.maximum(self.max, other.max, out=self.max)
        self.frequent = [_merge_frequent(a, b) for a, b in zip(self.frequent, other.frequent, strict=True)]

    def copy(self) -> BytesGroup:
        twin = BytesGroup(self.spec)
        twin.merge(self)
        return twin

    def to_json(self) -> list[Block]:
        blocks = []
        for j in range(len(self.spec.names)):
            n = int(self.n[j])
            blocks.append(
                {
                    "kind": "bytes",
                    "count": int(self.count[j]),
                    "missing": int(self.missing[j]),
                    "length": {
                        "n": n,
                        "mean": float(self.mean[j]) if n else None,
                        "m2": float(self.m2[j]),
                        "min": _finite_or_none(self.min[j]),
                        "max": _finite_or_none(self.max[j]),
                    },
                    "items": _frequent_json(self.frequent[j], self.spec.lg),
                }
            )
        return blocks


Spec = NumericSpec | CategoricalSpec | BytesSpec


# ---------------------------------------------------------------- merging JSON blocks


def _merge_moments(a: Block, b: Block) -> Block:
    n, mean, m2 = chan_merge(
        a["n"], a["mean"] if a["mean"] is not None else 0.0, a["m2"],
        b["n"], b["mean"] if b["mean"] is not None else 0.0, b["m2"],
    )  # fmt: skip
    lows = [v for v in (a["min"], b["min"]) if v is not None]
    highs = [v for v in (a["max"], b["max"]) if v is not None]
    return {
        "n": int(n),
        "mean": float(mean) if int(n) else None,
        "m2": float(m2),
        "min": min(lows) if lows else None,
        "max": max(highs) if highs else None,
    }


def _add_lists(a: list[Any], b: list[Any], what: str) -> list[Any]:
    if len(a) != len(b):
        raise ValueError(f"cannot merge {what} of different lengths ({len(a)} and {len(b)})")
    return [x + y for x, y in zip(a, b, strict=True)]


def _merge_kll(a: Block, b: Block) -> Block:
    sketch = ds.kll_floats_sketch.deserialize(_unb64(a["sketch"]))
    sketch.merge(ds.kll_floats_sketch.deserialize(_unb64(b["sketch"])))
    return {"k": min(a["k"], b["k"]), "sketch": _b64(sketch.serialize())}


def _merge_frequent_json(a: Block, b: Block) -> Block:
    sketches = [ds.frequent_strings_sketch.deserialize(_unb64(x["sketch"])) for x in (a, b) if x["sketch"]]
    merged = None
    for s in sketches:
        merged = _merge_frequent(merged, s)
    return _frequent_json(merged, max(a["lg_max_map_size"], b["lg_max_map_size"]))


def merge_blocks(a: Block, b: Block) -> Block:
    """Merge two JSON blocks of one feature (as ``to_json`` writes them)."""
    kind = a["kind"]
    if b["kind"] != kind:
        raise ValueError(f"cannot merge a {kind} block with a {b['kind']} block")
    out: Block = {"kind": kind, "count": a["count"] + b["count"], "missing": a["missing"] + b["missing"]}
    if kind == "numeric":
        for key in ("nan", "posinf", "neginf"):
            out[key] = a[key] + b[key]
        out.update(_merge_moments(a, b))
        if ("bins" in a) != ("bins" in b) or ("kll" in a) != ("kll" in b):
            raise ValueError("cannot merge a binned block with a sketched one (different baselines?)")
        if "bins" in a:
            out["bins"] = {
                key: _add_lists(a["bins"][key], b["bins"][key], "bins") for key in ("counts", "sums", "tail_sumsq")
            }
        if "kll" in a:
            out["kll"] = _merge_kll(a["kll"], b["kll"])
    elif kind == "categorical":
        out["counts"] = _add_lists(a["counts"], b["counts"], "vocabulary counts")
        out["other"] = a["other"] + b["other"]
        out["other_items"] = _merge_frequent_json(a["other_items"], b["other_items"])
    elif kind == "bytes":
        out["length"] = _merge_moments(a["length"], b["length"])
        out["items"] = _merge_frequent_json(a["items"], b["items"])
    else:
        raise ValueError(f"unknown block kind {kind!r}")
    return out


def kll_from_block(block: Block) -> Any:
    """The KLL sketch of a numeric block without baseline bins (``datasketches.kll_floats_sketch``)."""
    return ds.kll_floats_sketch.deserialize(_unb64(block["kll"]["sketch"]))


def frequent_from_block(block: Block) -> Any:
    """The frequent-items sketch of a categorical or BYTES block, or None when nothing was seen."""
    sub = block["other_items"] if block["kind"] == "categorical" else block["items"]
    return ds.frequent_strings_sketch.deserialize(_unb64(sub["sketch"])) if sub["sketch"] else None
