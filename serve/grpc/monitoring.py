"""``serve.monitoring.Monitoring`` on grpc.aio: the statistics document and the baseline, as over HTTP.

Wiring (server.py): ``add_monitoring_servicer(server, lookup, baselines)`` and add ``SERVICE_NAME``
to the names given to server reflection.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from serve.errors import ServeError
from serve.protocol import serve_monitoring_pb2 as pb
from serve.protocol import serve_monitoring_pb2_grpc as pb_grpc
from serve.stats.http import Lookup
from serve.stats.served_baseline import BaselineLookup

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Monitoring"].full_name


class MonitoringServicer(pb_grpc.MonitoringServicer):
    def __init__(self, lookup: Lookup, baselines: BaselineLookup | None = None) -> None:
        self._lookup = lookup
        self._baselines = baselines

    async def InputStats(self, request: pb.InputStatsRequest, context: Any) -> pb.InputStatsResponse:
        try:
            recorder = self._lookup(request.model_name, request.model_version)
            # Built in a worker thread: a large document must not stall the event loop.
            body = await asyncio.to_thread(recorder.export_json, int(request.since))
        except ServeError as exc:
            await context.abort(getattr(grpc.StatusCode, exc.grpc_code), exc.message)
            raise  # unreachable: abort raises
        return pb.InputStatsResponse(json=body.decode("utf-8"))

    async def Baseline(self, request: pb.BaselineRequest, context: Any) -> pb.BaselineResponse:
        if self._baselines is None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "this server does not serve baselines")
        assert self._baselines is not None
        try:
            served = self._baselines(request.model_name, request.model_version)
        except ServeError as exc:
            await context.abort(getattr(grpc.StatusCode, exc.grpc_code), exc.message)
            raise  # unreachable: abort raises
        return pb.BaselineResponse(
            model_name=served.model,
            model_version=str(served.version),
            baseline=served.data,
            sha256=served.sha256,
            model_sha256=served.model_sha256,
        )


def add_monitoring_servicer(
    server: grpc.aio.Server, lookup: Lookup, baselines: BaselineLookup | None = None
) -> MonitoringServicer:
    servicer = MonitoringServicer(lookup, baselines)
    pb_grpc.add_MonitoringServicer_to_server(servicer, server)
    return servicer
