"""baseline.json's JSON types, and reading the file (its layout is described in baseline.py)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NotRequired, Required, TypedDict, cast

import numpy as np
import orjson

from serve.input_stats.binning import validate_edges
from serve.input_stats.block_json import Block
from serve.input_stats.document import BaselineModel, BaselineRef, FeatureIdentity
from serve.input_stats.views import VIEWS, ViewOptions, build_extractors
from serve.types import TensorSpec

BASELINE_FORMAT = "serve.baseline"
BASELINE_FORMAT_VERSION = 1
BASELINE_FILENAME = "baseline.json"
KINDS = ("numeric", "categorical", "bytes")
ROLES = ("input", "output")


class BaselineError(ValueError):
    pass


class BaselineTensorJson(TypedDict, total=False):
    name: Required[str]
    role: Required[str]
    view: str | None
    feature_names: list[str]
    classifier: bool | None
    layout: str | None


class BaselineFeatureJson(FeatureIdentity, total=False):
    missing_values: list[Any]
    edges: list[float]  # numeric
    quantiles: dict[str, float]  # numeric, for people
    vocabulary: list[Any]  # categorical
    stats: Block
    std: float  # numeric, with more than one value
    null_calibration: Mapping[str, Any]  # serve/drift/calibration.py's table; the server never reads it


class HoldoutJson(TypedDict):
    fraction: float
    rows: int
    seed: int


class BaselineSourceJson(TypedDict, total=False):
    dataset: str
    rows: int
    split: str
    sampling: str
    holdout: HoldoutJson
    calibration: Mapping[str, Any]  # how serve/drift/calibration.py made its tables


class BinningJson(TypedDict):
    side: str
    quantile_method: str
    n_quantiles: int
    tail_levels: list[float]


class SmoothingJson(TypedDict):
    pseudo_count: float


class DatasetRuleJson(TypedDict):
    drift_share: float


class HeldOutJson(TypedDict, total=False):
    """The model's performance on the held-out rows: classification or regression fields, with ``rows``."""

    rows: Required[int]  # held-out rows with a label and a finite prediction
    accuracy: float  # classification
    accuracy_se: float  # sqrt(accuracy (1 - accuracy) / rows)
    f1: float  # two classes: of class index 1; more: macro
    auc: float | None  # two classes: of class index 1's score; more: one-vs-rest macro; None if a class is absent
    log_loss: float
    mae: float  # regression
    mae_se: float
    rmse: float
    bias: float  # mean of prediction minus label


class CalibrationJson(TypedDict):
    """P(prediction correct | confidence) per bin of the output feature ``feature`` (``<tensor>::confidence``),
    with the edges the server bins that feature against, so a window's published bin counts weigh it directly.
    The same shape as serve/ground_truth/estimate.py's ``CalibrationJson``, which estimates from it (this layer
    cannot import that one)."""

    feature: str
    edges: list[float]
    count: list[int]  # held-out rows per bin (len(edges) + 1 bins, open tails)
    correct: list[int]  # of those, predicted right
    p_correct: list[float]  # correct / count made non-decreasing (isotonic); empty bins take a neighbour's


class PerformanceJson(TypedDict, total=False):
    """``performance``: written by ``serve baseline --labels COLUMN`` (absent otherwise)."""

    output: Required[str]  # the output tensor that is the prediction
    task: Required[str]  # "classification" | "regression"
    label_column: Required[str]
    classes: list[str]  # classification: the label of each class index (column of the output)
    held_out: Required[HeldOutJson]
    calibration: CalibrationJson  # classification only


class BaselineDocument(TypedDict):
    format: str
    format_version: int
    model: BaselineModel
    created_at: str
    source: BaselineSourceJson
    binning: BinningJson
    smoothing: SmoothingJson
    tensors: list[BaselineTensorJson]
    features: list[BaselineFeatureJson]
    thresholds: dict[str, float]
    dataset_rule: DatasetRuleJson
    performance: NotRequired[PerformanceJson]


TASKS = ("classification", "regression")


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
    stats: Mapping[str, Any] | None = None  # a block (block_json.Block), as read from the file
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


def _performance_from_dict(raw: Any) -> PerformanceJson | None:
    """The ``performance`` section, checked where a reader relies on it: the task, the calibration's bins."""
    if raw is None:
        return None
    if not isinstance(raw, Mapping) or not isinstance(raw.get("held_out"), Mapping):
        raise BaselineError("performance must be an object with 'output', 'task', 'label_column' and 'held_out'")
    if raw.get("task") not in TASKS:
        raise BaselineError(f"performance: task must be one of {TASKS}, not {raw.get('task')!r}")
    calibration = raw.get("calibration")
    if calibration is not None:
        bins = len(calibration.get("edges", [])) + 1
        sizes = {key: len(calibration.get(key, [])) for key in ("count", "correct", "p_correct")}
        if any(size != bins for size in sizes.values()):
            raise BaselineError(f"performance: calibration has {sizes} values for {bins} bins")
    return cast(PerformanceJson, dict(raw))


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
    model: BaselineModel
    features: list[BaselineFeature]
    tensors: list[BaselineTensor] = field(default_factory=list)
    document: dict[str, Any] = field(default_factory=dict)  # the whole file as read (unknown keys too)
    sha256: str | None = None  # of the file's bytes; reported by the server, checked by the monitor
    performance: PerformanceJson | None = None  # written with --labels: held-out performance and calibration

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
            model=cast(BaselineModel, dict(document.get("model") or {})),
            features=features,
            tensors=[_tensor_from_dict(t) for t in document.get("tensors", [])],
            document=dict(document),
            sha256=sha256,
            performance=_performance_from_dict(document.get("performance")),
        )

    @classmethod
    def load(cls, path: str | Path) -> Baseline:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            reason = exc.strerror.lower() if exc.strerror else str(exc)
            raise BaselineError(
                f"{path}: cannot read the baseline ({reason}); give the file `serve baseline` wrote"
            ) from None
        return cls.from_bytes(data, str(path))

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

    def summary(self) -> BaselineRef:
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
