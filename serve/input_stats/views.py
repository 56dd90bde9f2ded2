"""Which features a tensor yields, and how a batch of it turns into feature values.

Every submitted array has the rows on axis 0; ``TensorSpec.dims`` is the shape of one
row (-1 = variable). An *extractor* maps a batch to feature-major values (features ×
rows) for one group of features of one kind. The rules, by the shape of a row:

=====================  ==========================================================
row shape              features
=====================  ==========================================================
``()``                 one feature named ``<tensor>``
``(D,)``, D fixed and  one feature per column, ``<tensor>[i]`` (or the baseline's
≤ max_columns (256)    ``feature_names``): view ``columns``
``(D,)`` otherwise     float: view ``embedding`` → ``<tensor>::l2_norm``, ``::mean``,
                       ``::std`` per row; integer (token ids): view ``sequence`` →
                       ``::length`` (row length) and ``::nonzero`` (non-zero ids,
                       i.e. the length without 0-padding)
``(C, H, W)`` with C   view ``image`` (channels first; ``(H, W, C)`` when only the
in 1, 3, 4             last dim is 1, 3 or 4) → ``::mean[c]`` and ``::std[c]`` per
                       channel, ``::zero_fraction``, plus ``::height``/``::width``
                       when those dims are variable
any other rank         view ``generic`` → ``::mean``, ``::std``, ``::l2_norm`` of the
                       flattened row, plus ``::length`` if the first dim is variable
=====================  ==========================================================

Outputs follow the same rules. In addition a float output whose row is ``(K,)`` with
2 ≤ K ≤ max_classes (1000) is read as a classifier (prediction drift): ``::predicted_class``
(argmax, categorical over 0…K-1; rows with NaN count as missing), ``::confidence``
(top probability), ``::margin`` (top-1 minus top-2) and ``::entropy`` (nats). A row that
is not already a probability distribution (all in [0, 1], sum within 1e-3 of 1) is
passed through softmax first, so logits work too.

BYTES tensors: ``()`` → one feature, ``(D,)`` fixed → ``<tensor>[i]``, anything else →
one feature ``<tensor>`` over all elements. BOOL and every integer type are numeric.

A baseline may override per tensor: ``view`` (``scalar``, ``columns``, ``embedding``,
``sequence``, ``image``, ``generic``, ``flatten`` or ``none`` to record nothing),
``feature_names``, ``classifier`` (true/false) and ``layout`` (``channels_first`` /
``channels_last``); per feature: ``kind`` (``categorical`` is only ever declared, never
guessed), ``edges``, ``vocabulary`` and ``missing_values``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from serve.input_stats import extracts
from serve.input_stats.blocks import (
    DEFAULT_FREQUENT_LG,
    DEFAULT_KLL_K,
    BytesSpec,
    CategoricalSpec,
    NumericSpec,
    Spec,
)
from serve.input_stats.document import FeatureMeta
from serve.types import TensorSpec


class TensorHints(Protocol):
    """What a baseline says about one tensor (serve.input_stats.baseline.BaselineTensor)."""

    @property
    def view(self) -> str | None: ...

    @property
    def feature_names(self) -> tuple[str, ...] | None: ...

    @property
    def classifier(self) -> bool | None: ...

    @property
    def layout(self) -> str | None: ...


class BaselineHints(Protocol):
    """The part of a Baseline the views consult; a protocol, because the baseline module builds
    its own extractors from this one and must not be imported back."""

    def tensor(self, role: str, name: str) -> TensorHints | None: ...

    def feature(self, role: str, tensor: str, column: int | None, view: str | None) -> Any: ...


VIEWS = ("scalar", "columns", "embedding", "sequence", "image", "generic", "flatten", "none")
_CHANNELS = (1, 3, 4)
_NUMERIC_TYPES = {
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64",
}  # fmt: skip
_INTEGER_TYPES = _NUMERIC_TYPES - {"FP16", "FP32", "FP64"}


@dataclass(frozen=True, slots=True)
class ViewOptions:
    max_columns: int = 256
    max_classes: int = 1000
    kll_k: int = DEFAULT_KLL_K  # 0 = no sketch for features without baseline edges
    frequent_lg: int = DEFAULT_FREQUENT_LG


@dataclass(frozen=True, slots=True)
class FeatureInfo:
    name: str
    role: str  # "input" | "output"
    tensor: str
    column: int | None
    view: str | None
    kind: str  # "numeric" | "categorical" | "bytes"


@dataclass(eq=False, slots=True)
class Extractor:
    tensor: str
    role: str
    row_dims: tuple[int, ...]
    features: tuple[FeatureInfo, ...]
    spec: Spec
    extract: Callable[[np.ndarray], np.ndarray]  # rows × … → features × rows

    def accepts(self, array: np.ndarray) -> bool:
        if array.ndim != len(self.row_dims) + 1:
            return False
        return all(d < 0 or d == s for d, s in zip(self.row_dims, array.shape[1:], strict=True))

    def metadata(self) -> list[FeatureMeta]:
        """Per-feature description for the statistics document."""
        out = []
        for j, f in enumerate(self.features):
            meta: FeatureMeta = {
                "name": f.name, "role": f.role, "tensor": f.tensor, "column": f.column, "view": f.view,
                "kind": f.kind,
            }  # fmt: skip
            spec = self.spec
            if isinstance(spec, NumericSpec):
                edges = spec.edges[j]
                meta["edges"] = edges.tolist() if edges is not None else None
                meta["sketch"] = "kll" if edges is None and spec.kll_k > 0 else None
            elif isinstance(spec, CategoricalSpec):
                meta["vocabulary"] = spec.vocabularies[j]
            out.append(meta)
        return out


class _Builder:
    """Collects the extractors of one role, consulting the baseline for names, kinds and edges."""

    def __init__(self, role: str, baseline: BaselineHints | None, options: ViewOptions) -> None:
        self.role = role
        self.baseline = baseline
        self.options = options
        self.extractors: list[Extractor] = []

    def _declared(self, tensor: str, column: int | None, view: str | None) -> Any:
        if self.baseline is None:
            return None
        return self.baseline.feature(self.role, tensor, column, view)

    def add(
        self,
        spec: TensorSpec,
        names: Sequence[str],
        columns: Sequence[int | None],
        views: Sequence[str | None],
        extract: Callable[[np.ndarray], np.ndarray],
        bytes_like: bool = False,
        kinds: Sequence[str] | None = None,
    ) -> None:
        """Add the features ``extract`` yields (one row of output per feature), split by declared kind."""
        declared = [self._declared(spec.name, c, v) for c, v in zip(columns, views, strict=True)]
        if kinds is None:
            default = "bytes" if bytes_like else "numeric"
            kinds = [d.kind if d is not None and d.kind == "categorical" else default for d in declared]
        by_kind: dict[str, list[int]] = {}
        for j, kind in enumerate(kinds):
            by_kind.setdefault(kind, []).append(j)
        for kind, idx in by_kind.items():
            infos = tuple(FeatureInfo(names[j], self.role, spec.name, columns[j], views[j], kind) for j in idx)
            decl = [declared[j] for j in idx]
            spec_ = self._spec(kind, infos, decl)
            pick = extract if len(idx) == len(kinds) else _select_rows(extract, np.asarray(idx))
            self.extractors.append(Extractor(spec.name, self.role, tuple(spec.dims), infos, spec_, pick))

    def _spec(self, kind: str, infos: Sequence[FeatureInfo], declared: Sequence[Any]) -> Spec:
        names = [f.name for f in infos]
        missing = [list(d.missing_values) if d is not None else [] for d in declared]
        o = self.options
        if kind == "numeric":
            edges = [d.edges if d is not None else None for d in declared]
            return NumericSpec(names, edges, missing, kll_k=o.kll_k)
        if kind == "categorical":
            # A classifier's predicted_class without a declared vocabulary gets 0…K-1 in _add_tensor.
            vocab = [list(d.vocabulary) if d is not None and d.vocabulary is not None else [] for d in declared]
            return CategoricalSpec(names, vocab, missing, lg_max_map_size=o.frequent_lg)
        return BytesSpec(names, missing, lg_max_map_size=o.frequent_lg)


def _select_rows(extract: Callable[[np.ndarray], np.ndarray], idx: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    def select(a: np.ndarray) -> np.ndarray:
        rows: np.ndarray = extract(a)[idx]
        return rows

    return select


def _choose_view(spec: TensorSpec, bt: TensorHints | None, options: ViewOptions) -> str:
    if bt is not None and bt.view:
        return bt.view
    dims = tuple(spec.dims)
    fixed_columns = len(dims) == 1 and 0 < dims[0] <= options.max_columns
    if spec.datatype == "BYTES":
        if not dims:
            return "scalar"
        return "columns" if fixed_columns else "flatten"
    if not dims:
        return "scalar"
    if len(dims) == 1:
        if fixed_columns:
            return "columns"
        return "sequence" if spec.datatype in _INTEGER_TYPES else "embedding"
    if len(dims) == 3 and (dims[0] in _CHANNELS or dims[-1] in _CHANNELS):
        return "image"
    return "generic"


def _is_classifier(spec: TensorSpec, role: str, bt: TensorHints | None, options: ViewOptions) -> bool:
    dims = tuple(spec.dims)
    shape_ok = len(dims) == 1 and 2 <= dims[0] <= options.max_classes
    if bt is not None and bt.classifier is not None:
        return bool(bt.classifier) and shape_ok
    return role == "output" and spec.datatype in ("FP16", "FP32", "FP64") and shape_ok


def _add_tensor(b: _Builder, spec: TensorSpec, bt: TensorHints | None) -> None:
    view = _choose_view(spec, bt, b.options)
    if view not in VIEWS:
        raise ValueError(f"tensor '{spec.name}': unknown view {view!r} (one of {', '.join(VIEWS)})")
    if view == "none":
        return
    name = spec.name
    dims = tuple(spec.dims)
    bytes_like = spec.datatype == "BYTES"

    def named(v: str) -> str:
        return f"{name}::{v}"

    if view == "scalar":
        b.add(spec, [name], [None], [None], extracts.scalar_extract(bytes_like), bytes_like)
    elif view == "columns":
        if len(dims) != 1 or dims[0] <= 0:
            raise ValueError(f"tensor '{name}': view 'columns' needs a fixed (D,) row, not {list(dims)}")
        d = dims[0]
        names = list(bt.feature_names) if bt is not None and bt.feature_names else [f"{name}[{i}]" for i in range(d)]
        if len(names) != d:
            raise ValueError(f"tensor '{name}': {len(names)} feature names for {d} columns")
        b.add(spec, names, list(range(d)), [None] * d, extracts.columns_extract(bytes_like), bytes_like)
    elif view == "flatten":
        b.add(spec, [name], [None], [None], extracts.flatten_extract(bytes_like), bytes_like)
    elif view == "embedding":
        views = ["l2_norm", "mean", "std"]
        b.add(spec, [named(v) for v in views], [None] * 3, views, extracts.embedding)
    elif view == "sequence":
        views = ["length", "nonzero"]
        b.add(spec, [named(v) for v in views], [None] * 2, views, extracts.sequence)
    elif view == "image":
        _add_image(b, spec, bt)
    elif view == "generic":
        views = ["l2_norm", "mean", "std"] + (["length"] if dims and dims[0] < 0 else [])
        b.add(spec, [named(v) for v in views], [None] * len(views), views, extracts.generic(len(views) == 4))
    if not bytes_like and _is_classifier(spec, b.role, bt, b.options):
        k = dims[0]
        b.add(
            spec,
            [named("predicted_class")],
            [None],
            ["predicted_class"],
            extracts.predicted_class,
            kinds=["categorical"],
        )
        cat = b.extractors[-1]
        assert isinstance(cat.spec, CategoricalSpec)
        if not cat.spec.vocabularies[0]:
            cat.spec = CategoricalSpec(cat.spec.names, [list(range(k))], cat.spec.missing_values, cat.spec.lg)
        views = ["confidence", "margin", "entropy"]
        b.add(spec, [named(v) for v in views], [None] * 3, views, extracts.classifier_views, kinds=["numeric"] * 3)


def _add_image(b: _Builder, spec: TensorSpec, bt: TensorHints | None) -> None:
    dims = tuple(spec.dims)
    if len(dims) != 3:
        raise ValueError(f"tensor '{spec.name}': view 'image' needs a (C, H, W) or (H, W, C) row")
    layout = bt.layout if bt is not None and bt.layout else None
    if layout is None:
        layout = "channels_first" if dims[0] in _CHANNELS else "channels_last"
    first = layout == "channels_first"
    channels = dims[0] if first else dims[-1]
    if channels <= 0:
        raise ValueError(f"tensor '{spec.name}': view 'image' needs a fixed channel count")
    spatial = (2, 3) if first else (1, 2)
    h_dim, w_dim = (dims[1], dims[2]) if first else (dims[0], dims[1])
    views = [f"mean[{c}]" for c in range(channels)] + [f"std[{c}]" for c in range(channels)] + ["zero_fraction"]
    extra = [v for v, d in (("height", h_dim), ("width", w_dim)) if d < 0]
    views += extra

    def extract(a: np.ndarray) -> np.ndarray:
        x = a if a.dtype.kind == "f" else a.astype(np.float32)
        rows = x.shape[0]
        means = x.mean(axis=spatial, dtype=np.float64)  # rows × C
        stds = x.std(axis=spatial, dtype=np.float64)
        zero = (x == 0).reshape(rows, -1).mean(axis=1)
        cols = [means.T, stds.T, zero[None, :]]
        if "height" in extra:
            cols.append(np.full((1, rows), a.shape[spatial[0]], dtype=np.float64))
        if "width" in extra:
            cols.append(np.full((1, rows), a.shape[spatial[1]], dtype=np.float64))
        return np.concatenate(cols, axis=0)

    b.add(spec, [f"{spec.name}::{v}" for v in views], [None] * len(views), views, extract)


def build_extractors(
    specs: Sequence[TensorSpec],
    role: str,
    baseline: BaselineHints | None = None,
    options: ViewOptions | None = None,
) -> list[Extractor]:
    """Extractors for every numeric and BYTES tensor in ``specs`` (other datatypes are skipped)."""
    builder = _Builder(role, baseline, options or ViewOptions())
    for spec in specs:
        if spec.datatype not in _NUMERIC_TYPES and spec.datatype != "BYTES":
            continue  # e.g. BF16: numpy has no such dtype
        bt = baseline.tensor(role, spec.name) if baseline is not None else None
        _add_tensor(builder, spec, bt)
    return builder.extractors
