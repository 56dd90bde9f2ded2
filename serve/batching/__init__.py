"""Dynamic batching: per model version, a queue of pending requests and a scheduler that runs them."""

from serve.batching.batcher import Batcher
from serve.batching.policy import BatchingPolicy, QueuePolicy
from serve.batching.result import BatchResult, Execute

__all__ = ["Batcher", "BatchResult", "BatchingPolicy", "Execute", "QueuePolicy"]
