"""Paired outputs of a shadow (or candidate) and the primary on the same rows: agreement of the
predicted class with the class-flip matrix, or the distribution of |Δ output| for regression, and
the two latencies. Mergeable across workers and replicas: every field is a count, a sum or a maximum,
so merging the comparisons of two batches gives exactly the comparison of their concatenation.

Which output is compared, in this order of preference (the first output of the primary, in the
model's order, that the shadow also has with the same role and rows):

- a **label**: an integer, boolean or BYTES output of shape [rows] or [rows, 1] (skl2onnx's
  ``output_label``, an ArgMax node) — the predicted class itself;
- **scores**: a float output of shape [rows, k > 1] (probabilities or logits) — its argmax;
- a **value**: a float output of shape [rows] or [rows, 1] — regression, compared by |Δ|.

The analyser's disagreement gate reads ``rows`` and ``disagreements``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, TypedDict

import numpy as np

ComparisonKind = Literal["", "classification", "regression"]
_OutputRole = Literal["label", "scores", "value"]
_PREFERENCE: tuple[_OutputRole, ...] = ("label", "scores", "value")

# |Δ| bins: exactly 0; (0, 1e-9); one per decade [1e-9, 1e-8) … [1e5, 1e6); overflow (≥ 1e6, inf or NaN).
# Fixed edges, so that histograms from any worker or replica add bin by bin.
ABS_DELTA_EDGES: tuple[float, ...] = tuple(10.0**exponent for exponent in range(-9, 7))
ABS_DELTA_BINS = len(ABS_DELTA_EDGES) + 2
_EDGES = np.asarray(ABS_DELTA_EDGES)

# The flip matrix names at most this many classes; rows of the others count under OTHER_CLASS (the classes
# with the most rows stay named). ``rows`` and ``disagreements`` stay exact whatever the number of classes.
MAX_CLASSES = 64
OTHER_CLASS = "(other)"


class FlipDocument(TypedDict):
    primary: str  # the class the primary predicted
    shadow: str  # the class the shadow predicted on the same row
    count: int


class AbsDeltaDocument(TypedDict):
    edges: list[float]  # ABS_DELTA_EDGES; counts has two bins more (exactly 0, and overflow)
    counts: list[int]
    sum: float  # of the finite |Δ|
    max: float


class LatencyDocument(TypedDict):
    pairs: int  # requests whose two durations are summed below
    primary_ns: int
    shadow_ns: int


class ComparisonDocument(TypedDict):
    kind: ComparisonKind
    output: str
    rows: int
    disagreements: int
    incomparable: int
    flips: list[FlipDocument]
    abs_delta: AbsDeltaDocument
    latency: LatencyDocument


# The name the rollout evidence (serve/rollout/evidence.py) imports.
OutputComparisonJson = ComparisonDocument


def _no_deltas() -> list[int]:
    return [0] * ABS_DELTA_BINS


@dataclass(slots=True)
class OutputComparison:
    rows: int = 0  # rows compared
    disagreements: int = 0  # rows whose predicted class differs (classification); 0 for regression
    kind: ComparisonKind = ""  # "" until a comparable output was seen
    output: str = ""  # the output compared
    incomparable: int = 0  # requests whose outputs could not be paired (no shared output of one role, other rows)
    # (primary class, shadow class) -> rows, agreeing rows included (the diagonal).
    flips: dict[tuple[str, str], int] = field(default_factory=dict)
    abs_delta_counts: list[int] = field(default_factory=_no_deltas)  # per bin of ABS_DELTA_EDGES
    abs_delta_sum: float = 0.0
    abs_delta_max: float = 0.0
    latency_pairs: int = 0
    primary_ns: int = 0
    shadow_ns: int = 0

    def disagreement(self) -> float | None:
        return self.disagreements / self.rows if self.rows else None

    def latency_ratio(self) -> float | None:
        """The shadow's mean duration over the primary's, on the same requests."""
        if self.latency_pairs == 0 or self.primary_ns <= 0:
            return None
        return self.shadow_ns / self.primary_ns

    def add_latency(self, primary_ns: int, shadow_ns: int) -> None:
        self.latency_pairs += 1
        self.primary_ns += max(0, primary_ns)
        self.shadow_ns += max(0, shadow_ns)

    def merge(self, other: OutputComparison) -> None:
        """Add ``other``'s counts to this one (another batch, worker, window or replica)."""
        self.rows += other.rows
        self.disagreements += other.disagreements
        self.kind = self.kind or other.kind
        self.output = self.output or other.output
        self.incomparable += other.incomparable
        if other.flips:
            added_class = False
            for pair, count in other.flips.items():
                held = self.flips.get(pair)
                added_class = added_class or held is None
                self.flips[pair] = (held or 0) + count
            if added_class:
                self.flips = _bounded(self.flips)
        if other.kind == "regression":  # a classification's histogram is all zeros: skip it on every request
            deltas = zip(self.abs_delta_counts, other.abs_delta_counts, strict=True)
            self.abs_delta_counts = [a + b for a, b in deltas]
            self.abs_delta_sum += other.abs_delta_sum
            self.abs_delta_max = max(self.abs_delta_max, other.abs_delta_max)
        self.latency_pairs += other.latency_pairs
        self.primary_ns += other.primary_ns
        self.shadow_ns += other.shadow_ns

    def since(self, earlier: OutputComparison) -> OutputComparison:
        """What this comparison added after ``earlier``, a snapshot of it (a step's or a window's share):
        every count minus the earlier one's. The maximum |Δ| cannot be subtracted and stays this one's;
        past MAX_CLASSES, a class folded into OTHER_CLASS in between makes the flip counts approximate."""
        flips = {pair: count - earlier.flips.get(pair, 0) for pair, count in self.flips.items()}
        return OutputComparison(
            rows=self.rows - earlier.rows,
            disagreements=self.disagreements - earlier.disagreements,
            kind=self.kind,
            output=self.output,
            incomparable=self.incomparable - earlier.incomparable,
            flips={pair: count for pair, count in flips.items() if count > 0},
            abs_delta_counts=[a - b for a, b in zip(self.abs_delta_counts, earlier.abs_delta_counts, strict=True)],
            abs_delta_sum=self.abs_delta_sum - earlier.abs_delta_sum,
            abs_delta_max=self.abs_delta_max,
            latency_pairs=self.latency_pairs - earlier.latency_pairs,
            primary_ns=self.primary_ns - earlier.primary_ns,
            shadow_ns=self.shadow_ns - earlier.shadow_ns,
        )

    def copy(self) -> OutputComparison:
        twin = OutputComparison()
        twin.merge(self)
        return twin

    def to_json(self) -> ComparisonDocument:
        flips = sorted(self.flips.items(), key=lambda item: (-item[1], item[0]))
        return {
            "kind": self.kind,
            "output": self.output,
            "rows": self.rows,
            "disagreements": self.disagreements,
            "incomparable": self.incomparable,
            "flips": [{"primary": p, "shadow": s, "count": count} for (p, s), count in flips],
            "abs_delta": {
                "edges": list(ABS_DELTA_EDGES),
                "counts": list(self.abs_delta_counts),
                "sum": self.abs_delta_sum,
                "max": self.abs_delta_max,
            },
            "latency": {"pairs": self.latency_pairs, "primary_ns": self.primary_ns, "shadow_ns": self.shadow_ns},
        }

    @classmethod
    def from_json(cls, document: ComparisonDocument) -> OutputComparison:
        """The comparison ``to_json`` wrote (by another worker or replica); ValueError if it is not one."""
        deltas = document["abs_delta"]
        if [float(e) for e in deltas["edges"]] != list(ABS_DELTA_EDGES) or len(deltas["counts"]) != ABS_DELTA_BINS:
            raise ValueError("the comparison's |Δ| histogram has other bin edges than this server's")
        kind = document["kind"]
        if kind not in ("", "classification", "regression"):
            raise ValueError(f"unknown comparison kind {kind!r}")
        latency = document["latency"]
        return cls(
            rows=int(document["rows"]),
            disagreements=int(document["disagreements"]),
            kind=kind,
            output=str(document["output"]),
            incomparable=int(document["incomparable"]),
            flips={(str(f["primary"]), str(f["shadow"])): int(f["count"]) for f in document["flips"]},
            abs_delta_counts=[int(c) for c in deltas["counts"]],
            abs_delta_sum=float(deltas["sum"]),
            abs_delta_max=float(deltas["max"]),
            latency_pairs=int(latency["pairs"]),
            primary_ns=int(latency["primary_ns"]),
            shadow_ns=int(latency["shadow_ns"]),
        )


