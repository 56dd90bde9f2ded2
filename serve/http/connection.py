"""HTTP/1.1 connections with header limits and a header deadline, which uvicorn's httptools
protocol lacks.

httptools (llhttp) has no limit on a request line or header block, and uvicorn arms no timer
until a first response is sent: a 10 MB header was accepted (and parsed in quadratic time, while
the event loop waited) and a connection that never finished its headers was held forever. Here:

- a request line plus headers over ``max_header_bytes``, or more than ``max_headers`` fields, is
  answered 431 and the connection closed: counted as the parser reports each piece, and, for a
  header still arriving, from the bytes received while the header block is unfinished (so at most
  about one read, 256 KiB, past the limit is ever buffered);
- a request whose line and headers are not complete ``header_timeout_s`` after the connection
  opened, or after its first byte on a kept-alive connection, is answered 408 and closed.

And when the server stops, a kept-alive connection is not closed while a request may be on its
way (uvicorn closes every idle one at once: a client that had just sent its next request read
"connection closed", 1 to 17 per SIGTERM under 16 keep-alive clients). The next request that
arrives within ``IDLE_DRAIN_S`` is answered (503 while the server stops) with ``Connection: close``
and the connection closed after it; one that stays idle that long is closed then. HTTP/1.1 has no
way to say "send no more" before a response, so only a request sent after that moment, on a
connection idle until then, can still meet a closed connection.

All of this is uvicorn's ``HttpToolsProtocol`` with checks added at its parser callbacks; uvicorn
takes the class as its ``http`` setting. Idle kept-alive connections remain uvicorn's
``timeout_keep_alive``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, ClassVar

import orjson
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState


@dataclass(frozen=True, slots=True)
class HeaderLimits:
    max_header_bytes: int
    max_headers: int
    header_timeout_s: float


LINGER_S = 2.0  # how long a refused connection's remaining input is read and discarded
IDLE_DRAIN_S = 0.5  # when the server stops, how long an idle kept-alive connection waits for a last request


def _response(status: int, phrase: str, message: str) -> bytes:
    body = orjson.dumps({"error": message})
    head = (
        f"HTTP/1.1 {status} {phrase}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    limits: ClassVar[HeaderLimits]

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._in_head = True  # a request line or header block is (or may start) arriving
        self._head_bytes = 0  # of the request line and complete header fields, as parsed
        self._head_fields = 0
        self._unfinished_bytes = 0  # received while a header field was unfinished: the parser holds them
        self._began = False  # a request began in the data being parsed
        self._head_timer: asyncio.TimerHandle | None = None
        self._refusal: bytes | None = None
        self._stopping = False  # the server is shutting down: answer what comes, keep nothing alive
        self._idle_timer: asyncio.TimerHandle | None = None

    # ---- the deadline ----------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[arg-type]
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        self._cancel_idle_timer()
        super().connection_lost(exc)

    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.limits.header_timeout_s, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or not self._in_head:
            return
        if self.cycle is not None and not self.cycle.response_complete:
            # A pipelined request's head waits while the one before it runs (uvicorn stops reading).
            self._arm_head_timer()
            return
        seconds = f"{self.limits.header_timeout_s:g}"
        self._refuse(408, "Request Timeout", f"request line and headers not received within {seconds} s")

    # ---- the size limits -------------------------------------------------------------------------
    # Once a request is refused, the parser callbacks do nothing (no request reaches the app) and the
    # refusal is sent when the data in hand has been parsed.
    def data_received(self, data: bytes) -> None:
        if self._refusal is not None:
            return  # a refused connection's input is discarded
        self._began = False
        HttpToolsProtocol.data_received(self, data)
        if self._refusal is not None:
            self._send_refusal()
            return
        if not self._in_head or self.transport.is_closing():
            return
        # A head still unfinished when its data runs out: only then is a timer worth arming (a head
        # that arrives whole, as nearly all do, costs none). It began in this read or an earlier one.
        self._arm_head_timer()
        # Still inside a header block. Where a request began in this data, how much of it is that
        # request's is unknown (its complete fields are counted as parsed): count from the next read.
        self._unfinished_bytes = 0 if self._began else self._unfinished_bytes + len(data)
        if self._unfinished_bytes > self.limits.max_header_bytes:
            self._refuse(431, "Request Header Fields Too Large", self._too_large())

    def on_message_begin(self) -> None:
        if self._refusal is not None:
            return
        HttpToolsProtocol.on_message_begin(self)
        self._in_head, self._began = True, True
        self._head_bytes = self._head_fields = self._unfinished_bytes = 0
        if self._idle_timer is not None:
            self._cancel_idle_timer()  # a last request came: its answer closes the connection

    # These run for every request and header: the checks are inlined and uvicorn's methods called
    # directly (no super() lookup); with them the limits cost ~8% of small-request throughput.
    def on_url(self, url: bytes) -> None:
        if self._refusal is None:
            self._head_bytes += len(url)
            if self._head_bytes > self.limits.max_header_bytes and not self._within_limits():
                return
            HttpToolsProtocol.on_url(self, url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._refusal is None:
            self._head_bytes += len(name) + len(value) + 4  # "name: value\r\n"
            self._head_fields += 1
            limits = self.limits
            if (
                self._head_bytes > limits.max_header_bytes or self._head_fields > limits.max_headers
            ) and not self._within_limits():
                return
            HttpToolsProtocol.on_header(self, name, value)

    def on_headers_complete(self) -> None:
        if self._refusal is not None:
            return
        self._in_head = False
        if self._head_timer is not None:
            self._cancel_head_timer()
        HttpToolsProtocol.on_headers_complete(self)
        if self._stopping and self.cycle is not None:
            self.cycle.keep_alive = False  # answered with "Connection: close", then closed

    def on_body(self, body: bytes) -> None:
        if self._refusal is None:
            HttpToolsProtocol.on_body(self, body)

    def on_message_complete(self) -> None:
        if self._refusal is None:
            HttpToolsProtocol.on_message_complete(self)

    # ---- shutting down ----------------------------------------------------------------------------
    def shutdown(self) -> None:
        """Called by uvicorn's server on every connection when it stops."""
        self._stopping = True
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.keep_alive = False  # the request being answered is the last (uvicorn's way)
        elif not self.transport.is_closing() and self._idle_timer is None:
            # Idle, or between a response and a request already on its way: wait for that request.
            self._idle_timer = self.loop.call_later(IDLE_DRAIN_S, self._close_idle)

    def _close_idle(self) -> None:
        self._idle_timer = None
        if not self.transport.is_closing() and (self.cycle is None or self.cycle.response_complete):
            self.transport.close()

    def _cancel_idle_timer(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    def _within_limits(self) -> bool:
        """Judge the head counted so far; False (and the request refused) past a limit."""
        if self._head_fields > self.limits.max_headers:
            message = f"request has more than {self.limits.max_headers} header fields"
            self._refusal = _response(431, "Request Header Fields Too Large", message)
        elif self._head_bytes > self.limits.max_header_bytes:
            self._refusal = _response(431, "Request Header Fields Too Large", self._too_large())
        return self._refusal is None

    def _too_large(self) -> str:
        return f"request line and headers are over the {self.limits.max_header_bytes}-byte limit"

    def _refuse(self, status: int, phrase: str, message: str) -> None:
        self._refusal = _response(status, phrase, message)
        self._send_refusal()

    def _send_refusal(self) -> None:
        self._cancel_head_timer()
        if self._refusal is None or self.transport.is_closing():
            return
        self.transport.write(self._refusal)
        if not self.transport.can_write_eof():  # TLS: no half-close
            self.transport.close()
            return
        # A lingering close: closing a socket with unread input sends RST and drops the response
        # still queued, so the client (often still sending its headers) would see a reset, not the
        # status. Send the response and FIN, discard what arrives (data_received), and close when the
        # client does or after LINGER_S.
        self.transport.write_eof()
        self.loop.call_later(LINGER_S, self.transport.close)


def limited_protocol(limits: HeaderLimits) -> type[LimitedHttpToolsProtocol]:
    """The protocol class to give uvicorn as ``http``, with ``limits``."""
    return type("HeaderLimitedHttpToolsProtocol", (LimitedHttpToolsProtocol,), {"limits": limits})
