"""The batching policy a model's configuration asks for (dynamic_batching, instance_group)."""

from __future__ import annotations

from serve.batching.policy import BatchingPolicy, QueuePolicy
from serve.errors import ModelLoadError
from serve.protocol import model_config_pb2 as mc


def _queue_policy(policy: mc.ModelQueuePolicy) -> QueuePolicy:
    return QueuePolicy(
        max_queue_size=policy.max_queue_size,
        default_timeout_us=policy.default_timeout_microseconds,
        allow_timeout_override=policy.allow_timeout_override,
    )


def batching_policy(config: mc.ModelConfig, instances: int) -> BatchingPolicy:
    dynamic = config.HasField("dynamic_batching")
    db = config.dynamic_batching
    try:
        return _batching_policy(config, db, dynamic, instances)
    except ValueError as exc:
        raise ModelLoadError(f"dynamic_batching: {exc}") from None


def _batching_policy(
    config: mc.ModelConfig, db: mc.ModelDynamicBatching, dynamic: bool, instances: int
) -> BatchingPolicy:
    return BatchingPolicy(
        max_batch_size=config.max_batch_size,
        dynamic=dynamic and config.max_batch_size > 0,
        preferred_batch_sizes=tuple(db.preferred_batch_size),
        max_queue_delay_us=db.max_queue_delay_microseconds,
        max_in_flight=max(1, instances),
        priority_levels=db.priority_levels,
        default_priority_level=db.default_priority_level,
        default_queue_policy=_queue_policy(db.default_queue_policy),
        priority_queue_policies={int(k): _queue_policy(v) for k, v in db.priority_queue_policy.items()},
    )