def compare(primary: Mapping[str, np.ndarray], shadow: Mapping[str, np.ndarray]) -> OutputComparison:
    """One request's (or batch's) outputs of the primary and the shadow, row by row."""
    chosen = _chosen_output(primary, shadow)
    if chosen is None:
        return OutputComparison(incomparable=1)
    name, role = chosen
    p, s = primary[name], shadow[name]
    rows = p.shape[0]
    if role == "label":
        return _compare_classes(name, p.reshape(rows), s.reshape(rows))
    if role == "scores":
        return _compare_classes(name, np.argmax(p, axis=1), np.argmax(s, axis=1))
    return _compare_values(name, p.reshape(rows), s.reshape(rows))


def _role(array: np.ndarray) -> _OutputRole | None:
    if not isinstance(array, np.ndarray) or array.ndim == 0 or array.ndim > 2:
        return None
    per_row = array.shape[1] if array.ndim == 2 else 1
    kind = array.dtype.kind
    if kind == "f":
        return "value" if per_row == 1 else "scores" if per_row > 1 else None
    if per_row != 1:
        return None
    if kind in "iubSU":
        return "label"
    # BYTES: an object array of str or bytes (a ZipMap's dictionaries are not a label).
    if kind == "O" and array.size and isinstance(array.flat[0], str | bytes):
        return "label"
    return None


