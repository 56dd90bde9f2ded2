"""Model performance per version: realized from the labels the servers joined, estimated before labels
arrive, and the held-out values of the baseline, over the horizon and window by window.

* **Realized**: every replica publishes its performance document (``GET /v2/models/{m}/performance``,
  serve/ground_truth/document.py), cumulative per window of prediction time and re-sent whole on every
  poll, since late labels change old windows. The newest document of each replica replaces the one
  before; replicas hold different predictions, so their windows add up.
* **Estimated** (classifiers, CBPE's idea from binned statistics): the baseline's calibration gives
  P(correct | confidence bin) on the held-out split (``serve baseline --labels``); the servers already
  count each window's ``<output>::confidence`` in those bins, so a window's expected accuracy is its bin
  counts weighted by that calibration (serve/ground_truth/estimate.py). It holds under covariate shift;
  a change in P(y | x) (concept drift) is what it cannot see, and is why realized is shown next to it.
* **Verdicts**: an accuracy drop (realized, or estimated while labels are too few, below the held-out
  accuracy by more than ``accuracy_drop``; for a regressor, MAE above the held-out MAE by more than
  ``mae_increase`` of it) and a divergence (realized and estimated further apart than ``divergence``,
  once ``min_labels`` rows are labelled). None where there is not enough to judge.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, TypedDict

from serve.ground_truth.document import PerformanceDocumentJson, merge_windows
from serve.ground_truth.estimate import EstimateJson, estimate_accuracy
from serve.ground_truth.performance import WindowPerformance, merged
from serve.ground_truth.realized import RealizedJson, realized
from serve.ground_truth.targets import TargetJson
from serve.input_stats.baseline_file import HeldOutJson
from serve.input_stats.baseline_file import PerformanceJson as BaselinePerformanceJson
from serve.monitor.collector import MergedWindow

Source = Literal["realized", "estimated"]


@dataclass(frozen=True, slots=True)
class PerformancePolicy:
    accuracy_drop: float = 0.05  # absolute, below the held-out accuracy
    mae_increase: float = 0.2  # relative, above the held-out MAE
    divergence: float = 0.05  # |realized - estimated| accuracy
    min_labels: int = 200  # labelled rows before realized values are judged
    min_estimate_rows: int = 200  # predicted rows before an estimate is judged


class PerformanceWindowJson(TypedDict):
    start: float
    predicted_rows: int
    labelled_rows: int
    realized: RealizedJson
    estimated: EstimateJson | None


class VerdictsJson(TypedDict):
    accuracy_drop: bool | None
    accuracy_drop_source: Source | None  # which value judged it
    divergence: bool | None
    accuracy_drop_threshold: float
    divergence_threshold: float
    min_labels: int


class PerformanceReportJson(TypedDict):
    model: str
    version: str
    target: TargetJson | None
    realized: RealizedJson | None  # over the horizon's windows of prediction time
    estimated: EstimateJson | None
    baseline: HeldOutJson | None  # the held-out values of baseline.json
    label_coverage: float | None
    windows: list[PerformanceWindowJson]
    verdicts: VerdictsJson
    problems: list[str]


class PerformanceCollector:
    """The newest performance document of every replica, by model."""

    def __init__(self) -> None:
        self._documents: dict[tuple[str, str], PerformanceDocumentJson] = {}  # (replica URL, model) → newest

    def ingest(self, url: str, document: PerformanceDocumentJson) -> None:
        self._documents[(url, document["model"])] = document

    def forget(self, url: str) -> None:
        for key in [k for k in self._documents if k[0] == url]:
            del self._documents[key]

    def versions(self) -> list[tuple[str, str]]:
        return sorted({(model, v["version"]) for (_, model), doc in self._documents.items() for v in doc["versions"]})

    def windows(self, model: str, version: str, start: float) -> tuple[TargetJson | None, list[WindowPerformance]]:
        """The version's target and its windows of prediction from ``start`` on, summed over the replicas."""
        target: TargetJson | None = None
        found = []
        for (_, name), doc in self._documents.items():
            if name != model:
                continue
            for entry in doc["versions"]:
                if entry["version"] == version:
                    target = target or entry["target"]
                    found += [w for w in entry["windows"] if w["start"] >= start]
        return target, merge_windows(found, tuple(target["class_labels"]) if target is not None else ())


