"""The transport-neutral core: resolving, validating, batching and observing every request."""

from serve.core.service import EXTENSIONS, Decode, InferenceService

__all__ = ["EXTENSIONS", "Decode", "InferenceService"]
