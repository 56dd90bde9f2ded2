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

The model's output distribution is computed on a held-out sample: each row is kept with
probability ``holdout`` (seeded), at most ``max_holdout_rows``, and run through the model
with onnxruntime on the CPU. Inputs use every row.

Last, every numeric and categorical feature gets its no-drift calibration table
(serve/drift/calibration.py): a seeded bootstrap on its bins at window sizes 100 …
100,000, bounded by ``calibration_time_s`` (features left over keep the closed form).
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from serve.baseline.model import BaselineInputError, ModelInfo, open_session
from serve.baseline.sources import Chunk, DataSource
from serve.datatypes import numpy_dtype
from serve.input_stats.baseline import (
    Baseline,
    BaselineFeature,
    BaselineTensor,
    as_sent,
    build_baseline_features,
    edge_dtype,
    feature_entry,
    make_baseline_document,
)
from serve.input_stats.binning import DEFAULT_QUANTILES, DEFAULT_TAIL_LEVELS, edges_from_quantiles, quantile_levels
from serve.input_stats.blocks import BytesSpec, CategoricalSpec, NumericSpec, item_key
from serve.input_stats.views import Extractor, build_extractors
from serve.types import TensorSpec

log = logging.getLogger(__name__)

KLL_K = 2000
DISPLAY_LEVELS = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
RUN_ROWS = 4096


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


# ---------------------------------------------------------------- combining sources


def _rechunk(chunks: Iterable[Chunk], rows: int) -> Iterator[Chunk]:
    """Chunks of exactly ``rows`` rows (the last may be shorter), whatever the source's own chunking."""
    pending: list[Chunk] = []
    held = 0
    for chunk in chunks:
        pending.append(chunk)
        held += _rows(chunk)
        while held >= rows:
            joined = {k: np.concatenate([c[k] for c in pending]) for k in pending[0]}
            yield {k: v[:rows] for k, v in joined.items()}
            rest = {k: v[rows:] for k, v in joined.items()}
            held -= rows
            pending = [rest] if held else []
    if held:
        yield {k: np.concatenate([c[k] for c in pending]) for k in pending[0]}


def _rows(chunk: Chunk) -> int:
    return int(next(iter(chunk.values())).shape[0]) if chunk else 0


def combined_chunks(sources: Sequence[DataSource], chunk_rows: int) -> Iterator[Chunk]:
    """Sources with the same inputs are shards (read one after another); sources with
    different inputs are columns of the same rows (read side by side, row counts must agree)."""
    groups: dict[tuple[str, ...], list[DataSource]] = {}
    for source in sources:
        groups.setdefault(tuple(sorted(source.tensors)), []).append(source)
    keys = list(groups)
    seen: set[str] = set()
    for key in keys:
        if seen & set(key):
            raise BaselineInputError(
                f"input(s) {sorted(seen & set(key))} appear in --data files with different sets of inputs; "
                "give each input's data once (shards must hold the same inputs)"
            )
        seen |= set(key)

    def stream(group: list[DataSource]) -> Iterator[Chunk]:
        for source in group:
            yield from source.chunks(chunk_rows)

    streams = [_rechunk(stream(groups[k]), chunk_rows) for k in keys]
    while True:
        parts = [next(s, None) for s in streams]
        if all(p is None for p in parts):
            return
        if any(p is None for p in parts) or len({_rows(p) for p in parts if p is not None}) > 1:
            raise BaselineInputError("--data files that hold different inputs have different numbers of rows")
        out: Chunk = {}
        for p in parts:
            assert p is not None
            out.update(p)
        yield out


def served_chunks(sources: Sequence[DataSource], specs: Sequence[TensorSpec], chunk_rows: int) -> Iterator[Chunk]:
    """``combined_chunks`` as clients will send them: each input cast to its datatype (``as_sent``), so that
    every pass sees the values the server will bin (CSV and Parquet are read as float64)."""
    datatypes = {s.name: s.datatype for s in specs}
    for chunk in combined_chunks(sources, chunk_rows):
        yield {name: as_sent(array, datatypes[name]) for name, array in chunk.items()}


