"""What the core and the transports see of a traced request (spans.py's RequestSpan), without the SDK."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol


class TracedRequest(Protocol):
    @property
    def context(self) -> object:
        """The server span's context: its batch span links to it (opaque below the tracer)."""
        ...

    @property
    def traceparent(self) -> str:
        """The W3C traceparent of the server span."""
        ...

    def phase(self, name: str, start_ns: int, end_ns: int) -> None:
        """A child span over [start_ns, end_ns] of time.perf_counter_ns."""
        ...

    def queued(self, batch_started_ns: int, queue_ns: int) -> None:
        """The queue span, ending where its batch started (time.monotonic_ns)."""
        ...

    def answered_by(self, model: str, version: str, role: str, request_id: str) -> None: ...


class RequestTracer(Protocol):
    """Starts the server span of a request that is traced (None for one that is not: nothing else is made)."""

    def http_request(
        self,
        model: str,
        route: str,
        header: Callable[[str], str | None],
        started_ns: int,
        *,
        path: str,
        scheme: str,
        server: tuple[str, int] | None,
        client: tuple[str, int] | None,
        http_version: str,
    ) -> HttpTracedRequest | None: ...

    def grpc_request(
        self, model: str, method: str, header: Callable[[str], str | None], started_ns: int
    ) -> GrpcTracedRequest | None: ...


class HttpTracedRequest(TracedRequest, Protocol):
    def end_http(self, status: int, error: BaseException | None = None) -> None: ...


class GrpcTracedRequest(TracedRequest, Protocol):
    def end_grpc(self, code: str, error: BaseException | None = None) -> None: ...
