"""``serve baseline``: training data → ``baseline.json`` with the server's own views, edges and bins.

One streaming pass reads every chunk once. While the data fit in ``memory_limit_bytes``
the chunks are kept and the baseline is computed in memory by
``serve.input_stats.baseline.build_baseline_features`` (exact training quantiles). Beyond that
the pass switches to sketches: per numeric feature a KLL quantile sketch
(DataSketches, k = 2000: rank error ≈ 0.15 %, so an edge sits within ~0.15 % of its
training quantile) and exact category counts; a second pass then counts bins with the
server's accumulators. Edges come from ``binning.edges_from_quantiles`` either way, so
bin semantics (``side="right"``, open tails outside the training range) are the
server's. Every pass reads the inputs as clients will send them, cast to each input's
datatype (``served_chunks``): the server bins FP32 values, not the file's float64 ones.

Reading and combining the sources is chunks.py, the second pass streamed.py, running the model
runner.py.

The model's output distribution is computed on a held-out sample: each row is kept with
probability ``holdout`` (seeded), at most ``max_holdout_rows``, and run through the model
with onnxruntime on the CPU. Inputs use every row.

With ``label_column`` (``--labels``) the held-out rows' labels are kept beside their outputs, and the document
gains ``performance``: held-out metrics and the calibration of the prediction's confidence (performance.py).

Last, every numeric and categorical feature gets its no-drift calibration table
(serve/drift/calibration.py): a seeded bootstrap on its bins at window sizes 100 …
100,000, bounded by ``calibration_time_s`` (features left over keep the closed form).
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from serve.baseline.chunks import check_labels, rows_of, served_chunks
from serve.baseline.model import BaselineInputError, ModelInfo
from serve.baseline.performance import Prediction, choose_prediction, performance_section
from serve.baseline.runner import ModelRunner
from serve.baseline.sources import LABEL, Chunk, DataSource
from serve.baseline.streamed import KLL_K, Sketches, streamed_features
from serve.input_stats.baseline import (
    Baseline,
    BaselineDocument,
    BaselineFeatureJson,
    BaselineSourceJson,
    BaselineTensorJson,
    build_baseline_features,
    declared_baseline,
    make_baseline_document,
)
from serve.input_stats.baseline_file import PerformanceJson
from serve.input_stats.document import BaselineModel
from serve.input_stats.views import Extractor, build_extractors

log = logging.getLogger(__name__)


@dataclass(slots=True)
class BaselineOptions:
    categorical: Sequence[str] = ()
    feature_names: Mapping[str, Sequence[str]] = field(default_factory=dict)
    missing_values: Mapping[str, Sequence[Any]] = field(default_factory=dict)
    holdout: float = 0.1
    max_holdout_rows: int = 100_000
    chunk_rows: int = 65_536
    memory_limit_bytes: int = 1 << 30
    max_vocabulary: int = 1000
    seed: int = 0
    progress: bool = True
    calibration_replicates: int = 2000  # bootstrap replicates per feature and window size; 0: no table
    calibration_time_s: float = 300.0
    label_column: str | None = None  # --labels: the held-out rows' labels give the document's performance


# ---------------------------------------------------------------- the command's core


def _progress(options: BaselineOptions, total: int | None, desc: str) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="rows", unit_scale=True, file=sys.stderr, disable=not options.progress)


def _canonical_names(info: ModelInfo, options: BaselineOptions) -> BaselineOptions:
    """``--categorical`` / ``--missing-value`` may name a feature, its input, or ``<input>[i]``; names are checked
    here and turned into the feature names the baseline uses."""
    provisional = declared_baseline(info.inputs, "input", options.feature_names, ())
    features = [f for ex in build_extractors(info.inputs, "input", provisional) for f in ex.features]
    alias = {f.name: f.name for f in features} | {f.tensor: f.tensor for f in features}
    alias |= {f"{f.tensor}[{f.column}]": f.name for f in features if f.column is not None}

    def resolve(names: Sequence[str], what: str) -> list[str]:
        unknown = [n for n in names if n not in alias]
        if unknown:
            raise BaselineInputError(
                f"{what} names {unknown}, which are not input features or inputs ({sorted(set(alias.values()))})"
            )
        return [alias[n] for n in names]

    categorical = resolve(list(options.categorical), "--categorical")
    missing = dict(
        zip(
            resolve(list(options.missing_values), "--missing-value"),
            options.missing_values.values(),
            strict=True,
        )
    )
    return dataclasses.replace(options, categorical=categorical, missing_values=missing)


def _resolved(info: ModelInfo, sources: Sequence[DataSource], options: BaselineOptions) -> BaselineOptions:
    """The options checked against the model, with its declared categories and the sources' column names."""
    if not 0 <= options.holdout <= 1:
        raise BaselineInputError("--holdout must be a fraction between 0 and 1")
    if options.label_column is not None:
        check_labels(sources, options.label_column)
        if options.holdout == 0:
            raise BaselineInputError("--labels needs held-out rows to measure the model on: --holdout above 0")
    covered = {t for s in sources for t in s.tensors}
    missing_inputs = [s.name for s in info.inputs if s.name not in covered]
    if missing_inputs:
        raise BaselineInputError(f"no --data for model input(s) {missing_inputs}")
    categorical = list(dict.fromkeys([*info.categorical, *options.categorical]))
    feature_names = {**{k: v for s in sources for k, v in s.feature_names.items()}, **options.feature_names}
    return _canonical_names(info, dataclasses.replace(options, categorical=categorical, feature_names=feature_names))


