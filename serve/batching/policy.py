"""What a model's configuration says about scheduling, checked once when the policy is built.

Field meanings follow Triton's ``dynamic_batching`` and ``instance_group`` settings so that an
existing ``config.pbtxt`` means the same thing here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType


@dataclass(frozen=True, slots=True)
class QueuePolicy:
    # Requests allowed to wait (not yet executing) in one priority level; 0 = unbounded.
    max_queue_size: int = 0
    # How long a request may wait in the queue before it is answered DeadlineExceeded; 0 = forever.
    default_timeout_us: int = 0
    # Whether a request may ask for a timeout shorter than default_timeout_us.
    allow_timeout_override: bool = False

    def __post_init__(self) -> None:
        if self.max_queue_size < 0:
            raise ValueError(f"max_queue_size must be >= 0, got {self.max_queue_size}")
        if self.default_timeout_us < 0:
            raise ValueError(f"default_timeout_us must be >= 0, got {self.default_timeout_us}")

    def timeout_us(self, requested_us: int) -> int:
        """The queue timeout for a request that asked for ``requested_us`` (0 = asked for none)."""
        default = self.default_timeout_us
        if requested_us > 0 and (default == 0 or (self.allow_timeout_override and requested_us < default)):
            return requested_us
        return default


@dataclass(frozen=True, slots=True)
class BatchingPolicy:
    # Rows (first dimension) one execution may hold; 0 = the model does not batch: each request
    # runs alone with its tensors exactly as sent.
    max_batch_size: int
    # False = batching disabled: one request per execution (still max_in_flight at once).
    dynamic: bool = True
    # Batch sizes worth sending at once; the largest caps a batch until the delay expires
    # (Triton's max preferred batch size; max_batch_size when there are none).
    preferred_batch_sizes: tuple[int, ...] = ()
    # How long the oldest queued request may be held to fill a batch (0 = never hold).
    max_queue_delay_us: int = 0
    # Executions running at once (the instance_group count).
    max_in_flight: int = 1
    # Number of priority levels, 1 = highest; 0 = a single level.
    priority_levels: int = 0
    # The level of a request that names none (priority 0); 0 = the lowest level.
    default_priority_level: int = 0
    default_queue_policy: QueuePolicy = QueuePolicy()
    # Per-level queue policy, keyed by level 1..priority_levels; other levels use the default.
    priority_queue_policies: Mapping[int, QueuePolicy] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.max_batch_size < 0:
            raise ValueError(f"max_batch_size must be >= 0, got {self.max_batch_size}")
        if self.max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {self.max_in_flight}")
        if self.max_queue_delay_us < 0:
            raise ValueError(f"max_queue_delay_us must be >= 0, got {self.max_queue_delay_us}")
        for size in self.preferred_batch_sizes:
            if size < 1 or (self.max_batch_size > 0 and size > self.max_batch_size):
                raise ValueError(
                    f"preferred batch size {size} must be between 1 and max_batch_size ({self.max_batch_size})"
                )
        if self.priority_levels < 0:
            raise ValueError(f"priority_levels must be >= 0, got {self.priority_levels}")
        if not 0 <= self.default_priority_level <= self.priority_levels:
            raise ValueError(
                f"default_priority_level {self.default_priority_level} is outside 0..{self.priority_levels}"
            )
        for level in self.priority_queue_policies:
            if not 1 <= level <= self.priority_levels:
                raise ValueError(f"priority_queue_policies names level {level}; levels are 1..{self.priority_levels}")
        # Freeze the mapping so the policy really is immutable once built.
        object.__setattr__(self, "priority_queue_policies", MappingProxyType(dict(self.priority_queue_policies)))
        object.__setattr__(self, "preferred_batch_sizes", tuple(sorted(set(self.preferred_batch_sizes))))

    @property
    def level_count(self) -> int:
        return max(1, self.priority_levels)

    @property
    def holds_requests(self) -> bool:
        """Whether the scheduler may hold requests back to fill a batch (as Triton, also without
        preferred sizes: then it holds for max_batch_size rows)."""
        return self.max_batch_size > 0 and self.dynamic and self.max_queue_delay_us > 0

    def queue_policy(self, level: int) -> QueuePolicy:
        """The queue policy of ``level`` (1..priority_levels, or 1 when there is a single level)."""
        return self.priority_queue_policies.get(level, self.default_queue_policy)
