"""Paired outputs of a shadow (or candidate) and the primary on the same rows: agreement of the
predicted class with the class-flip matrix, or the distribution of |Δ output| for regression, and
the two latencies. Mergeable across workers and replicas.

INTERFACE ONLY (to be implemented in the shadow work package): the analyser's disagreement gate
reads ``rows`` and ``disagreements``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class OutputComparison:
    rows: int = 0  # rows compared
    disagreements: int = 0  # rows whose predicted class differs (classification); 0 for regression

    def disagreement(self) -> float | None:
        return self.disagreements / self.rows if self.rows else None
