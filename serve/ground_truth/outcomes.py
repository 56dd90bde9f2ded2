"""What became of each label of a feedback call, and the counts the feedback API answers with."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, TypedDict

# joined: counted into its prediction's window. duplicate: that (id, row) already had this label. conflicting:
# it already had another (the first stands). expired: the prediction was dropped, for age or for space.
# unknown: never seen here (or dropped so long ago that the record of dropped ids forgot it), or a row past
# the request's rows.
Outcome = Literal["joined", "unknown", "expired", "duplicate", "conflicting"]

# combine: what one label's outcome is when several stores answered for it, strongest first.
PRECEDENCE: tuple[Outcome, ...] = ("joined", "conflicting", "duplicate", "expired", "unknown")
_RANK = {outcome: rank for rank, outcome in enumerate(PRECEDENCE)}


def combine(outcomes: Sequence[Sequence[Outcome]]) -> list[Outcome]:
    """One outcome per label from several stores' outcomes for the same labels (workers, versions): the first
    of joined, conflicting, duplicate, expired, unknown that any store gave."""
    if not outcomes:
        return []
    length = len(outcomes[0])
    if any(len(o) != length for o in outcomes):
        raise ValueError("each store's outcomes must have one outcome per label, the same labels")
    return [min(each, key=_RANK.__getitem__) for each in zip(*outcomes, strict=True)]


class FeedbackCountsJson(TypedDict):
    joined: int
    unknown: int
    expired: int
    duplicate: int
    conflicting: int


@dataclass(frozen=True, slots=True)
class FeedbackCounts:
    joined: int = 0
    unknown: int = 0
    expired: int = 0
    duplicate: int = 0
    conflicting: int = 0

    @classmethod
    def of(cls, outcomes: Sequence[Outcome]) -> FeedbackCounts:
        counts = dict.fromkeys(PRECEDENCE, 0)
        for outcome in outcomes:
            counts[outcome] += 1
        return cls(**counts)

    def to_json(self) -> FeedbackCountsJson:
        return {
            "joined": self.joined,
            "unknown": self.unknown,
            "expired": self.expired,
            "duplicate": self.duplicate,
            "conflicting": self.conflicting,
        }
