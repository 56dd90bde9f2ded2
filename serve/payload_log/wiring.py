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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter

from serve.errors import ModelLoadError
from serve.events import UNKNOWN_VERSION, Observer, RequestEvent, VersionKey
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
from serve.payload_log.model_options import KEYS, ModelLogOptions, asks_for_logging, model_log_options
from serve.payload_log.options import PayloadLogOptions, payload_log_options
from serve.payload_log.queue import EventQueue, Sink
from serve.payload_log.sampling import sampled
from serve.repository.model_version import ModelVersion, VersionListener
from serve.settings import ServerSettings

log = logging.getLogger(__name__)

# Sampled requests waiting for the encoding thread; past it they are dropped (reason "busy").
MAX_PENDING = 10_000
_COMPONENT = "predictor"  # KServe's ce-component for a model server


@dataclass(frozen=True, slots=True)
class _VersionLog:
    """How one loaded version is logged: its options (flags and config parameters) and its tensors' datatypes."""

    options: ModelLogOptions
    datatypes: Mapping[str, str]  # tensor name -> datatype, inputs and outputs


@dataclass(frozen=True, slots=True)
class _Pending:
    """A sampled request, with what was read while it was live: its version's log and its allowlisted headers."""

    event: RequestEvent
    log: _VersionLog
    headers: Mapping[str, str] | None

    @property
    def event_count(self) -> int:
        return self.log.options.event_count(bool(self.event.inputs))