# ---------------------------------------------------------------- running the model


class ModelRunner:
    def __init__(self, info: ModelInfo) -> None:
        self.info = info
        graph = info.graph if info.graph is not None else info.onnx_path.read_bytes()
        self.session = open_session(graph, info.onnx_path)

    def _feeds(self, chunk: Chunk) -> dict[str, np.ndarray]:
        feeds = {}
        for spec in self.info.inputs:
            array = chunk[spec.name]
            if spec.datatype == "BYTES":
                flat = [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in array.reshape(-1)]
                text = np.empty(len(flat), dtype=object)
                text[:] = flat
                feeds[spec.name] = text.reshape(array.shape)
            else:
                feeds[spec.name] = np.asarray(array).astype(numpy_dtype(spec.datatype), copy=False)
        return feeds

    def run(self, chunk: Chunk) -> dict[str, np.ndarray]:
        names = [s.name for s in self.info.outputs]
        feeds = self._feeds(chunk)
        rows = _rows(feeds)
        parts: list[list[np.ndarray]] = []
        # Batching models take any number of rows; others take groups of their own first dimension
        # (a remainder that does not fill one is left out).
        fixed = self.info.max_batch_size == 0 and self.info.first_dim not in (None, -1)
        step = int(self.info.first_dim) if fixed and self.info.first_dim else RUN_ROWS
        stop = rows - rows % step if fixed else rows
        for start in range(0, stop, step):
            parts.append(self.session.run(names, {k: v[start : start + step] for k, v in feeds.items()}))
        return {n: np.concatenate([p[j] for p in parts]) for j, n in enumerate(names)} if parts else {}


# ---------------------------------------------------------------- streaming (larger than memory)


def _provisional(
    specs: Sequence[TensorSpec], role: str, options: BaselineOptions
) -> tuple[Baseline, list[dict[str, Any]]]:
    tensors: list[dict[str, Any]] = [
        {"name": n, "role": role, "feature_names": list(v)} for n, v in options.feature_names.items()
    ]
    provisional = Baseline(
        model={}, features=[],
        tensors=[BaselineTensor(n, role, feature_names=tuple(v)) for n, v in options.feature_names.items()],
    )  # fmt: skip
    declared: list[BaselineFeature] = []
    for ex in build_extractors(specs, role, provisional):
        for f in ex.features:
            if f.name in options.categorical or f.tensor in options.categorical:
                declared.append(BaselineFeature(f.name, role, f.tensor, f.column, f.view, "categorical", vocabulary=()))
    provisional.features = declared
    return provisional, tensors


class _Sketches:
    """Pass one over data too large for memory: quantile sketches and category counts per feature."""

    def __init__(self, extractors: list[Extractor], missing: Mapping[str, Sequence[Any]]) -> None:
        import datasketches as ds

        self.extractors = extractors
        self.missing = [
            [list(missing.get(f.name, missing.get(f.tensor, ()))) for f in ex.features] for ex in extractors
        ]
        self.kll = [
            [ds.kll_doubles_sketch(KLL_K) for _ in ex.features] if isinstance(ex.spec, NumericSpec) else []
            for ex in extractors
        ]
        self.counts: list[list[Counter[Any]]] = [
            [Counter() for _ in ex.features] if isinstance(ex.spec, CategoricalSpec) else [] for ex in extractors
        ]

    def update(self, chunk: Chunk) -> None:
        for i, ex in enumerate(self.extractors):
            values = ex.extract(chunk[ex.tensor])
            for j in range(values.shape[0]):
                v = values[j]
                if self.kll[i]:
                    v = v[np.isfinite(v)]
                    if self.missing[i][j]:
                        v = v[~np.isin(v, self.missing[i][j])]
                    if v.size:
                        self.kll[i][j].update(v)
                elif self.counts[i]:
                    self.counts[i][j].update(v.tolist())


