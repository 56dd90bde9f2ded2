"""Which output of a model is "the prediction" that labels are joined to, and its predictions per row.

A classifier's target is its first float output of row shape (K,), 2 <= K <= 1000: probabilities, or logits
that are softmaxed. skl2onnx's default export has an INT64 ``label`` output and a ZipMap that the repository
serves as FP32 [-1, K] with the classes as its labels (serve/repository/builder.py): the probabilities are the
target, and the labels are what feedback may name. Otherwise the first float output of row shape () or (1,) is
a regression target; otherwise the model has none, and nothing is joined for it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, TypedDict

import numpy as np

from serve.scores import as_probabilities
from serve.types import TensorSpec

Task = Literal["classification", "regression"]

FLOAT_DATATYPES = ("FP16", "FP32", "FP64")
MIN_CLASSES = 2
MAX_CLASSES = 1000
# A row is already a distribution when it is non-negative and sums to 1 within this (as input statistics judge).


class TargetJson(TypedDict):
    output: str
    task: Task
    classes: int
    class_labels: list[str]


@dataclass(frozen=True, slots=True)
class Target:
    output: str  # the output tensor's name
    task: Task
    classes: int  # K for classification, 0 for regression
    class_labels: tuple[str, ...]  # the output's class labels, in class-index order; may be empty

    def predictions(self, output: np.ndarray) -> np.ndarray:
        """The rows of ``output`` as float64: rows x K probabilities (classification), or a vector (regression)."""
        rows = output.shape[0] if output.ndim else 1
        x = np.asarray(output, dtype=np.float64).reshape(rows, -1)
        if self.task == "regression":
            out: np.ndarray = x[:, 0]
            return out
        return as_probabilities(x)

    def to_json(self) -> TargetJson:
        return {
            "output": self.output,
            "task": self.task,
            "classes": self.classes,
            "class_labels": list(self.class_labels),
        }

    @classmethod
    def from_json(cls, doc: TargetJson) -> Target:
        task = doc["task"]
        if task not in ("classification", "regression"):
            raise ValueError(f"target task must be 'classification' or 'regression', got {task!r}")
        return cls(doc["output"], task, int(doc["classes"]), tuple(str(c) for c in doc["class_labels"]))


def target_of(outputs: Sequence[TensorSpec], labels: Mapping[str, Sequence[str]]) -> Target | None:
    """The model's target, from its outputs' row specs (dims without the batch dimension, as
    ModelVersion.row_specs gives them) and the class labels per output.

    Labels whose count is not K are ignored (class_labels empty): naming a class by a label that may not be
    its own would join labels to the wrong class."""
    floats = [s for s in outputs if s.datatype in FLOAT_DATATYPES]
    for spec in floats:
        if len(spec.dims) == 1 and MIN_CLASSES <= spec.dims[0] <= MAX_CLASSES:
            k = spec.dims[0]
            names = tuple(str(c) for c in labels.get(spec.name, ()))
            return Target(spec.name, "classification", k, names if len(names) == k else ())
    for spec in floats:
        if tuple(spec.dims) in ((), (1,)):
            return Target(spec.name, "regression", 0, ())
    return None
