"""Stopping grpc.aio without cancelling a call that a client sent (serve/server.py drives it).

grpc core cancels (the client reads ``CANCELLED``) every call that reaches a server after its
shutdown began and every call it had received but not yet handed to grpc.aio (server.cc
zombifies both), and only that shutdown sends the HTTP/2 GOAWAY that tells a client with a
persistent channel not to send there again. Clients that keep sending (tritonclient, locust, any
service with a channel) therefore always have a call on its way when the shutdown starts, however
long the server refused calls before it: 8 to 14 of 16 such clients had a call cancelled.

So from the signal on, every call that arrives is held here, before its handler runs: a client
waiting for its answer sends nothing more on that channel. Once every call accepted before the
signal is answered and none has arrived for a quiet moment, every client's next call is held here
(or not sent yet), grpc's shutdown cancels nothing, and its GOAWAY goes out; only then are the
held calls let through, to be answered UNAVAILABLE ("shutting down") by the core. A client reads
the GOAWAY before that answer, so the call it sends next goes to a new connection (another
replica or worker, or a refused connect: nothing it sent is lost).

Health checks and ServerLive / ServerReady are answered at once (not ready), for probes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import grpc

ANSWERED_AT_ONCE = frozenset(
    {
        "/grpc.health.v1.Health/Check",
        "/inference.GRPCInferenceService/ServerLive",
        "/inference.GRPCInferenceService/ServerReady",
    }
)

Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]]


class DrainGate(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc.aio ships no stubs
    """Lets calls through until close(), holds those that arrive after it until release()."""

    def __init__(self) -> None:
        self._closed = False
        self._released = asyncio.Event()
        self._last_arrival = 0.0
        self.held = 0  # calls waiting for release()

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        if self._closed and not self._released.is_set():
            self._last_arrival = time.monotonic()
            if handler_call_details.method not in ANSWERED_AT_ONCE:
                self.held += 1
                try:
                    await self._released.wait()
                finally:
                    self.held -= 1
        return await continuation(handler_call_details)

    def close(self) -> None:
        """Hold every call that arrives from now on."""
        self._closed = True
        self._last_arrival = time.monotonic()

    async def quiet(self, quiet_s: float, limit_s: float) -> bool:
        """Wait until no call has arrived for ``quiet_s`` since this was called (True), or for at most
        ``limit_s`` (False: clients that never wait for an answer keep sending)."""
        now = time.monotonic()
        deadline, since = now + limit_s, now
        while True:
            quiet_at = max(since, self._last_arrival) + quiet_s
            now = time.monotonic()
            if now >= quiet_at:
                return True
            if now >= deadline:
                return False
            await asyncio.sleep(min(quiet_at, deadline) - now)

    def release(self) -> None:
        """Let the held calls, and every call from now on, through to their handlers."""
        self._released.set()
