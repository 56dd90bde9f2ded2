"""The groups of values counted as items: categorical (a vocabulary's counts) and BYTES (lengths and items).

Both name the values outside what they count exactly in a frequent-items sketch (Misra–Gries,
DataSketches ``frequent_strings_sketch``). Block fields (the ``categorical`` and ``bytes`` kinds)
are described in blocks.py.
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import datasketches as ds
import numpy as np

from serve.input_stats.block_json import Block, FrequentJson, MomentArrays, b64, chan_merge, unb64

DEFAULT_FREQUENT_LG = 7
ITEM_MAX_CHARS = 64
TOP_ITEMS = 10


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


def _frequent_json(sketch: Any, lg: int) -> FrequentJson:
    if sketch is None:
        return {"lg_max_map_size": lg, "sketch": None, "top": []}
    items = sketch.get_frequent_items(ds.frequent_items_error_type.NO_FALSE_NEGATIVES)
    items.sort(key=lambda t: (-t[1], t[0]))
    return {
        "lg_max_map_size": lg,
        "sketch": b64(sketch.serialize()),
        "top": [[item, int(est), int(lo), int(hi)] for item, est, lo, hi in items[:TOP_ITEMS]],
    }


def _merge_frequent(target: Any, other: Any) -> Any:
    if other is None:
        return target
    if target is None:
        return ds.frequent_strings_sketch.deserialize(other.serialize())
    target.merge(other)
    return target


def _frequent_from_json(frequent: FrequentJson) -> Any:
    return ds.frequent_strings_sketch.deserialize(unb64(frequent["sketch"])) if frequent["sketch"] else None


def _merged_lg(frequents: Iterable[FrequentJson]) -> int:
    return max(f["lg_max_map_size"] for f in frequents)


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

    @classmethod
    def for_merging(cls, features: Sequence[Sequence[Block]]) -> CategoricalSpec:
        """A spec that every block of every feature fits (``features[j]``: feature j's blocks): what merging
        them needs, the vocabularies' sizes and lg. A block carries no vocabulary, and a merge needs none:
        stand-ins give the counts their number."""
        shapes: list[int] = []
        for blocks in features:
            sizes = list(dict.fromkeys(len(b["counts"]) for b in blocks))
            if len(sizes) > 1:
                raise ValueError(
                    f"cannot merge vocabulary counts of different lengths ({' and '.join(map(str, sizes))})"
                )
            shapes.append(sizes[0])
        return _categorical_merging_spec(tuple(shapes), _merged_lg(b["other_items"] for f in features for b in f))

    def new_group(self) -> CategoricalGroup:
        return CategoricalGroup(self)

    def group_from_json(self, blocks: Sequence[Block]) -> CategoricalGroup:
        return CategoricalGroup.from_json(self, blocks)


@functools.lru_cache(maxsize=256)
def _categorical_merging_spec(vocabulary_sizes: tuple[int, ...], lg: int) -> CategoricalSpec:
    """Specs are never changed once made, so merges share one per shape (it costs more than the merge)."""
    vocabularies = [list(range(size)) for size in vocabulary_sizes]
    return CategoricalSpec([""] * len(vocabularies), vocabularies, lg_max_map_size=lg)


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

    @classmethod
    def from_json(cls, spec: CategoricalSpec, blocks: Sequence[Block]) -> CategoricalGroup:
        """The group ``to_json`` wrote these blocks of (one per feature of ``spec``)."""
        group = cls.__new__(cls)  # arrays made from the lists at once (numeric_group.py says why)
        group.spec = spec
        group.count = np.array([b["count"] for b in blocks], np.int64)
        group.missing = np.array([b["missing"] for b in blocks], np.int64)
        group.other = np.array([b["other"] for b in blocks], np.int64)
        group.counts = [np.array(b["counts"], np.int64) for b in blocks]
        group.frequent = [_frequent_from_json(b["other_items"]) for b in blocks]
        return group

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
        count, missing, other = self.count.tolist(), self.missing.tolist(), self.other.tolist()
        return [
            {
                "kind": "categorical",
                "count": count[j],
                "missing": missing[j],
                "counts": self.counts[j].tolist(),
                "other": other[j],
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

    @classmethod
    def for_merging(cls, features: Sequence[Sequence[Block]]) -> BytesSpec:
        """A spec that every block of every feature fits (``features[j]``: feature j's blocks): what merging
        them needs, lg."""
        return _bytes_merging_spec(len(features), _merged_lg(b["items"] for f in features for b in f))

    def new_group(self) -> BytesGroup:
        return BytesGroup(self)

    def group_from_json(self, blocks: Sequence[Block]) -> BytesGroup:
        return BytesGroup.from_json(self, blocks)


@functools.lru_cache(maxsize=64)
def _bytes_merging_spec(features: int, lg: int) -> BytesSpec:
    return BytesSpec([""] * features, lg_max_map_size=lg)


class BytesGroup:
    __slots__ = ("spec", "count", "missing", "length", "frequent")

    def __init__(self, spec: BytesSpec) -> None:
        d = len(spec.names)
        self.spec = spec
        self.count = np.zeros(d, np.int64)
        self.missing = np.zeros(d, np.int64)
        self.length = MomentArrays(d)  # of the UTF-8 byte lengths of the non-missing values
        self.frequent: list[Any] = [None] * d

    @classmethod
    def from_json(cls, spec: BytesSpec, blocks: Sequence[Block]) -> BytesGroup:
        """The group ``to_json`` wrote these blocks of (one per feature of ``spec``)."""
        group = cls.__new__(cls)  # arrays made from the lists at once (numeric_group.py says why)
        group.spec = spec
        group.count = np.array([b["count"] for b in blocks], np.int64)
        group.missing = np.array([b["missing"] for b in blocks], np.int64)
        group.length = MomentArrays.from_json([b["length"] for b in blocks])
        group.frequent = [_frequent_from_json(b["items"]) for b in blocks]
        return group

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
            m = self.length
            n, mean, m2 = chan_merge(m.n[j], m.mean[j], m.m2[j], n_b, mean_b, m2_b)
            m.n[j], m.mean[j], m.m2[j] = n, mean, m2
            m.min[j] = min(m.min[j], length.min())
            m.max[j] = max(m.max[j], length.max())

    def merge(self, other: BytesGroup) -> None:
        self.count += other.count
        self.missing += other.missing
        self.length.merge(other.length)
        self.frequent = [_merge_frequent(a, b) for a, b in zip(self.frequent, other.frequent, strict=True)]

    def copy(self) -> BytesGroup:
        twin = BytesGroup(self.spec)
        twin.merge(self)
        return twin

    def to_json(self) -> list[Block]:
        count, missing = self.count.tolist(), self.missing.tolist()
        return [
            {
                "kind": "bytes",
                "count": count[j],
                "missing": missing[j],
                "length": length,
                "items": _frequent_json(self.frequent[j], self.spec.lg),
            }
            for j, length in enumerate(self.length.to_json())
        ]