def _chosen_output(
    primary: Mapping[str, np.ndarray], shadow: Mapping[str, np.ndarray]
) -> tuple[str, _OutputRole] | None:
    paired: dict[_OutputRole, str] = {}
    for name, p in primary.items():
        s = shadow.get(name)
        if s is None:
            continue
        role = _role(p)
        if role is None or role != _role(s) or p.shape[0] != s.shape[0] or role in paired:
            continue
        if role == "value" and p.shape != s.shape:
            continue
        paired[role] = name
    for role in _PREFERENCE:
        if role in paired:
            return paired[role], role
    return None


def _class_name(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _distinct(values: np.ndarray) -> tuple[list[str], np.ndarray]:
    """The names of the distinct values, and each row's index into them (sorting, no loop over rows)."""
    distinct, inverse = np.unique(values, return_inverse=True)
    return [_class_name(v) for v in distinct.tolist()], inverse.reshape(-1)


def _compare_classes(output: str, primary: np.ndarray, shadow: np.ndarray) -> OutputComparison:
    if primary.dtype.kind in "iub" and shadow.dtype.kind in "iub":
        flips = _integer_flips(primary, shadow)
        disagreements = int(np.count_nonzero(primary != shadow))
    else:
        flips, disagreements = _named_flips(primary, shadow)
    return OutputComparison(
        rows=len(primary), disagreements=disagreements, kind="classification", output=output, flips=_bounded(flips)
    )


# Integer classes spanning at most this many values are paired by counting (bincount) rather than sorting.
_DENSE_CLASSES = 256


def _integer_flips(primary: np.ndarray, shadow: np.ndarray) -> dict[tuple[str, str], int]:
    """The flip matrix of integer (or boolean) classes: each pair of classes coded as one integer and
    counted, the usual case of a label output or an argmax (this runs for every mirrored request)."""
    both = np.concatenate((primary, shadow)).astype(np.int64, copy=False)
    low = int(both.min())
    width = int(both.max()) - low + 1
    if width > _DENSE_CLASSES:
        return _named_flips(primary, shadow)[0]
    counts = np.bincount((both[: len(primary)] - low) * width + (both[len(primary) :] - low))
    pairs = np.flatnonzero(counts)
    return {
        (str(pair // width + low), str(pair % width + low)): count
        for pair, count in zip(pairs.tolist(), counts[pairs].tolist(), strict=True)
    }


def _named_flips(primary: np.ndarray, shadow: np.ndarray) -> tuple[dict[tuple[str, str], int], int]:
    """The flip matrix and the disagreements of any classes (text, or integers far apart), by sorting."""
    names_p, rows_p = _distinct(primary)
    names_s, rows_s = _distinct(shadow)
    names = sorted(set(names_p) | set(names_s))
    code = {name: i for i, name in enumerate(names)}
    codes_p = np.asarray([code[n] for n in names_p], dtype=np.int64)[rows_p]
    codes_s = np.asarray([code[n] for n in names_s], dtype=np.int64)[rows_s]
    width = len(names)
    pairs, counts = np.unique(codes_p * width + codes_s, return_counts=True)
    flips = {
        (names[pair // width], names[pair % width]): count
        for pair, count in zip(pairs.tolist(), counts.tolist(), strict=True)
    }
    return flips, int(np.count_nonzero(codes_p != codes_s))


def _compare_values(output: str, primary: np.ndarray, shadow: np.ndarray) -> OutputComparison:
    delta = np.abs(primary.astype(np.float64) - shadow.astype(np.float64))
    # NaN sorts past every edge, so it lands in the overflow bin with inf and the values ≥ 1e6.
    bins = np.where(delta == 0, 0, 1 + np.searchsorted(_EDGES, delta, side="right"))
    finite = delta[np.isfinite(delta)]
    return OutputComparison(
        rows=len(delta),
        kind="regression",
        output=output,
        abs_delta_counts=np.bincount(bins, minlength=ABS_DELTA_BINS).tolist(),
        abs_delta_sum=float(finite.sum()),
        abs_delta_max=float(finite.max()) if finite.size else 0.0,
    )


def _bounded(flips: dict[tuple[str, str], int]) -> dict[tuple[str, str], int]:
    """``flips`` with at most MAX_CLASSES named classes: the rows of the classes with fewest rows
    (ties: the later name) count under OTHER_CLASS."""
    totals: dict[str, int] = {}
    for (p, s), count in flips.items():
        totals[p] = totals.get(p, 0) + count
        totals[s] = totals.get(s, 0) + count
    totals.pop(OTHER_CLASS, None)
    if len(totals) <= MAX_CLASSES:
        return flips
    kept = set(sorted(totals, key=lambda name: (-totals[name], name))[:MAX_CLASSES])
    bounded: dict[tuple[str, str], int] = {}
    for (p, s), count in flips.items():
        pair = (p if p in kept else OTHER_CLASS, s if s in kept else OTHER_CLASS)
        bounded[pair] = bounded.get(pair, 0) + count
    return bounded


def comparison_key(primary_version: str, shadow_version: str) -> str:
    """How a model's comparisons are keyed in its document: "1->3"."""
    return f"{primary_version}->{shadow_version}"


class ShadowDocument(TypedDict):
    """A model's shadow comparisons, from one worker or several merged (``merge_shadow_documents``)."""

    model: str
    comparisons: dict[str, ComparisonDocument]  # by comparison_key(primary version, shadow version)
    dropped: dict[str, int]  # shadow version -> copies shed instead of run


def merge_shadow_documents(model: str, documents: list[ShadowDocument]) -> ShadowDocument:
    """Several workers' or replicas' documents of ``model`` as one: every count summed."""
    comparisons: dict[str, OutputComparison] = {}
    dropped: dict[str, int] = {}
    for document in documents:
        for key, held in document["comparisons"].items():
            comparisons.setdefault(key, OutputComparison()).merge(OutputComparison.from_json(held))
        for version, count in document["dropped"].items():
            dropped[version] = dropped.get(version, 0) + int(count)
    return {
        "model": model,
        "comparisons": {key: comparisons[key].to_json() for key in sorted(comparisons)},
        "dropped": dict(sorted(dropped.items())),
    }
