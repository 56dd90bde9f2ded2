"""Payload logs as the server keeps them: an observer of every request that, for the sampled ones, turns the
request's decoded inputs and its outputs (or its error) into CloudEvents and hands them to a bounded queue that
a sink drains (a file every worker appends to, or an HTTP consumer).

The event loop only samples and appends a reference to a bounded list; one thread builds, redacts and encodes
the events (numpy to JSON costs what the tensors weigh) and offers them to the sink's queue. Either bound full
drops the event, counted by reason, and never slows a request: ``serve_payload_events_dropped_total{reason}``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence

from prometheus_client import CollectorRegistry, Counter

from serve.events import UNKNOWN_VERSION, Observer, RequestEvent
from serve.payload_log.events import (
    EventContext,
    encode_line,
    normalised_tensors,
    outcome_status,
    request_event,
    response_event,
)
from serve.payload_log.file_sink import FileSink
from serve.payload_log.http_sink import HttpSink
from serve.payload_log.options import PayloadLogOptions, payload_log_options
from serve.payload_log.queue import EventQueue, Sink
from serve.payload_log.sampling import sampled
from serve.repository.model_version import ModelVersion, VersionListener
from serve.settings import ServerSettings

log = logging.getLogger(__name__)

# Sampled requests waiting for the encoding thread; past it they are dropped (reason "busy").
MAX_PENDING = 10_000
_COMPONENT = "predictor"  # KServe's ce-component for a model server


class PayloadLogger(Observer, VersionListener):
    def __init__(
        self,
        options: PayloadLogOptions,
        queue: EventQueue,
        dropped: Callable[[str, int], None],
        *,
        max_pending: int = MAX_PENDING,
    ) -> None:
        self.options = options
        self._queue = queue
        self._dropped = dropped
        self._max_pending = max_pending
        self._pending: deque[RequestEvent] = deque()
        self._wake = threading.Condition()
        self._closing = False
        # (model, version) -> tensor name -> datatype, inputs and outputs
        self._datatypes: dict[tuple[str, str], dict[str, str]] = {}
        self._thread = threading.Thread(target=self._encode_forever, name="serve-payload-log", daemon=True)
        self._thread.start()

    # -- fed by the repository and by every request ----------------------------------------------------------

    def attached(self, version: ModelVersion) -> None:
        self._datatypes[(version.name, version.version_str)] = {
            spec.name: spec.datatype for spec in (*version.inputs, *version.outputs)
        }

    def on_request(self, event: RequestEvent) -> None:
        # A request refused before it was decoded has no id and no payload to log.
        if not event.request_id or event.key is UNKNOWN_VERSION or self._closing:
            return
        if not sampled(event.request_id, self.options.sample):
            return
        if len(self._pending) >= self._max_pending:
            self._dropped("busy", self._events_per_request)
            return
        self._pending.append(event)
        with self._wake:
            self._wake.notify()

    def close(self, timeout_s: float = 5.0) -> bool:
        """Encode what is waiting, flush it to the sink within ``timeout_s`` (the SIGTERM path), and stop."""
        deadline = time.monotonic() + timeout_s
        with self._wake:
            self._closing = True
            self._wake.notify()
        self._thread.join(max(0.0, deadline - time.monotonic()))
        return self._queue.close(max(0.0, deadline - time.monotonic()))

    # -- the encoding thread ------------------------------------------------------------------------------------

    @property
    def _events_per_request(self) -> int:
        return 2 if self.options.mode == "all" else 1

    def _encode_forever(self) -> None:
        while True:
            with self._wake:
                self._wake.wait_for(lambda: self._pending or self._closing)
                if not self._pending and self._closing:
                    return
            while self._pending:
                event = self._pending.popleft()
                try:
                    for line in self._lines(event):
                        self._queue.offer(line)
                except Exception:  # one event that cannot be encoded must not stop the log
                    log.exception("payload event of request %s could not be encoded", event.request_id)
                    self._dropped("encoding", self._events_per_request)

    def _lines(self, event: RequestEvent) -> list[bytes]:
        o = self.options
        name, version = event.key.name, event.key.version
        context = EventContext(
            model=name,
            version=version,
            request_id=event.request_id,
            source=f"/v2/models/{name}/versions/{version}",
            namespace=o.namespace,
            component=_COMPONENT,
            endpoint=event.role or "default",
            traceparent=None,
            sample_rate=o.sample,
            data_classification=None,
            replica=o.replica,
        )
        datatypes = self._datatypes.get((name, version), {})
        lines = []
        if o.mode in ("requests", "all") and event.inputs:
            inputs = normalised_tensors(event.inputs, datatypes, o.redaction, max_tensor_bytes=o.max_tensor_bytes)
            lines.append(encode_line(request_event(context, inputs, None)))
        if o.mode in ("responses", "all"):
            ok = event.outcome == "success"
            outputs = normalised_tensors(
                event.outputs if ok else {}, datatypes, o.redaction, max_tensor_bytes=o.max_tensor_bytes
            )
            error = None if ok else event.outcome
            lines.append(encode_line(response_event(context, outputs, outcome_status(event.outcome), error)))
        return lines


def payload_logger(settings: ServerSettings, registry: CollectorRegistry) -> PayloadLogger | None:
    """The payload logger the settings ask for, or None (no sink given). ValueError naming a bad flag."""
    sinks: list[Sink] = []
    if settings.payload_log_file is not None:
        sinks.append(FileSink(settings.payload_log_file))
    if settings.payload_log_url is not None:
        sinks.append(HttpSink(settings.payload_log_url))
    if not sinks:
        return None
    options = payload_log_options(settings)
    counter = Counter(
        "serve_payload_events_dropped",
        "Payload log events dropped: busy (the encoder behind), full (the sink's queue), sink (undeliverable), "
        "closed (still waiting when the server stopped), encoding (could not be encoded)",
        ("reason",),
        registry=registry,
    )

    def dropped(reason: str, count: int) -> None:
        counter.labels(reason).inc(count)

    sink: Sink = sinks[0] if len(sinks) == 1 else _Both(sinks)
    # A sink that hangs costs the process ~20 MiB of RSS with these bounds (bench/payload_log.py; issue 22: < 50 MiB).
    return PayloadLogger(options, EventQueue(sink, max_events=2_000, max_bytes=8 << 20, on_drop=dropped), dropped)


class _Both:
    """Two sinks (a file and a URL): every batch to each."""

    def __init__(self, sinks: Sequence[Sink]) -> None:
        self._sinks = sinks

    def write_batch(self, lines: list[bytes]) -> None:
        for sink in self._sinks:
            sink.write_batch(lines)

    def close(self) -> None:
        for sink in self._sinks:
            sink.close()