@dataclass(slots=True)
class _FirstPass:
    """One read of every chunk: the rows, the held-out sample's outputs, and the inputs, kept while they fit in
    memory and sketched from then on (the second pass then counts bins)."""

    options: BaselineOptions
    extractors: list[Extractor]
    runner: ModelRunner | None
    rng: np.random.Generator
    rows: int = 0
    held_out: int = 0
    outputs: dict[str, list[np.ndarray]] = field(default_factory=dict)
    labels: list[np.ndarray] = field(default_factory=list)  # the held-out rows' (with --labels)
    buffered: list[Chunk] | None = field(default_factory=list)  # None once sketching
    buffered_bytes: int = 0
    sketches: Sketches | None = None

    def take(self, chunk: Chunk) -> None:
        n = rows_of(chunk)
        self.rows += n
        self._hold_out(chunk, n)
        if self.buffered is None:
            assert self.sketches is not None
            self.sketches.update(chunk)
            return
        self.buffered.append(chunk)
        self.buffered_bytes += sum(v.nbytes if v.dtype != object else v.size * 64 for v in chunk.values())
        if self.buffered_bytes > self.options.memory_limit_bytes:
            log.info(
                "data exceed %d bytes: switching to quantile sketches and a second pass",
                self.options.memory_limit_bytes,
            )
            self.sketches = Sketches(self.extractors, self.options.missing_values)
            for c in self.buffered:
                self.sketches.update(c)
            self.buffered = None

    def _hold_out(self, chunk: Chunk, n: int) -> None:
        """Each row with probability ``holdout``, up to ``max_holdout_rows``, through the model."""
        o = self.options
        if self.runner is None or self.held_out >= o.max_holdout_rows:
            return
        pick = np.flatnonzero(self.rng.random(n) < o.holdout)[: o.max_holdout_rows - self.held_out]
        if pick.size:
            outputs = self.runner.run({k: v[pick] for k, v in chunk.items() if k != LABEL})
            for name, array in outputs.items():
                self.outputs.setdefault(name, []).append(array)
            if LABEL in chunk:
                ran = rows_of(outputs)  # a model without batching leaves out a remainder that fills no group
                self.labels.append(chunk[LABEL][pick[:ran]])
            self.held_out += int(pick.size)


def _read(info: ModelInfo, sources: Sequence[DataSource], options: BaselineOptions) -> _FirstPass:
    provisional = declared_baseline(info.inputs, "input", options.feature_names, options.categorical)
    first = _FirstPass(
        options,
        extractors=build_extractors(info.inputs, "input", provisional),
        runner=ModelRunner(info) if options.holdout > 0 and info.outputs else None,
        rng=np.random.default_rng(options.seed),
    )
    known_rows = sum(s.rows or 0 for s in sources) if all(s.rows is not None for s in sources) else None
    if len({tuple(sorted(s.tensors)) for s in sources}) > 1:
        known_rows = None  # sources side by side: their rows are the same rows
    bar = _progress(options, known_rows, "reading")
    for chunk in served_chunks(sources, info.inputs, options.chunk_rows):
        first.take(chunk)
        bar.update(rows_of(chunk))
    bar.close()
    if first.rows == 0:
        raise BaselineInputError("the training data have no rows")
    return first


