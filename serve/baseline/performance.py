"""baseline.json's ``performance`` (``serve baseline --labels COLUMN``): the held-out rows' labels against the
model's outputs, and the calibration the monitor estimates a window's accuracy from.

The prediction is the first float output whose row is ``(K,)``, 2 ≤ K ≤ 1000 (a classifier: probabilities, or
logits, which are softmaxed as the server's views do), else the first float output whose row is ``()`` or
``(1,)`` (a regressor). Class values in the data map to class indices by their text: the output's class labels
(a ZipMap's, or config.pbtxt's ``label_filename``), else the indices ``0 … K-1`` themselves; ``1.0`` matches
``1``. Rows whose prediction is not finite are left out (the server counts them apart too).

The calibration is kept per bin of ``<tensor>::confidence`` because the server already counts that feature in
those bins per window and merges the counts across workers and replicas: the estimate then needs nothing but
the published statistics, no row-level data (serve/ground_truth/estimate.py). Its bins are counted with the
server's own numeric accumulator over the baseline's edges, so they are the bins the server's counts mean,
tails and non-finite values included.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from serve.baseline.model import BaselineInputError
from serve.ground_truth import estimate
from serve.ground_truth.targets import MAX_CLASSES, MIN_CLASSES, target_of
from serve.input_stats.baseline_file import BaselineFeatureJson, CalibrationJson, HeldOutJson, PerformanceJson
from serve.input_stats.extracts import classifier_views
from serve.input_stats.numeric_group import NumericSpec
from serve.scores import as_probabilities as probabilities
from serve.types import TensorSpec


@dataclass(frozen=True, slots=True)
class Prediction:
    """Which output is the model's prediction, and what kind."""

    output: TensorSpec
    task: str  # "classification" | "regression"
    classes: tuple[str, ...] = ()  # classification: the label of each class index


def choose_prediction(outputs: Sequence[TensorSpec], class_labels: Mapping[str, Sequence[str]]) -> Prediction:
    """The output a label is compared with: the one the server joins labels to (serve/ground_truth/targets.py)."""
    target = target_of(outputs, class_labels)
    if target is None:
        shown = [f"{s.name} {s.datatype} {list(s.dims)}" for s in outputs]
        raise BaselineInputError(
            f"--labels: no output is a prediction to compare labels with: a classifier's is a float row of "
            f"{MIN_CLASSES} to {MAX_CLASSES} classes, a regressor's a float scalar (outputs: {shown})"
        )
    spec = next(s for s in outputs if s.name == target.output)
    if target.task == "regression":
        return Prediction(spec, "regression")
    classes = target.class_labels or tuple(str(i) for i in range(target.classes))
    return Prediction(spec, "classification", classes)


def _text(value: object) -> str | None:
    """A label as text; None where it is missing (empty cell, null, NaN)."""
    if value is None or isinstance(value, float | np.floating) and np.isnan(value):
        return None
    text = value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)
    return text.strip() or None


def _check_present(texts: Sequence[str | None], column: str) -> None:
    missing = sum(t is None for t in texts)
    if missing:
        raise BaselineInputError(
            f"--labels {column}: {missing} of the {len(texts)} held-out rows have no label; every row needs one"
        )


def class_indices(labels: np.ndarray, prediction: Prediction, column: str) -> np.ndarray:
    """Each label's class index: its text among the classes, or the text of its whole number (``1.0`` → ``1``)."""
    index = {c: i for i, c in enumerate(prediction.classes)}
    texts = [_text(v) for v in labels.tolist()]
    _check_present(texts, column)
    found: dict[str, int] = {}
    out = np.empty(len(texts), dtype=np.int64)
    for row, text in enumerate(texts):
        assert text is not None
        if text not in found:
            found[text] = _class_of(text, index, prediction, column, texts)
        out[row] = found[text]
    return out


def _class_of(text: str, index: Mapping[str, int], prediction: Prediction, column: str, texts: list[str | None]) -> int:
    if text in index:
        return index[text]
    try:
        number = float(text)
    except ValueError:
        number = float("nan")
    if number.is_integer() and str(int(number)) in index:
        return index[str(int(number))]
    raise BaselineInputError(
        f"--labels {column}: label {text!r} ({texts.count(text)} held-out rows) is not a class of output "
        f"'{prediction.output.name}' (classes: {list(prediction.classes)})"
    )