def _vocabulary(counted: Counter[Any], missing: Sequence[Any], max_size: int) -> list[Any]:
    missing_keys = {item_key(m) for m in missing} | {""}
    out: list[Any] = []
    for v, _ in counted.most_common():
        if isinstance(v, float) and np.isnan(v) or item_key(v) in missing_keys:
            continue
        if isinstance(v, bytes):
            v = v.decode("utf-8", errors="backslashreplace")
        elif isinstance(v, float) and v.is_integer():
            v = int(v)
        out.append(v)
        if len(out) == max_size:
            break
    return out


def _streamed_features(
    sketches: _Sketches,
    chunks: Iterable[Chunk],
    specs: Sequence[TensorSpec],
    role: str,
    options: BaselineOptions,
    progress: Any,
) -> list[dict[str, Any]]:
    """Pass two: edges from the sketches, then the server's accumulators over every chunk."""
    levels = quantile_levels(DEFAULT_QUANTILES, DEFAULT_TAIL_LEVELS)
    datatypes = {s.name: s.datatype for s in specs}
    plans = []
    for i, ex in enumerate(sketches.extractors):
        names = [f.name for f in ex.features]
        missing = sketches.missing[i]
        if isinstance(ex.spec, NumericSpec):
            edges: list[np.ndarray] = []
            entries: list[dict[str, Any]] = []
            for f, sk in zip(ex.features, sketches.kll[i], strict=True):
                if sk.is_empty():
                    edges.append(np.empty(0))
                    entries.append({"edges": [], "quantiles": {}})
                    continue
                dtype = edge_dtype(f, datatypes[ex.tensor])
                e = edges_from_quantiles(
                    sk.get_min_value(), sk.get_quantiles(levels.tolist()), sk.get_max_value(), dtype
                )
                edges.append(e)
                shown = sk.get_quantiles(list(DISPLAY_LEVELS))
                entries.append(
                    {
                        "edges": e.tolist(),
                        "quantiles": {str(q): float(v) for q, v in zip(DISPLAY_LEVELS, shown, strict=True)},
                    }
                )
            spec: Any = NumericSpec(names, edges, missing, kll_k=0)
        elif isinstance(ex.spec, CategoricalSpec):
            vocab = [
                _vocabulary(c, m, options.max_vocabulary) for c, m in zip(sketches.counts[i], missing, strict=True)
            ]
            entries = [{"vocabulary": v} for v in vocab]
            spec = CategoricalSpec(names, vocab, missing, lg_max_map_size=ex.spec.lg)
        else:
            spec = BytesSpec(names, missing, lg_max_map_size=ex.spec.lg)
            entries = [{} for _ in names]
        plans.append((ex, spec, spec.new_group(), entries, missing))
    for chunk in chunks:
        for ex, _, group, _, _ in plans:
            group.update(ex.extract(chunk[ex.tensor]))
        progress.update(_rows(chunk))
    out = []
    for ex, _, group, entries, missing in plans:
        out += [
            feature_entry(f, role, entry, stats, miss)
            for f, entry, stats, miss in zip(ex.features, entries, group.to_json(), missing, strict=True)
        ]
    return out


# ---------------------------------------------------------------- the command's core


def _progress(options: BaselineOptions, total: int | None, desc: str) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="rows", unit_scale=True, file=sys.stderr, disable=not options.progress)


def _canonical_names(info: ModelInfo, options: BaselineOptions) -> BaselineOptions:
    """``--categorical`` / ``--missing-value`` may name a feature, its input, or ``<input>[i]``; names are checked
    here and turned into the feature names the baseline uses."""
    provisional, _ = _provisional(info.inputs, "input", BaselineOptions(feature_names=options.feature_names))
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


