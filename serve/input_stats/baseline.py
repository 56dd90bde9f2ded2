"""The baseline file (``baseline.json`` next to a model's ``config.pbtxt``): reading, writing, building.

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
"""

from __future__ import annotations

import datetime as _dt
import hashlib
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from serve.datatypes import numpy_dtype
from serve.input_stats.binning import DEFAULT_QUANTILES, DEFAULT_TAIL_LEVELS, compute_edges, validate_edges
from serve.input_stats.blocks import BytesSpec, CategoricalSpec, NumericSpec, item_key
from serve.input_stats.views import VIEWS, FeatureInfo, ViewOptions, build_extractors
from serve.types import TensorSpec

BASELINE_FORMAT = "serve.baseline"
BASELINE_FORMAT_VERSION = 1
BASELINE_FILENAME = "baseline.json"
KINDS = ("numeric", "categorical", "bytes")
ROLES = ("input", "output")


class BaselineError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class BaselineTensor:
    name: str
    role: str
    view: str | None = None
    feature_names: tuple[str, ...] | None = None
    classifier: bool | None = None
    layout: str | None = None  # images: "channels_first" | "channels_last"


@dataclass(frozen=True, slots=True, eq=False)
class BaselineFeature:
    name: str
    role: str
    tensor: str
    column: int | None
    view: str | None
    kind: str
    edges: np.ndarray | None = None
    vocabulary: tuple[Any, ...] | None = None
    missing_values: tuple[Any, ...] = ()
    stats: dict[str, Any] | None = None
    null_calibration: Mapping[str, Any] | None = None  # the monitor's; passed through untouched


def _feature_from_dict(raw: Mapping[str, Any]) -> BaselineFeature:
    try:
        name, role, tensor, kind = raw["name"], raw["role"], raw["tensor"], raw["kind"]
    except KeyError as exc:
        raise BaselineError(f"baseline feature {raw.get('name', '?')!r} lacks {exc.args[0]!r}") from None
    if role not in ROLES:
        raise BaselineError(f"feature {name!r}: role must be one of {ROLES}")
    if kind not in KINDS:
        raise BaselineError(f"feature {name!r}: kind must be one of {KINDS}")
    edges = None
    if raw.get("edges") is not None:
        try:
            edges = validate_edges(raw["edges"], name)
        except ValueError as exc:
            raise BaselineError(str(exc)) from None
    vocabulary = tuple(raw["vocabulary"]) if raw.get("vocabulary") is not None else None
    if kind == "categorical" and vocabulary is None:
        raise BaselineError(f"feature {name!r}: a categorical feature needs a vocabulary")
    stats = raw.get("stats")
    if stats is not None and edges is not None and "bins" in stats:
        if len(stats["bins"]["counts"]) != edges.size + 1:
            raise BaselineError(f"feature {name!r}: {len(stats['bins']['counts'])} bin counts for {edges.size} edges")
    column = raw.get("column")
    return BaselineFeature(
        name=name,
        role=role,
        tensor=tensor,
        column=int(column) if column is not None else None,
        view=raw.get("view"),
        kind=kind,
        edges=edges,
        vocabulary=vocabulary,
        missing_values=tuple(raw.get("missing_values") or ()),
        stats=stats,
        null_calibration=raw.get("null_calibration"),
    )


def _tensor_from_dict(raw: Mapping[str, Any]) -> BaselineTensor:
    view = raw.get("view")
    if view is not None and view not in VIEWS:
        raise BaselineError(f"tensor {raw.get('name')!r}: unknown view {view!r}")
    names = raw.get("feature_names")
    return BaselineTensor(
        name=raw["name"],
        role=raw.get("role", "input"),
        view=view,
        feature_names=tuple(names) if names else None,
        classifier=raw.get("classifier"),
        layout=raw.get("layout"),
    )


