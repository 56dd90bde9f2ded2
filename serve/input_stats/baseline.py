"""The baseline file (``baseline.json`` next to a model's ``config.pbtxt``): its layout, and building its features.

Schema, ``format_version`` 1 (MONITOR.md §4.2)::

    {
      "format": "serve.baseline",
      "format_version": 1,
      "model": {"name": "churn", "version": "3", "onnx_sha256": "…"},
      "created_at": "2025-01-01T00:00:00Z",
      "source": {"dataset": "train.parquet", "rows": 200000, "split": "holdout", "sampling": "all"},
      "binning": {"side": "right", "quantile_method": "inverted_cdf", "n_quantiles": 100,
                  "tail_levels": [0.001, 0.005, 0.995, 0.999]},
      "smoothing": {"pseudo_count": 0.5},
      "tensors": [                       # optional per-tensor overrides (views.py)
        {"name": "x", "role": "input", "view": "columns", "feature_names": ["age", "income", "country"]}
      ],
      "features": [
        {"name": "age", "role": "input", "tensor": "x", "column": 0, "view": null, "kind": "numeric",
         "missing_values": [-1], "edges": [18.0, 19.0, …], "quantiles": {"0.5": 41.0, …},
         "std": 12.1, "stats": {<numeric block, exactly as the server writes it>},
         "null_calibration": {<optional: no-drift quantiles per measure and window size>}},
        {"name": "country", "role": "input", "tensor": "x", "column": 2, "view": null, "kind": "categorical",
         "vocabulary": [3, 7, 9], "stats": {<categorical block>}}
      ],
      "thresholds": {},                  # optional, per method; read by the monitor
      "dataset_rule": {"drift_share": 0.5}
    }

A feature is identified by ``(role, tensor, column, view)``; ``name`` is for people.
``edges`` follow binning.py; ``stats`` holds the training counts, sums, moments and
vocabulary counts in the same block format as the server's windows (blocks.py), so
the monitor compares like with like. ``kind`` is declared (numeric, categorical or
bytes), never guessed. Unknown top-level keys are kept and written back unchanged.

``null_calibration`` (optional, written by ``serve baseline``, read only by the monitor:
serve/drift/calibration.py) is kept as the raw mapping it is in the file: the server
never looks at it, so loading a baseline costs no more with it, and files without it
(older ones) are as valid as before.

Its JSON types and reading it are in baseline_file.py; every name is importable from here too.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import orjson

from serve.datatypes import numpy_dtype
from serve.input_stats.baseline_file import (
    BASELINE_FILENAME,
    BASELINE_FORMAT,
    BASELINE_FORMAT_VERSION,
    KINDS,
    ROLES,
    Baseline,
    BaselineDocument,
    BaselineError,
    BaselineFeature,
    BaselineFeatureJson,
    BaselineSourceJson,
    BaselineTensor,
    BaselineTensorJson,
    baseline_mismatches,
)
from serve.input_stats.binning import DEFAULT_QUANTILES, DEFAULT_TAIL_LEVELS, compute_edges
from serve.input_stats.blocks import Block, BytesSpec, CategoricalSpec, NumericSpec, Spec, item_key
from serve.input_stats.document import BaselineModel
from serve.input_stats.views import Extractor, FeatureInfo, ViewOptions, build_extractors
from serve.types import TensorSpec

__all__ = [
    "BASELINE_FILENAME", "BASELINE_FORMAT", "BASELINE_FORMAT_VERSION", "KINDS", "ROLES", "Baseline",
    "BaselineDocument", "BaselineError", "BaselineFeature", "BaselineFeatureJson", "BaselineSourceJson",
    "BaselineTensor", "BaselineTensorJson", "FittedFeature", "as_sent", "baseline_mismatches",
    "build_baseline_features", "declared_baseline", "edge_dtype", "feature_entry", "make_baseline_document",
    "write_baseline",
]  # fmt: skip


def _now_iso() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _vocabulary(values: np.ndarray, missing: Collection[Any], max_size: int) -> list[Any]:
    """The most frequent non-missing values (ties by first appearance), numbers kept as numbers."""
    counted = Counter(values.tolist())
    missing_keys = {item_key(m) for m in missing} | {""}
    ranked = [
        v
        for v, _ in counted.most_common()
        if not (isinstance(v, float) and np.isnan(v)) and item_key(v) not in missing_keys
    ]
    out: list[Any] = []
    for v in ranked[:max_size]:
        if isinstance(v, bytes):
            out.append(v.decode("utf-8", errors="backslashreplace"))
        elif isinstance(v, float) and v.is_integer():
            out.append(int(v))
        else:
            out.append(v)
    return out


def as_sent(array: np.ndarray, datatype: str) -> np.ndarray:
    """Training values as clients send them to a tensor of ``datatype``, which is what the server bins.

    Floats become that float type: a pandas column is float64, but an FP32 input receives 26.9599991 where
    the file says 26.96, and a baseline of the float64 values puts such values in another bin (issue 17).
    Integers, booleans and text are left as they are: whole numbers are exact in float64, and a missing
    cell stays NaN, which no integer can hold."""
    if datatype not in ("FP16", "FP32", "FP64"):
        return array
    with np.errstate(over="ignore"):  # beyond FP32's range is infinite, as a client's FP32 would be
        return np.asarray(array).astype(numpy_dtype(datatype), copy=False)


def edge_dtype(feature: FeatureInfo, datatype: str) -> np.dtype:
    """The type of the values binned against a feature's edges: the tensor's own for its values, float64 for
    what a view computes from them (norms, means, a classifier's confidence …)."""
    if feature.view is None and datatype != "BYTES":
        return numpy_dtype(datatype)
    return np.dtype(np.float64)


def _display_quantiles(values: np.ndarray) -> dict[str, float]:
    levels = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
    if values.size == 0:
        return {}
    q = np.quantile(values, levels, method="inverted_cdf")
    return {str(level): float(v) for level, v in zip(levels, q, strict=True)}


class FittedFeature(TypedDict, total=False):
    """What fitting a feature to its training values adds to its entry: edges or a vocabulary."""

    edges: list[float]
    quantiles: dict[str, float]
    vocabulary: list[Any]


def declared_baseline(
    specs: Sequence[TensorSpec],
    role: str,
    feature_names: Mapping[str, Sequence[str]],
    categorical: Collection[str],
    options: ViewOptions | None = None,
) -> Baseline:
    """A baseline that only names columns and declares features categorical (vocabularies still empty): what
    the extractors need to yield the features a baseline will have."""
    tensors = [BaselineTensor(name, role, feature_names=tuple(names) or None) for name, names in feature_names.items()]
    provisional = Baseline(model={}, features=[], tensors=tensors)
    for ex in build_extractors(specs, role, provisional, options):
        for f in ex.features:
            if f.name in categorical or f.tensor in categorical:
                declared = BaselineFeature(f.name, role, f.tensor, f.column, f.view, "categorical", vocabulary=())
                provisional.features.append(declared)
    return provisional


def build_baseline_features(
    arrays: Mapping[str, np.ndarray],
    specs: Sequence[TensorSpec],
    *,
    role: str = "input",
    categorical: Collection[str] = (),
    feature_names: Mapping[str, Sequence[str]] | None = None,
    missing_values: Mapping[str, Sequence[Any]] | None = None,
    n_quantiles: int = DEFAULT_QUANTILES,
    tail_levels: Sequence[float] = DEFAULT_TAIL_LEVELS,
    max_vocabulary: int = 1000,
    options: ViewOptions | None = None,
) -> tuple[list[BaselineFeatureJson], list[BaselineTensorJson]]:
    """Baseline ``features`` and ``tensors`` entries from in-memory training arrays (rows on axis 0).

    Uses the server's own extractors and accumulators, so the views, edges and bin
    semantics are those the server will apply; values are first cast to the tensor's datatype
    (``as_sent``), since the server bins what clients send. ``categorical`` names features (or whole
    tensors) to treat as categorical; ``feature_names`` names a tensor's columns;
    ``missing_values`` gives sentinels per feature or tensor name. Data larger than
    memory: compute edges in a first pass (``binning.edges_from_quantiles``), then update
    the specs' groups chunk by chunk.
    """
    names = dict(feature_names or {})
    tensors: list[BaselineTensorJson] = [{"name": n, "role": role, "feature_names": list(v)} for n, v in names.items()]
    sentinels = dict(missing_values or {})
    datatypes = {s.name: s.datatype for s in specs}
    out: list[BaselineFeatureJson] = []
    for ex in build_extractors(specs, role, declared_baseline(specs, role, names, categorical, options), options):
        values = _training_values(ex, arrays, datatypes[ex.tensor], role)
        missing = [list(sentinels.get(f.name, sentinels.get(f.tensor, ()))) for f in ex.features]
        datatype = datatypes[ex.tensor]
        spec, fitted = _fit(ex, values, missing, datatype, (n_quantiles, tail_levels), max_vocabulary)
        group = spec.new_group()
        group.update(values)
        out += [
            feature_entry(f, role, entry, stats, miss)
            for f, entry, stats, miss in zip(ex.features, fitted, group.to_json(), missing, strict=True)
        ]
    return out, tensors


def _training_values(ex: Extractor, arrays: Mapping[str, np.ndarray], datatype: str, role: str) -> np.ndarray:
    """The extractor's feature values (features × rows) of the training data, as clients will send them."""
    if ex.tensor not in arrays:
        raise BaselineError(f"no training data for {role} '{ex.tensor}'")
    array = as_sent(np.asarray(arrays[ex.tensor]), datatype)
    if not ex.accepts(array):
        raise BaselineError(f"{role} '{ex.tensor}': data shape {array.shape} does not match dims {list(ex.row_dims)}")
    return ex.extract(array)


def _fit(
    ex: Extractor,
    values: np.ndarray,
    missing: list[list[Any]],
    datatype: str,
    quantiles: tuple[int, Sequence[float]],
    max_vocabulary: int,
) -> tuple[Spec, list[FittedFeature]]:
    """The spec that bins these features as the baseline will (edges at the training quantiles, the most
    frequent values as vocabulary), and what each feature's entry says of it."""
    names = [f.name for f in ex.features]
    if isinstance(ex.spec, NumericSpec):
        edges: list[np.ndarray] = []
        fitted: list[FittedFeature] = []
        for j, f in enumerate(ex.features):
            v = values[j][np.isfinite(values[j])]
            if missing[j]:
                v = v[~np.isin(v, missing[j])]
            edges.append(compute_edges(v, *quantiles, edge_dtype(f, datatype)))
            fitted.append({"edges": edges[-1].tolist(), "quantiles": _display_quantiles(v)})
        return NumericSpec(names, edges, missing, kll_k=0), fitted
    if isinstance(ex.spec, CategoricalSpec):
        vocab = [
            list(ex.spec.vocabularies[j]) or _vocabulary(values[j], missing[j], max_vocabulary)
            for j in range(len(names))
        ]
        return CategoricalSpec(names, vocab, missing, lg_max_map_size=ex.spec.lg), [{"vocabulary": v} for v in vocab]
    return BytesSpec(names, missing, lg_max_map_size=ex.spec.lg), [{} for _ in names]


def feature_entry(
    feature: FeatureInfo, role: str, fitted: FittedFeature, stats: Block, missing_values: list[Any]
) -> BaselineFeatureJson:
    """One feature of baseline.json: identity, bins or vocabulary, and its training statistics."""
    item: BaselineFeatureJson = {
        "name": feature.name, "role": role, "tensor": feature.tensor, "column": feature.column,
        "view": feature.view, "kind": feature.kind, "missing_values": missing_values,
    }  # fmt: skip
    # Bins or vocabulary between identity and statistics, as files have always listed them.
    if "edges" in fitted:
        item["edges"], item["quantiles"] = fitted["edges"], fitted["quantiles"]
    if "vocabulary" in fitted:
        item["vocabulary"] = fitted["vocabulary"]
    item["stats"] = stats
    if feature.kind == "numeric" and stats["n"] > 1:
        item["std"] = float(np.sqrt(stats["m2"] / (stats["n"] - 1)))
    return item


def make_baseline_document(
    model: BaselineModel,
    features: Sequence[BaselineFeatureJson],
    tensors: Sequence[BaselineTensorJson] = (),
    *,
    source: BaselineSourceJson | None = None,
    n_quantiles: int = DEFAULT_QUANTILES,
    tail_levels: Sequence[float] = DEFAULT_TAIL_LEVELS,
) -> BaselineDocument:
    """A complete baseline document (validated by parsing it back)."""
    document: BaselineDocument = {
        "format": BASELINE_FORMAT,
        "format_version": BASELINE_FORMAT_VERSION,
        "model": model.copy(),
        "created_at": _now_iso(),
        "source": source.copy() if source is not None else {},
        "binning": {
            "side": "right",
            "quantile_method": "inverted_cdf",
            "n_quantiles": n_quantiles,
            "tail_levels": list(tail_levels),
        },
        "smoothing": {"pseudo_count": 0.5},
        "tensors": [t.copy() for t in tensors],
        "features": [f.copy() for f in features],
        "thresholds": {},
        "dataset_rule": {"drift_share": 0.5},
    }
    Baseline.from_dict(document)
    return document


def write_baseline(document: Mapping[str, object], path: str | Path) -> str:
    """Write the document; returns the sha256 of the bytes written (what ``Baseline.load`` reports)."""
    data = orjson.dumps(document, option=orjson.OPT_INDENT_2)
    Path(path).write_bytes(data)
    return hashlib.sha256(data).hexdigest()