class PayloadLogger(Observer, VersionListener):
    """Logs the sampled requests of every version to ``queue``'s sink; with no queue (no sink flag) it only checks
    each model's payload parameters, so that a bad one refuses the load wherever the model is served."""

    def __init__(
        self,
        options: PayloadLogOptions,
        queue: EventQueue | None,
        dropped: Callable[[str, int], None],
        *,
        max_pending: int = MAX_PENDING,
    ) -> None:
        self.options = options
        self._queue = queue
        self._dropped = dropped
        self._max_pending = max_pending
        self._pending: deque[_Pending] = deque()
        self._wake = threading.Condition()
        self._closing = False
        self._versions: dict[VersionKey, _VersionLog] = {}
        self._warned: set[str] = set()  # models told that they ask for logs on a server with no sink
        self._thread: threading.Thread | None = None
        if queue is not None:
            self._thread = threading.Thread(target=self._encode_forever, name="serve-payload-log", daemon=True)
            self._thread.start()

    # -- fed by the repository and by every request ----------------------------------------------------------

    def attached(self, version: ModelVersion) -> None:
        parameters = (
            {key: value.string_value for key, value in version.config.parameters.items()}
            if (version.config is not None)
            else {}
        )
        try:
            options = model_log_options(parameters, self.options, sink=self._queue is not None)
        except ValueError as exc:
            raise ModelLoadError(str(exc)) from None
        if self._queue is None:
            if asks_for_logging(parameters) and version.name not in self._warned:
                self._warned.add(version.name)
                log.warning(
                    "model %s sets payload log parameters (%s) but this server logs no payloads: give it "
                    "--payload-log-file PATH or --payload-log-url URL",
                    version.name,
                    ", ".join(key for key in KEYS if key in parameters),
                )
            return
        datatypes = {spec.name: spec.datatype for spec in (*version.inputs, *version.outputs)}
        self._versions[version.key] = _VersionLog(options, datatypes)

    async def detached(self, version: ModelVersion) -> None:
        # Requests already sampled keep their _VersionLog; a reload of the version has a key of its own.
        self._versions.pop(version.key, None)

    def on_request(self, event: RequestEvent) -> None:
        # A request refused before it was decoded has no id and no payload to log.
        if not event.request_id or event.key is UNKNOWN_VERSION or self._closing:
            return
        version = self._versions.get(event.key)
        if version is None or not version.options.logs:
            return
        if not sampled(event.request_id, version.options.sample):
            return
        if len(self._pending) >= self._max_pending:
            self._dropped("busy", version.options.event_count(bool(event.inputs)))
            return
        # The header probe is valid only now, while the request is live: read the few allowlisted names here.
        self._pending.append(_Pending(event, version, self._headers(event)))
        with self._wake:
            self._wake.notify()

    def close(self, timeout_s: float = 5.0) -> bool:
        """Encode what is waiting, flush it to the sink within ``timeout_s`` (the SIGTERM path), and stop."""
        if self._thread is None or self._queue is None:
            return True
        deadline = time.monotonic() + timeout_s
        with self._wake:
            self._closing = True
            self._wake.notify()
        self._thread.join(max(0.0, deadline - time.monotonic()))
        return self._queue.close(max(0.0, deadline - time.monotonic()))

    def _headers(self, event: RequestEvent) -> dict[str, str] | None:
        names = self.options.headers
        if not names:
            return None
        probe = event.header
        if probe is None:
            return {}
        found = {}
        for name in names:
            value = probe(name)
            if value is not None:
                found[name] = value
        return found

    # -- the encoding thread ------------------------------------------------------------------------------------

    def _encode_forever(self) -> None:
        assert self._queue is not None  # the thread runs only with a sink
        while True:
            with self._wake:
                self._wake.wait_for(lambda: self._pending or self._closing)
                if not self._pending and self._closing:
                    return
            while self._pending:
                pending = self._pending.popleft()
                if self._queue.refuse_if_full(pending.event_count):
                    continue
                try:
                    for line in self._lines(pending):
                        self._queue.offer(line)
                except Exception:  # one event that cannot be encoded must not stop the log
                    log.exception("payload event of request %s could not be encoded", pending.event.request_id)
                    self._dropped("encoding", pending.event_count)
                # Hand the GIL back after every event: the event loop, waiting for it, would otherwise wait out the
                # interpreter's 5 ms switch interval while a backlog is encoded (the requests' p99).
                time.sleep(0)

    def _lines(self, pending: _Pending) -> list[bytes]:
        o, event, model = self.options, pending.event, pending.log.options
        name, version = event.key.name, event.key.version
        context = EventContext(
            model=name,
            version=version,
            request_id=event.request_id,
            source=f"/v2/models/{name}/versions/{version}",
            namespace=o.namespace,
            component=_COMPONENT,
            endpoint=event.role or "default",
            traceparent=event.traceparent or None,
            sample_rate=model.sample,
            data_classification=model.data_classification,
            replica=o.replica,
            headers=pending.headers,
        )
        datatypes = pending.log.datatypes
        lines = []
        if model.mode in ("requests", "all") and event.inputs:
            inputs = normalised_tensors(event.inputs, datatypes, model.redaction, max_tensor_bytes=o.max_tensor_bytes)
            lines.append(encode_line(request_event(context, inputs, None)))
        if model.mode in ("responses", "all"):
            ok = event.outcome == "success"
            outputs = normalised_tensors(
                event.outputs if ok else {}, datatypes, model.redaction, max_tensor_bytes=o.max_tensor_bytes
            )
            error = None if ok else event.outcome
            lines.append(encode_line(response_event(context, outputs, outcome_status(event.outcome), error)))
        return lines


class _ParametersOnly(PayloadLogger):
    """No sink: models' payload parameters are still checked at load, and no request is looked at."""

    # The default no-op: Observers then leaves this observer off every request's path.
    on_request = Observer.on_request

    def __init__(self, options: PayloadLogOptions) -> None:
        super().__init__(options, None, lambda reason, count: None)


def payload_logger(settings: ServerSettings, registry: CollectorRegistry) -> PayloadLogger | None:
    """The payload logger the settings ask for; with no sink flag, one that only checks models' payload
    parameters (and logs nothing). ValueError naming a bad flag."""
    options = payload_log_options(settings)
    sinks: list[Sink] = []
    if settings.payload_log_file is not None:
        sinks.append(FileSink(settings.payload_log_file))
    if settings.payload_log_url is not None:
        sinks.append(HttpSink(settings.payload_log_url, mode=options.http_mode))
    if not sinks:
        return _ParametersOnly(options)
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
