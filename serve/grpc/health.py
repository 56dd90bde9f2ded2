"""The standard gRPC health service (grpc.health.v1), answered from the InferenceService's readiness.

grpc_health's own servicer answers whatever was last ``set()`` on it; set once at start, it said
SERVING while a model that had failed to load kept ``/v2/health/ready`` at 400. This one keeps no
status of its own: Check reads ``InferenceService.readiness()`` (as HTTP readiness and ServerReady
do), and Watch sends a new status whenever the service signals that readiness may have changed.

One gate of its own: NOT_SERVING until the server has started every transport (``set_serving``), as
gRPC listens before HTTP does and a probe must not pass before both answer. Stopping is told to the
service (``shutting_down``), so that every door turns at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2

from serve.core import InferenceService

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN

Context = Any  # grpc.aio.ServicerContext; the generated base class leaves it untyped


class ServiceHealth(health.aio.HealthServicer):  # type: ignore[misc]  # grpc_health has no type hints
    """Health of "" (the whole server) and of each name in ``services``: all are the server's readiness."""

    def __init__(self, service: InferenceService, services: Sequence[str]) -> None:
        super().__init__()
        self.service = service
        self._services = frozenset(["", *services])
        self._started = False

    def status(self, name: str) -> int | None:
        if name not in self._services:
            return None
        return int(SERVING if self._started and self.service.server_ready() else NOT_SERVING)

    def set_started(self, started: bool) -> None:
        self._started = started
        self.service.readiness_changes.notify()

    async def Check(self, request: health_pb2.HealthCheckRequest, context: Context) -> health_pb2.HealthCheckResponse:
        status = self.status(request.service)
        if status is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no service {request.service!r} here")
        return health_pb2.HealthCheckResponse(status=status)

    async def Watch(self, request: health_pb2.HealthCheckRequest, context: Context) -> None:
        # The spec: the current status at once, then each change; SERVICE_UNKNOWN for a name not served.
        last = None
        with self.service.readiness_changes.subscribe() as changed:
            while True:
                changed.clear()
                status = self.status(request.service)
                status = SERVICE_UNKNOWN if status is None else status
                if status != last:
                    await context.write(health_pb2.HealthCheckResponse(status=status))
                    last = status
                await changed.wait()

    async def set(self, service: str, status: int) -> None:
        raise TypeError("ServiceHealth answers from the InferenceService's readiness: use set_serving()")

    async def enter_graceful_shutdown(self) -> None:
        self.service.shutting_down = True
