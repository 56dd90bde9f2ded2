"""A latency histogram over fixed, log-spaced buckets: counts only, so that histograms from several
workers and replicas merge by summing and the evidence since a step began is a subtraction.

Edges run from 50 µs to about 120 s, eight per doubling (a ratio of 2^(1/8) ≈ 1.09 between edges), so
a quantile interpolated inside its bucket is off by at most 9 % and a ratio of two quantiles by a few
percent. Bucket 0 holds durations below the first edge, the last one those at or above the last edge.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field

_FIRST_EDGE_NS = 50_000  # 50 µs: below any model execution plus its queueing
_EDGES_PER_DOUBLING = 8
_LAST_EDGE_NS = 120 * 10**9  # past any sensible request deadline

EDGES_NS: tuple[int, ...] = tuple(
    round(_FIRST_EDGE_NS * 2 ** (i / _EDGES_PER_DOUBLING))
    for i in range(math.ceil(_EDGES_PER_DOUBLING * math.log2(_LAST_EDGE_NS / _FIRST_EDGE_NS)) + 1)
)
BUCKETS = len(EDGES_NS) + 1


def _bucket_bounds_s(index: int) -> tuple[float, float]:
    """The bucket's [lower, upper) edges in seconds; the overflow bucket's upper edge is infinite."""
    lower = EDGES_NS[index - 1] / 1e9 if index > 0 else 0.0
    upper = EDGES_NS[index] / 1e9 if index < len(EDGES_NS) else math.inf
    return lower, upper


@dataclass(slots=True)
class LatencyHistogram:
    counts: list[int] = field(default_factory=lambda: [0] * BUCKETS)

    def record(self, duration_ns: int) -> None:
        self.counts[bisect_right(EDGES_NS, duration_ns)] += 1

    @property
    def total(self) -> int:
        return sum(self.counts)

    def merge(self, other: LatencyHistogram) -> None:
        self.counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]

    def minus(self, earlier: LatencyHistogram) -> LatencyHistogram:
        return LatencyHistogram([a - b for a, b in zip(self.counts, earlier.counts, strict=True)])

    @classmethod
    def from_counts(cls, counts: Sequence[int]) -> LatencyHistogram:
        if len(counts) != BUCKETS:
            raise ValueError(f"a latency histogram has {BUCKETS} buckets, not {len(counts)}")
        return cls(list(counts))

    def _bucket_of_rank(self, rank: int) -> int:
        """The bucket holding the ``rank``-th smallest duration (1-based; within 1..total)."""
        seen = 0
        for index, count in enumerate(self.counts):
            seen += count
            if seen >= rank:
                return index
        raise ValueError(f"rank {rank} is past the {seen} durations recorded")

    def quantile_s(self, q: float) -> float | None:
        """The ``q`` quantile in seconds, interpolated inside its bucket on the log scale (linearly in
        bucket 0, which starts at 0; the overflow bucket answers its lower edge). None when empty."""
        total = self.total
        if total == 0:
            return None
        rank = q * total
        seen = 0
        for index, count in enumerate(self.counts):
            if count and seen + count >= rank:
                lower, upper = _bucket_bounds_s(index)
                share = (rank - seen) / count
                if index == 0:
                    return upper * share
                if math.isinf(upper):
                    return lower
                return float(lower * (upper / lower) ** share)
            seen += count
        return _bucket_bounds_s(len(self.counts) - 1)[0]  # pragma: no cover - rank ≤ total always stops above

    def quantile_bounds_s(self, q: float, z: float) -> tuple[float, float] | None:
        """A distribution-free confidence interval for the population's ``q`` quantile, from order
        statistics: the rank of the ``q`` quantile among ``n`` samples is Binomial(n, q), so the
        order statistics at ranks ``nq ∓ z·sqrt(nq(1−q))`` bracket it with two-sided coverage of
        about 1 − 2·(1 − Φ(z)) (Conover, *Practical Nonparametric Statistics*, 3rd ed., §3.2). Each is
        widened to its bucket's outer edge. Ranks past the samples clamp to the smallest / largest
        sample, which makes the interval too narrow for small ``n``: the gates require min_requests.
        None when empty."""
        n = self.total
        if n == 0:
            return None
        spread = z * math.sqrt(n * q * (1 - q))
        low_rank = min(max(math.floor(n * q - spread), 1), n)
        high_rank = min(max(math.ceil(n * q + spread) + 1, 1), n)
        return _bucket_bounds_s(self._bucket_of_rank(low_rank))[0], _bucket_bounds_s(self._bucket_of_rank(high_rank))[1]
