"""``serve.monitoring.Monitoring`` on grpc.aio: the statistics document, the baseline, labels (feedback)
and the realized performance, as over HTTP.

Wiring (server.py): ``add_monitoring_servicer(server, stats, baselines, service)`` and add ``SERVICE_NAME``
to the names given to server reflection.
"""

from __future__ import annotations

from typing import Any

import grpc

from serve.core import InferenceService
from serve.errors import InvalidInput
from serve.ground_truth.document import encode
from serve.ground_truth.labels import MAX_LABELS, Label, check_request_id
from serve.grpc.decoding import add_decoding_safely
from serve.grpc.errors import rpc
from serve.input_stats.served_baseline import BaselineLookup
from serve.input_stats.wiring import StatsDocuments
from serve.protocol import serve_monitoring_pb2 as pb
from serve.protocol import serve_monitoring_pb2_grpc as pb_grpc

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Monitoring"].full_name


class MonitoringServicer(pb_grpc.MonitoringServicer):
    def __init__(self, lookup: StatsDocuments, baselines: BaselineLookup, service: InferenceService) -> None:
        self._lookup = lookup
        self._baselines = baselines
        self._service = service

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

    @rpc
    async def Feedback(self, request: pb.FeedbackRequest, context: Any) -> pb.FeedbackResponse:
        counts = await self._service.feedback(request.model_name, request.model_version, labels_of(request))
        return pb.FeedbackResponse(
            joined=counts.joined,
            unknown=counts.unknown,
            expired=counts.expired,
            duplicate=counts.duplicate,
            conflicting=counts.conflicting,
        )

    @rpc
    async def Performance(self, request: pb.PerformanceRequest, context: Any) -> pb.PerformanceResponse:
        document = await self._service.performance(request.model_name, request.model_version)
        return pb.PerformanceResponse(json=encode(document).decode("utf-8"))


def labels_of(request: pb.FeedbackRequest) -> list[Label]:
    """The request's labels, checked as the HTTP body's are (serve/ground_truth/labels.py)."""
    if not request.labels:
        raise InvalidInput("the feedback request has no labels: send at least one")
    if len(request.labels) > MAX_LABELS:
        raise InvalidInput(f"the feedback request has {len(request.labels)} labels, over {MAX_LABELS}: split it")
    labels = []
    for index, item in enumerate(request.labels):
        check_request_id(item.id, index)
        truth = item.WhichOneof("truth")
        if truth is None:
            raise InvalidInput(f"feedback label {index}: set one of 'label', 'label_text' or 'value'")
        labels.append(
            Label(
                request_id=item.id,
                row=item.row,
                label=item.label if truth == "label" else item.label_text if truth == "label_text" else None,
                value=item.value if truth == "value" else None,
                time=item.time or None,
            )
        )
    return labels


def add_monitoring_servicer(
    server: grpc.aio.Server,
    lookup: StatsDocuments,
    baselines: BaselineLookup,
    service: InferenceService,
    *,
    register_methods: bool = False,
) -> MonitoringServicer:
    """``register_methods``: as registered methods too, for a front end that serves only those (frontends.py)."""
    servicer = MonitoringServicer(lookup, baselines, service)
    methods = frozenset(m.name for m in pb.DESCRIPTOR.services_by_name["Monitoring"].methods)
    add_decoding_safely(
        pb_grpc.add_MonitoringServicer_to_server, servicer, server, registered=methods if register_methods else ()
    )
    return servicer
