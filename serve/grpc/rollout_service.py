"""``serve.rollout.Rollouts`` on grpc.aio: a model's rollout, read and changed, as over HTTP at
``/v2/models/{m}/rollout`` (the same JSON documents; admin scope when auth is on).

Wiring (grpc/server.py): ``add_rollout_servicer(server, service)`` and ``SERVICE_NAME`` among the
names given to server reflection.
"""

from __future__ import annotations

from typing import Any

import grpc
import orjson

from serve.core import InferenceService
from serve.grpc.auth import current_actor
from serve.grpc.decoding import add_decoding_safely
from serve.grpc.errors import rpc
from serve.protocol import serve_rollout_pb2 as pb
from serve.protocol import serve_rollout_pb2_grpc as pb_grpc
from serve.rollout.plan_file import parse_json, promoted_version, spec_from_json

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Rollouts"].full_name
METHODS = frozenset(m.name for m in pb.DESCRIPTOR.services_by_name["Rollouts"].methods)


class RolloutServicer(pb_grpc.RolloutsServicer):
    def __init__(self, service: InferenceService) -> None:
        self._service = service
        self._rollouts = service.rollouts

    def _status(self, name: str) -> pb.RolloutResponse:
        return pb.RolloutResponse(json=orjson.dumps(self._rollouts.status(name)).decode("utf-8"))

    @rpc
    async def GetRollout(self, request: pb.RolloutRequest, context: Any) -> pb.RolloutResponse:
        return self._status(request.model_name)

    @rpc
    async def SetRollout(self, request: pb.RolloutRequest, context: Any) -> pb.RolloutResponse:
        name, actor = request.model_name, current_actor()
        with self._service.audited("rollout_set", actor, name):
            spec = spec_from_json(parse_json(request.json, "the rollout spec"))
            await self._rollouts.set(name, spec, actor)
            return self._status(name)

    @rpc
    async def PromoteRollout(self, request: pb.RolloutRequest, context: Any) -> pb.RolloutResponse:
        name, actor = request.model_name, current_actor()
        with self._service.audited("rollout_promote", actor, name):
            version = promoted_version(parse_json(request.json, "the promote body"))
            await self._rollouts.promote(name, version, actor)
            return self._status(name)

    @rpc
    async def AbortRollout(self, request: pb.RolloutRequest, context: Any) -> pb.RolloutResponse:
        name, actor = request.model_name, current_actor()
        with self._service.audited("rollout_abort", actor, name):
            await self._rollouts.abort(name, actor)
            return self._status(name)


def add_rollout_servicer(
    server: grpc.aio.Server, service: InferenceService, *, register_methods: bool = False
) -> RolloutServicer:
    """``register_methods``: as registered methods too, for a front end that serves only those (frontends.py)."""
    servicer = RolloutServicer(service)
    add_decoding_safely(
        pb_grpc.add_RolloutsServicer_to_server, servicer, server, registered=METHODS if register_methods else ()
    )
    return servicer