def label_values(labels: np.ndarray, column: str) -> np.ndarray:
    """A regressor's labels as numbers."""
    texts = [_text(v) for v in labels.tolist()]
    _check_present(texts, column)
    try:
        return np.array([float(t) for t in texts if t is not None], dtype=np.float64)
    except ValueError as exc:
        raise BaselineInputError(f"--labels {column}: a regressor's labels must be numbers ({exc})") from None


def _bin_counts(edges: Sequence[float], values: np.ndarray) -> list[int]:
    """Counts of ``values`` in the bins over ``edges``, by the server's numeric accumulator."""
    group = NumericSpec(["confidence"], [np.asarray(edges, dtype=np.float64)], kll_k=0).new_group()
    group.update(values[None, :])
    counts: list[int] = group.bin_counts.tolist()
    return counts


def _calibration(feature: BaselineFeatureJson, confidence: np.ndarray, correct: np.ndarray) -> CalibrationJson:
    edges = list(feature.get("edges", []))
    count = _bin_counts(edges, confidence)
    right = _bin_counts(edges, confidence[correct])
    share = np.divide(right, count, out=np.zeros(len(count)), where=np.asarray(count) > 0)
    p_correct = estimate.isotonic(share, count)
    return {
        "feature": feature["name"],
        "edges": edges,
        "count": count,
        "correct": right,
        "p_correct": p_correct.tolist(),
    }


def _classification(
    prediction: Prediction, outputs: np.ndarray, labels: np.ndarray, column: str, feature: BaselineFeatureJson
) -> PerformanceJson:
    kept = np.isfinite(outputs).all(axis=1)
    scores = outputs[kept].astype(np.float64)
    y = class_indices(labels[kept], prediction, column)
    predicted = np.argmax(scores, axis=1)  # the server's predicted_class
    proba = probabilities(scores)
    accuracy = estimate.accuracy(y, predicted)
    held_out: HeldOutJson = {
        "rows": int(y.size),
        "accuracy": accuracy,
        "accuracy_se": float(np.sqrt(accuracy * (1 - accuracy) / y.size)),
        "f1": estimate.f1(y, predicted, len(prediction.classes)),
        "auc": estimate.roc_auc(y, proba),
        "log_loss": estimate.log_loss(y, proba),
    }
    return {
        "output": prediction.output.name,
        "task": "classification",
        "label_column": column,
        "classes": list(prediction.classes),
        "held_out": held_out,
        "calibration": _calibration(feature, classifier_views(scores)[0], predicted == y),
    }


def _regression(prediction: Prediction, outputs: np.ndarray, labels: np.ndarray, column: str) -> PerformanceJson:
    predicted = outputs.reshape(outputs.shape[0]).astype(np.float64)
    kept = np.isfinite(predicted)
    y = label_values(labels[kept], column)
    mae, mae_se = estimate.mean_absolute_error(y, predicted[kept])
    held_out: HeldOutJson = {
        "rows": int(y.size),
        "mae": mae,
        "mae_se": mae_se,
        "rmse": estimate.root_mean_squared_error(y, predicted[kept]),
        "bias": estimate.bias(y, predicted[kept]),
    }
    return {"output": prediction.output.name, "task": "regression", "label_column": column, "held_out": held_out}


def performance_section(
    prediction: Prediction,
    outputs: np.ndarray,
    labels: np.ndarray,
    column: str,
    output_features: Sequence[BaselineFeatureJson],
) -> PerformanceJson:
    """``performance`` from the held-out rows' prediction output, their labels and the baseline's output
    features (whose ``<tensor>::confidence`` edges the calibration bins by)."""
    if outputs.shape[0] == 0:
        raise BaselineInputError(f"--labels {column}: no held-out rows to measure the model on (raise --holdout)")
    if prediction.task == "regression":
        return _regression(prediction, outputs, labels, column)
    name = prediction.output.name
    confidence = [f for f in output_features if (f["tensor"], f["view"]) == (name, "confidence")]
    if not confidence:
        raise BaselineInputError(
            f"--labels {column}: the baseline has no '{name}::confidence' feature to calibrate "
            "(the output is recorded without its classifier views)"
        )
    return _classification(prediction, outputs, labels, column, confidence[0])