@dataclass(slots=True)
class Baseline:
    model: dict[str, Any]
    features: list[BaselineFeature]
    tensors: list[BaselineTensor] = field(default_factory=list)
    document: dict[str, Any] = field(default_factory=dict)  # the whole file as read
    sha256: str | None = None  # of the file's bytes; reported by the server, checked by the monitor

    @classmethod
    def from_dict(cls, document: Mapping[str, Any], sha256: str | None = None) -> Baseline:
        if document.get("format") != BASELINE_FORMAT:
            raise BaselineError(f"not a baseline file (format {document.get('format')!r}, want {BASELINE_FORMAT!r})")
        version = document.get("format_version")
        if version != BASELINE_FORMAT_VERSION:
            raise BaselineError(
                f"baseline format_version {version!r} is not supported (want {BASELINE_FORMAT_VERSION})"
            )
        features = [_feature_from_dict(f) for f in document.get("features", [])]
        seen: set[tuple[Any, ...]] = set()
        for f in features:
            key = (f.role, f.tensor, f.column, f.view)
            if key in seen:
                raise BaselineError(f"feature {f.name!r} is declared twice")
            seen.add(key)
        return cls(
            model=dict(document.get("model") or {}),
            features=features,
            tensors=[_tensor_from_dict(t) for t in document.get("tensors", [])],
            document=dict(document),
            sha256=sha256,
        )

    @classmethod
    def load(cls, path: str | Path) -> Baseline:
        return cls.from_bytes(Path(path).read_bytes(), str(path))

    @classmethod
    def from_bytes(cls, data: bytes, origin: str) -> Baseline:
        """Parse a baseline file's exact bytes; ``sha256`` is theirs (``origin`` names them in errors)."""
        try:
            document = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise BaselineError(f"{origin}: not valid JSON: {exc}") from None
        if not isinstance(document, dict):
            raise BaselineError(f"{origin}: not a baseline file (a JSON {type(document).__name__}, not an object)")
        return cls.from_dict(document, sha256=hashlib.sha256(data).hexdigest())

    def feature(self, role: str, tensor: str, column: int | None, view: str | None) -> BaselineFeature | None:
        for f in self.features:
            if f.role == role and f.tensor == tensor and f.column == column and f.view == view:
                return f
        return None

    def tensor(self, role: str, name: str) -> BaselineTensor | None:
        for t in self.tensors:
            if t.role == role and t.name == name:
                return t
        return None

    def summary(self) -> dict[str, Any]:
        """What the statistics document says about the baseline it bins against."""
        return {"sha256": self.sha256, "format_version": BASELINE_FORMAT_VERSION, "model": self.model}


