"""``serve.monitoring.Monitoring`` on grpc.aio: the statistics document and the baseline, as over HTTP.

Wiring (server.py): ``add_monitoring_servicer(server, stats, baselines)`` and add ``SERVICE_NAME``
to the names given to server reflection.
"""

from __future__ import annotations

from typing import Any

import grpc

from serve.grpc.decoding import add_decoding_safely
from serve.grpc.errors import rpc
from serve.input_stats.served_baseline import BaselineLookup
from serve.input_stats.wiring import StatsDocuments
from serve.protocol import serve_monitoring_pb2 as pb
from serve.protocol import serve_monitoring_pb2_grpc as pb_grpc

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Monitoring"].full_name


class MonitoringServicer(pb_grpc.MonitoringServicer):
    def __init__(self, lookup: StatsDocuments, baselines: BaselineLookup) -> None:
        self._lookup = lookup
        self._baselines = baselines

    @rpc
    async def InputStats(self, request: pb.InputStatsRequest, context: Any) -> pb.InputStatsResponse:
        body = await self._lookup(request.model_name, request.model_version, int(request.since))
        return pb.InputStatsResponse(json=body.decode("utf-8"))

    @rpc
    async def Baseline(self, request: pb.BaselineRequest, context: Any) -> pb.BaselineResponse:
        served = self._baselines(request.model_name, request.model_version)
        return pb.BaselineResponse(
            model_name=served.model,
            model_version=str(served.version),
            baseline=served.data,
            sha256=served.sha256,
            model_sha256=served.model_sha256,
        )


def add_monitoring_servicer(
    server: grpc.aio.Server, lookup: StatsDocuments, baselines: BaselineLookup, *, register_methods: bool = False
) -> MonitoringServicer:
    """``register_methods``: as registered methods too, for a front end that serves only those (frontends.py)."""
    servicer = MonitoringServicer(lookup, baselines)
    methods = frozenset(m.name for m in pb.DESCRIPTOR.services_by_name["Monitoring"].methods)
    add_decoding_safely(
        pb_grpc.add_MonitoringServicer_to_server, servicer, server, registered=methods if register_methods else ()
    )
    return servicer
