"""Payload logs (README: Payload logs): requests and responses as CloudEvents, sampled, redacted, queued, written."""
