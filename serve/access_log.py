"""The access log (--access-log): one JSON line per inference request, with the trace id that finds its spans.

An observer of the one request event, so HTTP, gRPC, shadow copies and every way a request can end are logged
alike. Written through the logger ``serve.access`` (stderr, with the rest of the log), off unless asked for."""

from __future__ import annotations

import logging

import orjson

from serve.events import Observer, RequestEvent

log = logging.getLogger("serve.access")


class AccessLog(Observer):
    def on_request(self, event: RequestEvent) -> None:
        record: dict[str, str | float] = {
            "protocol": event.protocol,
            "model": event.key.name,
            "version": event.key.version,
            "outcome": event.outcome,
            "duration_ms": round(event.duration_ns / 1e6, 3),
        }
        if event.role:
            record["role"] = event.role
        if event.timings is not None:
            record["queue_ms"] = round(event.timings.queue_ns / 1e6, 3)
            record["batch_rows"] = event.timings.batch_size
        if event.request_id:
            record["request_id"] = event.request_id
        if event.traceparent:
            record["trace_id"] = event.trace_id
        log.info("%s", orjson.dumps(record).decode())
