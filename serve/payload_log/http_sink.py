"""Payload events POSTed to an HTTP endpoint, in either CloudEvents content mode, with retries.

"structured": one POST per batch, ``application/cloudevents-batch+json``, a JSON array of the events
as they were encoded (the lines are joined, not re-parsed). "binary": one POST per event, attributes
in ``ce-*`` headers and the data as the body under its ``datacontenttype``: the format KServe's logger
sends and its consumers read (CloudEvents HTTP binding 3.1).

Connection errors, timeouts, 5xx and 429 are retried ``retries`` times, waiting ``backoff_s`` and
doubling up to ``MAX_BACKOFF_S`` (or the server's Retry-After, capped the same). Any other status is
an answer about the events themselves and is not retried. Giving up raises ``SinkWriteError`` with the
number of events lost; in binary mode a sink that is down loses the rest of the batch at once, rather
than every event waiting out its own retries. stdlib only (http.client): no new dependency.
"""

from __future__ import annotations

import base64
import http.client
import threading
from collections.abc import Mapping
from typing import Literal
from urllib.parse import quote, urlsplit

import orjson

from serve.payload_log.queue import SinkWriteError

__all__ = ["BATCH_CONTENT_TYPE", "MAX_BACKOFF_S", "HttpSink", "SinkMode", "binary_message"]

SinkMode = Literal["structured", "binary"]
MAX_BACKOFF_S = 10.0
BATCH_CONTENT_TYPE = "application/cloudevents-batch+json"
# Not attributes: the body, or the Content-Type header (binding 3.1.1).
_NOT_HEADERS = frozenset({"data", "data_base64", "datacontenttype"})
# Binding 3.1.3.2: printable ASCII stays as it is, except space, '"' and '%', which are percent-encoded.
_HEADER_SAFE = "".join(c for c in map(chr, range(0x21, 0x7F)) if c not in '"%')


class _Retryable(Exception):
    """One attempt failed in a way worth trying again."""

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class _Rejected(Exception):
    """The sink answered with a status that says trying again will not help."""


class _GaveUp(Exception):
    """Out of tries, or closed while retrying: the sink is down."""


class HttpSink:
    def __init__(
        self,
        url: str,
        *,
        mode: SinkMode = "structured",
        timeout_s: float = 5.0,
        retries: int = 5,
        backoff_s: float = 0.2,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"payload log URL must be http:// or https://, got {url!r}")
        if mode not in ("structured", "binary"):
            raise ValueError(f"payload log HTTP mode must be structured or binary, got {mode!r}")
        self.mode: SinkMode = mode
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.headers = dict(headers or {})
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port
        self._target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        # For messages: never the query or credentials a URL may carry.
        self._where = f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}{parts.path}"
        self._conn: http.client.HTTPConnection | None = None
        self._stop = threading.Event()  # close(): cut back-off short and give up
        self._lock = threading.Lock()  # write_batch vs close, as in FileSink

    def write_batch(self, lines: list[bytes]) -> None:
        with self._lock:
            try:
                if self.mode == "structured":
                    self._write_structured(lines)
                else:
                    self._write_binary(lines)
            finally:
                if self._stop.is_set():
                    self._disconnect()

    def close(self) -> None:
        self._stop.set()
        if self._lock.acquire(blocking=False):
            try:
                self._disconnect()
            finally:
                self._lock.release()

    # ---------------------------------------------------------------- modes

    def _write_structured(self, lines: list[bytes]) -> None:
        body = b"[" + b",".join(line.rstrip(b"\n") for line in lines) + b"]"
        try:
            self._post(body, {"Content-Type": BATCH_CONTENT_TYPE})
        except (_Rejected, _GaveUp) as exc:
            raise SinkWriteError(str(exc), len(lines)) from None

    def _write_binary(self, lines: list[bytes]) -> None:
        rejected: list[str] = []
        for i, line in enumerate(lines):
            try:
                headers, body = binary_message(line)
            except (ValueError, TypeError) as exc:
                rejected.append(f"not a CloudEvent in JSON: {exc}")
                continue
            try:
                self._post(body, headers)
            except _Rejected as exc:
                rejected.append(str(exc))
            except _GaveUp as exc:
                raise SinkWriteError(str(exc), len(lines) - i + len(rejected)) from None
        if rejected:
            raise SinkWriteError(rejected[0], len(rejected))

    # ---------------------------------------------------------------- transport

    def _post(self, body: bytes, headers: Mapping[str, str]) -> None:
        """Deliver one request, retrying; raise _Rejected, or _GaveUp when out of tries."""
        delay = self.backoff_s
        attempt = 0
        while True:
            try:
                self._attempt(body, headers)
                return
            except _Retryable as exc:
                if attempt >= self.retries or self._stop.is_set():
                    raise _GaveUp(f"{exc} ({self._where}, {attempt + 1} attempts)") from None
                wait = min(exc.retry_after_s if exc.retry_after_s is not None else delay, MAX_BACKOFF_S)
                if self._stop.wait(wait):
                    raise _GaveUp(f"{exc} ({self._where}, closed while retrying)") from None
                delay = min(delay * 2, MAX_BACKOFF_S)
                attempt += 1

    def _attempt(self, body: bytes, headers: Mapping[str, str]) -> None:
        conn = self._connection()
        try:
            conn.request("POST", self._target, body=body, headers={**self.headers, **headers})
            response = conn.getresponse()
            response.read()  # the whole answer, so that the connection can carry the next request
        except (OSError, http.client.HTTPException) as exc:
            self._disconnect()  # a half-used connection cannot be trusted with the next request
            raise _Retryable(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__) from None
        status = response.status
        if 200 <= status < 300:
            return
        message = f"HTTP {status} {response.reason}"
        if status == 429 or status >= 500:
            raise _Retryable(message, _retry_after_s(response.getheader("Retry-After")))
        raise _Rejected(f"{message} from {self._where}: not retried")

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            self._conn = cls(self._host, self._port, timeout=self.timeout_s)
        return self._conn

    def _disconnect(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def binary_message(line: bytes) -> tuple[dict[str, str], bytes]:
    """The headers and body of one structured-JSON CloudEvent in binary content mode."""
    event = orjson.loads(line)
    if not isinstance(event, dict) or "specversion" not in event:
        raise ValueError("no specversion")
    headers = {f"ce-{name}": _header_value(value) for name, value in event.items() if name not in _NOT_HEADERS}
    content_type = event.get("datacontenttype")
    # JSON format 3.1: without datacontenttype, data is JSON.
    headers["Content-Type"] = content_type if isinstance(content_type, str) else "application/json"
    if "data_base64" in event:
        body = base64.b64decode(event["data_base64"])
    elif "data" not in event or event["data"] is None:
        body = b""
    elif isinstance(event["data"], str) and not _is_json(headers["Content-Type"]):
        body = event["data"].encode()
    else:
        body = orjson.dumps(event["data"])
    return headers, body


def _header_value(value: object) -> str:
    if isinstance(value, bool):  # the canonical string form of a CloudEvents Boolean
        text = "true" if value else "false"
    elif isinstance(value, str):
        text = value
    else:
        text = orjson.dumps(value).decode() if isinstance(value, dict | list) else str(value)
    return quote(text, safe=_HEADER_SAFE)


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media.endswith("/json") or media.endswith("+json")


def _retry_after_s(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date: fall back to our own back-off