def evaluate_performance(
    model: str,
    version: str,
    target: TargetJson | None,
    windows: Sequence[WindowPerformance],
    stats_windows: Sequence[MergedWindow],
    baseline: BaselinePerformanceJson | None,
    policy: PerformancePolicy,
    horizon_start: float = -math.inf,
) -> PerformanceReportJson:
    """The version's performance: ``realized``, ``estimated`` and the verdicts over the windows of prediction time
    that start at ``horizon_start`` or later; ``windows`` lists every window the servers still hold (their
    retention, 24 h by default), with the estimate where the monitor still has the window's statistics."""
    problems: list[str] = []
    calibration = baseline.get("calibration") if baseline is not None else None
    if baseline is not None and target is not None and baseline["output"] != target["output"]:
        problems.append(
            f"the baseline's performance is of output '{baseline['output']}', the server joins '{target['output']}'"
        )
        calibration = None
    confidence = calibration["feature"] if calibration is not None else None
    bins_by_start = {w["start"]: _confidence_counts(w, confidence) for w in stats_windows} if confidence else {}
    rows: list[PerformanceWindowJson] = []
    for window in windows:
        counts = bins_by_start.get(window.start)
        estimate = estimate_accuracy(calibration, counts) if calibration is not None and counts else None
        rows.append({
            "start": window.start,
            "predicted_rows": window.predicted_rows,
            "labelled_rows": window.labelled_rows,
            "realized": realized(window),
            "estimated": estimate,
        })  # fmt: skip
    total = merged([w for w in windows if w.start >= horizon_start])
    over_all = realized(total) if total is not None else None
    estimated = None
    recent = [c for start, c in bins_by_start.items() if c and start >= horizon_start]
    if calibration is not None and recent:
        summed = _sum_counts(recent)
        estimated = estimate_accuracy(calibration, summed) if summed else None
    if calibration is None and target is not None and target["task"] == "classification":
        problems.append("no estimate: the baseline has no calibration (run `serve baseline --labels COLUMN`)")
    held_out = baseline["held_out"] if baseline is not None else None
    coverage = total.labelled_rows / total.predicted_rows if total is not None and total.predicted_rows else None
    return {
        "model": model,
        "version": version,
        "target": target,
        "realized": over_all,
        "estimated": estimated,
        "baseline": held_out,
        "label_coverage": coverage,
        "windows": rows,
        "verdicts": _verdicts(target, over_all, estimated, held_out, policy),
        "problems": problems,
    }


def _confidence_counts(window: MergedWindow, feature: str) -> list[int] | None:
    block = window["features"].get(feature)
    bins = block.get("bins") if block is not None else None
    return list(bins["counts"]) if bins is not None else None


def _sum_counts(counts: Sequence[Sequence[int]]) -> list[int] | None:
    widths = {len(c) for c in counts}
    if len(widths) != 1:
        return None
    return [sum(column) for column in zip(*counts, strict=True)]


def _verdicts(
    target: TargetJson | None,
    real: RealizedJson | None,
    estimated: EstimateJson | None,
    held_out: HeldOutJson | None,
    policy: PerformancePolicy,
) -> VerdictsJson:
    out: VerdictsJson = {
        "accuracy_drop": None,
        "accuracy_drop_source": None,
        "divergence": None,
        "accuracy_drop_threshold": policy.accuracy_drop,
        "divergence_threshold": policy.divergence,
        "min_labels": policy.min_labels,
    }
    labelled = real.get("rows", 0) if real is not None else 0
    enough_labels = real is not None and labelled >= policy.min_labels
    if target is not None and target["task"] == "regression":
        if enough_labels and held_out is not None and "mae" in held_out and real is not None and "mae" in real:
            out["accuracy_drop"] = real["mae"] > held_out["mae"] * (1 + policy.mae_increase)
            out["accuracy_drop_source"] = "realized"
        return out
    reference = held_out.get("accuracy") if held_out is not None else None
    if enough_labels and real is not None and "accuracy" in real:
        if reference is not None:
            out["accuracy_drop"] = real["accuracy"] < reference - policy.accuracy_drop
            out["accuracy_drop_source"] = "realized"
        if estimated is not None:
            out["divergence"] = abs(real["accuracy"] - estimated["accuracy"]) > policy.divergence
    elif estimated is not None and reference is not None and estimated["rows"] >= policy.min_estimate_rows:
        out["accuracy_drop"] = estimated["accuracy"] < reference - policy.accuracy_drop
        out["accuracy_drop_source"] = "estimated"
    return out


def number(values: Mapping[str, object] | None, key: str) -> float | None:
    """``values[key]`` where it is a number (realized, estimated and held-out values are optional)."""
    value = values.get(key) if values is not None else None
    return float(value) if isinstance(value, int | float) else None