def baseline_mismatches(
    baseline: Baseline,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    options: ViewOptions | None = None,
) -> list[str]:
    """What in the baseline the model does not match: a stale baseline must be reported, not used silently.

    Empty when every baseline tensor and feature names something the model yields; otherwise
    one message per problem (the repository logs them and decides whether to load the baseline).
    """
    problems: list[str] = []
    yielded: set[tuple[str, str, int | None, str | None]] = set()
    for role, specs in (("input", inputs), ("output", outputs)):
        try:
            extractors = build_extractors(specs, role, baseline, options)
        except ValueError as exc:
            problems.append(str(exc))
            continue
        known = {s.name for s in specs}
        problems += [
            f"baseline {role} tensor '{t.name}' is not a {role} of the model"
            for t in baseline.tensors
            if t.role == role and t.name not in known
        ]
        yielded |= {(f.role, f.tensor, f.column, f.view) for ex in extractors for f in ex.features}
    problems += [
        f"baseline feature '{f.name}' ({f.role} '{f.tensor}', column {f.column}, view {f.view}) "
        "is not a feature of the model"
        for f in baseline.features
        if (f.role, f.tensor, f.column, f.view) not in yielded
    ]
    return problems


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
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Baseline ``features`` and ``tensors`` entries from in-memory training arrays (rows on axis 0).

    Uses the server's own extractors and accumulators, so the views, edges and bin
    semantics are those the server will apply; values are first cast to the tensor's datatype
    (``as_sent``), since the server bins what clients send. ``categorical`` names features (or whole
    tensors) to treat as categorical; ``feature_names`` names a tensor's columns;
    ``missing_values`` gives sentinels per feature or tensor name. Data larger than
    memory: compute edges in a first pass (``binning.edges_from_quantiles``), then update
    the specs' groups chunk by chunk.
    """
    tensors = [
        {"name": name, "role": role, "feature_names": list(names)} for name, names in (feature_names or {}).items()
    ]
    missing_values = dict(missing_values or {})
    # First pass: which features exist, with categorical declarations (vocabulary filled in later).
    provisional = Baseline(model={}, features=[], tensors=[_tensor_from_dict(t) for t in tensors])
    plain = build_extractors(specs, role, provisional, options)
    declared: list[BaselineFeature] = []
    for ex in plain:
        for f in ex.features:
            if f.name in categorical or f.tensor in categorical:
                declared.append(BaselineFeature(f.name, role, f.tensor, f.column, f.view, "categorical", vocabulary=()))
    provisional.features = declared
    out: list[dict[str, Any]] = []
    datatypes = {s.name: s.datatype for s in specs}
    for ex in build_extractors(specs, role, provisional, options):
        if ex.tensor not in arrays:
            raise BaselineError(f"no training data for {role} '{ex.tensor}'")
        array = as_sent(np.asarray(arrays[ex.tensor]), datatypes[ex.tensor])
        if not ex.accepts(array):
            raise BaselineError(
                f"{role} '{ex.tensor}': data shape {array.shape} does not match dims {list(ex.row_dims)}"
            )
        values = ex.extract(array)
        names = [f.name for f in ex.features]
        missing = [list(missing_values.get(f.name, missing_values.get(f.tensor, ()))) for f in ex.features]
        entries: list[dict[str, Any]] = []
        if isinstance(ex.spec, NumericSpec):
            edges = []
            for j in range(len(names)):
                v = values[j][np.isfinite(values[j])]
                if missing[j]:
                    v = v[~np.isin(v, missing[j])]
                dtype = edge_dtype(ex.features[j], datatypes[ex.tensor])
                edges.append(compute_edges(v, n_quantiles, tail_levels, dtype))
                entries.append({"edges": edges[-1].tolist(), "quantiles": _display_quantiles(v)})
            spec: Any = NumericSpec(names, edges, missing, kll_k=0)
        elif isinstance(ex.spec, CategoricalSpec):
            vocab = [
                list(ex.spec.vocabularies[j]) or _vocabulary(values[j], missing[j], max_vocabulary)
                for j in range(len(names))
            ]
            entries = [{"vocabulary": v} for v in vocab]
            spec = CategoricalSpec(names, vocab, missing, lg_max_map_size=ex.spec.lg)
        else:
            spec = BytesSpec(names, missing, lg_max_map_size=ex.spec.lg)
            entries = [{} for _ in names]
        group = spec.new_group()
        group.update(values)
        out += [
            feature_entry(f, role, entry, stats, miss)
            for f, entry, stats, miss in zip(ex.features, entries, group.to_json(), missing, strict=True)
        ]
    return out, tensors


def feature_entry(
    feature: Any, role: str, entry: Mapping[str, Any], stats: dict[str, Any], missing_values: Any
) -> dict[str, Any]:
    """One feature of baseline.json: identity, bins or vocabulary, and its training statistics."""
    item = {
        "name": feature.name, "role": role, "tensor": feature.tensor, "column": feature.column,
        "view": feature.view, "kind": feature.kind, "missing_values": missing_values, **entry, "stats": stats,
    }  # fmt: skip
    if feature.kind == "numeric" and stats["n"] > 1:
        item["std"] = float(np.sqrt(stats["m2"] / (stats["n"] - 1)))
    return item


def make_baseline_document(
    model: Mapping[str, Any],
    features: Sequence[Mapping[str, Any]],
    tensors: Sequence[Mapping[str, Any]] = (),
    *,
    source: Mapping[str, Any] | None = None,
    n_quantiles: int = DEFAULT_QUANTILES,
    tail_levels: Sequence[float] = DEFAULT_TAIL_LEVELS,
) -> dict[str, Any]:
    """A complete baseline document (validated by parsing it back)."""
    document = {
        "format": BASELINE_FORMAT,
        "format_version": BASELINE_FORMAT_VERSION,
        "model": dict(model),
        "created_at": _now_iso(),
        "source": dict(source or {}),
        "binning": {
            "side": "right",
            "quantile_method": "inverted_cdf",
            "n_quantiles": n_quantiles,
            "tail_levels": list(tail_levels),
        },
        "smoothing": {"pseudo_count": 0.5},
        "tensors": [dict(t) for t in tensors],
        "features": [dict(f) for f in features],
        "thresholds": {},
        "dataset_rule": {"drift_share": 0.5},
    }
    Baseline.from_dict(document)
    return document


def write_baseline(document: Mapping[str, Any], path: str | Path) -> str:
    """Write the document; returns the sha256 of the bytes written (what ``Baseline.load`` reports)."""
    data = orjson.dumps(document, option=orjson.OPT_INDENT_2)
    Path(path).write_bytes(data)
    return hashlib.sha256(data).hexdigest()
