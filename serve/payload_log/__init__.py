"""Payload logs (README: Payload logs): inference requests and responses as CloudEvents, sampled, redacted, queued, written."""