def _input_features(
    info: ModelInfo, sources: Sequence[DataSource], options: BaselineOptions, first: _FirstPass
) -> tuple[list[BaselineFeatureJson], list[BaselineTensorJson], str]:
    """The inputs' features and tensors, and how they were sampled: in memory with exact quantiles, or
    with a second pass over the data."""
    if first.buffered is not None:
        arrays = {k: np.concatenate([c[k] for c in first.buffered]) for k in first.buffered[0]}
        features, tensors = build_baseline_features(
            arrays, info.inputs, role="input", categorical=options.categorical, feature_names=options.feature_names,
            missing_values=options.missing_values, max_vocabulary=options.max_vocabulary,
        )  # fmt: skip
        return features, tensors, "all rows, exact quantiles"
    assert first.sketches is not None
    tensors = [{"name": n, "role": "input", "feature_names": list(v)} for n, v in options.feature_names.items()]
    bar = _progress(options, first.rows, "counting")
    chunks = served_chunks(sources, info.inputs, options.chunk_rows)
    features = streamed_features(first.sketches, chunks, info.inputs, "input", options.max_vocabulary, bar)
    bar.close()
    return features, tensors, f"all rows, edges from KLL sketches (k={KLL_K})"


def _calibrate(features: list[BaselineFeatureJson], options: BaselineOptions) -> Mapping[str, Any]:
    """Every feature's no-drift table into its entry; what was done, for the file's ``source``."""
    from serve.drift.calibration import calibrate_features

    report = calibrate_features(
        features, replicates=options.calibration_replicates, seed=options.seed,
        time_budget_s=options.calibration_time_s, progress=options.progress,
    )  # fmt: skip
    return report.to_json(options.calibration_replicates, options.seed)


def build_baseline(
    info: ModelInfo,
    sources: Sequence[DataSource],
    options: BaselineOptions,
    class_labels: Mapping[str, Sequence[str]] | None = None,
) -> BaselineDocument:
    """The baseline document for ``info`` from ``sources`` (see the module docstring); ``class_labels``: the
    outputs' class labels as the server serves them (``model.load_model``), which ``--labels`` values name."""
    options = _resolved(info, sources, options)
    prediction = choose_prediction(info.outputs, class_labels or {}) if options.label_column is not None else None
    first = _read(info, sources, options)
    features, tensors, sampling = _input_features(info, sources, options, first)
    out_arrays: dict[str, np.ndarray] = {}
    out_features: list[BaselineFeatureJson] = []
    if first.outputs:
        out_arrays = {k: np.concatenate(v) for k, v in first.outputs.items()}
        out_features, out_tensors = build_baseline_features(out_arrays, info.outputs, role="output")
        features += out_features
        tensors += out_tensors
    source: BaselineSourceJson = {
        "dataset": ", ".join(s.describe() for s in sources),
        "rows": first.rows,
        "split": "inputs: all rows; outputs: held-out sample",
        "sampling": sampling,
        "holdout": {"fraction": options.holdout, "rows": first.held_out, "seed": options.seed},
    }
    if options.calibration_replicates > 0:
        source["calibration"] = _calibrate(features, options)
    model: BaselineModel = {"name": info.name, "version": info.version_str, "onnx_sha256": info.onnx_sha256}
    document = make_baseline_document(model, features, tensors, source=source)
    if prediction is not None:
        document["performance"] = _performance(prediction, first, out_arrays, out_features, options)
        Baseline.from_dict(document)  # the section as readers check it
    return document


def _performance(
    prediction: Prediction,
    first: _FirstPass,
    out_arrays: Mapping[str, np.ndarray],
    out_features: Sequence[BaselineFeatureJson],
    options: BaselineOptions,
) -> PerformanceJson:
    assert options.label_column is not None
    name = prediction.output.name
    outputs = out_arrays.get(name, np.empty((0, *prediction.output.dims)))
    labels = np.concatenate(first.labels) if first.labels else np.empty(0, dtype=object)
    return performance_section(prediction, outputs, labels, options.label_column, out_features)
