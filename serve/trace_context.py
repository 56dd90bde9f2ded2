"""The W3C trace context a caller sent, and the caller's trace id of the call being served.

Below every package that logs a call (the audit log records the caller's trace id, so that an admin change can be
found from the trace of whatever made it); tracing itself (serve/tracing) reads the parent here too.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass

# The trace id (32 hex digits) of the caller of the API call being served, "" when it sent none or tracing is off.
CALLER_TRACE_ID: ContextVar[str] = ContextVar("serve_caller_trace_id", default="")


@dataclass(frozen=True, slots=True)
class Parent:
    """A W3C ``traceparent`` a client sent (version 00), with its ``tracestate``."""

    trace_id: int
    span_id: int
    flags: int
    tracestate: str = ""

    @property
    def sampled(self) -> bool:
        return bool(self.flags & 1)


def parse_traceparent(value: str | None, tracestate: str | None = None) -> Parent | None:
    """The parent a ``traceparent`` header names, None when it is absent or malformed (W3C: then start a new trace)."""
    if not value or len(value) < 55:
        return None
    version, _, rest = value.strip().partition("-")
    if len(version) != 2 or version == "ff" or not _is_hex(version):
        return None
    parts = rest.split("-")
    # Version 00 has exactly four fields; a later version may append more after the flags (W3C: parse what we know).
    if len(parts) < 3 or (version == "00" and len(parts) != 3):
        return None
    trace, span, flags = parts[0], parts[1], parts[2]
    if len(trace) != 32 or len(span) != 16 or len(flags) != 2 or not _is_hex(trace + span + flags):
        return None
    trace_id, span_id = int(trace, 16), int(span, 16)
    if trace_id == 0 or span_id == 0:
        return None
    return Parent(trace_id, span_id, int(flags, 16), tracestate or "")


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text)


def trace_id_of(traceparent: str | None) -> str:
    """The 32 hex digits of the trace a ``traceparent`` names, "" when it is absent or malformed."""
    parent = parse_traceparent(traceparent)
    return f"{parent.trace_id:032x}" if parent is not None else ""
