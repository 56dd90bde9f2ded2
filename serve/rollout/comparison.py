"""Paired outputs of a shadow (or candidate) and the primary on the same rows: agreement of the
predicted class with the class-flip matrix, or the distribution of |Δ output| for regression, and
the two latencies. Mergeable across workers and replicas.

INTERFACE ONLY (to be implemented in the shadow work package): the analyser's disagreement gate
reads ``rows`` and ``disagreements``; the rollout evidence (serve/rollout/evidence.py) uses
``merge``, ``since``, ``copy``, ``to_json`` and ``from_json``. Those below are placeholders with the
names and shapes of the shadow package's, until its version replaces this file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypedDict


class ComparisonDocument(TypedDict):
    rows: int
    disagreements: int


@dataclass(slots=True)
class OutputComparison:
    rows: int = 0  # rows compared
    disagreements: int = 0  # rows whose predicted class differs (classification); 0 for regression

    def disagreement(self) -> float | None:
        return self.disagreements / self.rows if self.rows else None

    def merge(self, other: OutputComparison) -> None:
        self.rows += other.rows
        self.disagreements += other.disagreements

    def since(self, earlier: OutputComparison) -> OutputComparison:
        return OutputComparison(self.rows - earlier.rows, self.disagreements - earlier.disagreements)

    def copy(self) -> OutputComparison:
        return OutputComparison(self.rows, self.disagreements)

    def to_json(self) -> ComparisonDocument:
        return {"rows": self.rows, "disagreements": self.disagreements}

    @classmethod
    def from_json(cls, doc: ComparisonDocument) -> OutputComparison:
        return cls(doc["rows"], doc["disagreements"])