def build_baseline(info: ModelInfo, sources: Sequence[DataSource], options: BaselineOptions) -> dict[str, Any]:
    """The baseline document for ``info`` from ``sources`` (see the module docstring)."""
    if not 0 <= options.holdout <= 1:
        raise BaselineInputError("--holdout must be a fraction between 0 and 1")
    covered = {t for s in sources for t in s.tensors}
    missing_inputs = [s.name for s in info.inputs if s.name not in covered]
    if missing_inputs:
        raise BaselineInputError(f"no --data for model input(s) {missing_inputs}")
    categorical = list(dict.fromkeys([*info.categorical, *options.categorical]))
    feature_names = {**{k: v for s in sources for k, v in s.feature_names.items()}, **options.feature_names}
    options = _canonical_names(info, dataclasses.replace(options, categorical=categorical, feature_names=feature_names))
    categorical = list(options.categorical)

    rng = np.random.default_rng(options.seed)
    runner = ModelRunner(info) if options.holdout > 0 and info.outputs else None
    outputs: dict[str, list[np.ndarray]] = {}
    held_out = 0
    buffered: list[Chunk] | None = []
    buffered_bytes = 0
    provisional, tensors = _provisional(info.inputs, "input", options)
    extractors = build_extractors(info.inputs, "input", provisional)
    sketches: _Sketches | None = None
    total_rows = 0
    known_rows = (
        sum(s.rows for s in sources if s.rows is not None) if all(s.rows is not None for s in sources) else None
    )
    if known_rows is not None and len({tuple(sorted(s.tensors)) for s in sources}) > 1:
        known_rows = None

    bar = _progress(options, known_rows, "reading")
    for chunk in served_chunks(sources, info.inputs, options.chunk_rows):
        n = _rows(chunk)
        total_rows += n
        if runner is not None and held_out < options.max_holdout_rows:
            pick = np.flatnonzero(rng.random(n) < options.holdout)[: options.max_holdout_rows - held_out]
            if pick.size:
                for name, array in runner.run({k: v[pick] for k, v in chunk.items()}).items():
                    outputs.setdefault(name, []).append(array)
                held_out += int(pick.size)
        if buffered is not None:
            buffered.append(chunk)
            buffered_bytes += sum(v.nbytes if v.dtype != object else v.size * 64 for v in chunk.values())
            if buffered_bytes > options.memory_limit_bytes:
                log.info(
                    "data exceed %d bytes: switching to quantile sketches and a second pass",
                    options.memory_limit_bytes,
                )
                sketches = _Sketches(extractors, options.missing_values)
                for c in buffered:
                    sketches.update(c)
                buffered = None
        elif sketches is not None:
            sketches.update(chunk)
        bar.update(n)
    bar.close()
    if total_rows == 0:
        raise BaselineInputError("the training data have no rows")

    if buffered is not None:
        arrays = {k: np.concatenate([c[k] for c in buffered]) for k in buffered[0]}
        features, tensors = build_baseline_features(
            arrays, info.inputs, role="input", categorical=categorical, feature_names=feature_names,
            missing_values=options.missing_values, max_vocabulary=options.max_vocabulary,
        )  # fmt: skip
        sampling = "all rows, exact quantiles"
    else:
        assert sketches is not None
        bar = _progress(options, total_rows, "counting")
        chunks = served_chunks(sources, info.inputs, options.chunk_rows)
        features = _streamed_features(sketches, chunks, info.inputs, "input", options, bar)
        bar.close()
        sampling = f"all rows, edges from KLL sketches (k={KLL_K})"

    if outputs:
        out_arrays = {k: np.concatenate(v) for k, v in outputs.items()}
        out_features, out_tensors = build_baseline_features(out_arrays, info.outputs, role="output")
        features += out_features
        tensors += out_tensors
    source = {
        "dataset": ", ".join(s.describe() for s in sources),
        "rows": total_rows,
        "split": "inputs: all rows; outputs: held-out sample",
        "sampling": sampling,
        "holdout": {"fraction": options.holdout, "rows": held_out, "seed": options.seed},
    }
    if options.calibration_replicates > 0:
        from serve.drift.calibration import calibrate_features

        calibrated = calibrate_features(
            features, replicates=options.calibration_replicates, seed=options.seed,
            time_budget_s=options.calibration_time_s, progress=options.progress,
        )  # fmt: skip
        source["calibration"] = calibrated.to_json(options.calibration_replicates, options.seed)
    model = {"name": info.name, "version": info.version_str, "onnx_sha256": info.onnx_sha256}
    return make_baseline_document(model, features, tensors, source=source)
