"""How a StatsRecorder records: windows, sampling, its queue, sketch sizes, and what that costs in memory.

Memory per model version, bounded by the configuration:

    windows  = ceil(horizon_s / window_s) + 2          (ring, current, total since start)
    memory  ≈ windows × Σ_features size(feature) + queue_size × bytes(one batch's inputs + outputs)

    size(numeric, baseline with E edges)  = 11 × 8 + (E + 1) × 16 + 16 bytes
    size(numeric, no baseline)            = 11 × 8 bytes + KLL(k)  (KLL(200) ≤ ~3 KB at any n;
                                             600 retained floats at n = 10^5, grows ~log n)
    size(categorical, V vocabulary items) = (V + 3) × 8 bytes + FI(lg)
    size(bytes)                           = 7 × 8 bytes + FI(lg)
    FI(lg) ≤ 0.75 × 2^lg × (ITEM_MAX_CHARS + ~60) bytes, allocated on the first unseen value
           (lg = 7: ≤ 96 items, ~12 KB)

For example 100 baseline-binned numeric columns with 104 edges, 1 h of 60 s windows:
62 × 100 × 1.8 KB ≈ 11 MB; without a baseline, 62 × 100 × ~3 KB ≈ 19 MB at most.
An export builds a JSON document of the same order in size; ``since`` keeps it small.
"""

from __future__ import annotations

from dataclasses import dataclass

from serve.input_stats.views import ViewOptions


@dataclass(frozen=True, slots=True)
class StatsOptions:
    window_s: float = 60.0
    horizon_s: float = 3600.0
    sample_rate: float = 1.0  # Bernoulli row sampling in (0, 1]
    max_rows_per_batch: int | None = None  # then a uniform sample of this many rows
    queue_size: int = 256  # batches waiting for the worker; beyond it batches are dropped and counted
    # The worker starts at most one update per interval (unless the queue is half full), so under
    # load queued batches are coalesced and the fixed cost per update, paid holding the GIL that
    # the event loop needs, is bounded: at 0.1 s, 10 updates/s at most (measured at concurrency 64 on
    # the small bench model: the worker thread's CPU fell from 6% to 2% of a core going from 0.02 s to 0.1 s).
    min_update_interval_s: float = 0.1
    kll_k: int = 200
    frequent_lg: int = 7
    max_columns: int = 256
    max_classes: int = 1000

    def __post_init__(self) -> None:
        if not 0 < self.sample_rate <= 1:
            raise ValueError("sample_rate must be in (0, 1]")
        if self.queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        if self.max_rows_per_batch is not None and self.max_rows_per_batch < 1:
            raise ValueError("max_rows_per_batch must be at least 1")
        if self.min_update_interval_s < 0:
            raise ValueError("min_update_interval_s must not be negative")

    def views(self) -> ViewOptions:
        return ViewOptions(self.max_columns, self.max_classes, self.kll_k, self.frequent_lg)
