"""``/v2/models/{m}/rollout``: a model's rollout, read and changed (a ``serve`` extension, admin scope).

* ``GET``: the status document (``{"model", "plan", "routing", "evaluation", "evidence"}``);
* ``PUT`` with a spec (rollout.yaml's fields, as JSON): sets a new rollout;
* ``POST …/rollout/promote`` (optional ``{"version": V}``) and ``POST …/rollout/abort``;
* for ``serve monitor --rollouts``, which decides for several replicas (serve/monitor/rollouts.py):
  ``GET …/rollout/evidence``, the evidence every arm left since the server started, merged over its
  workers; ``POST …/rollout/apply`` with a whole plan (``rollout.yaml``'s fields with ``status``), taken
  when its revision is above the one in force (else the plan in force stays, and is answered).

Every change answers the status document after it, and goes to the audit log.
"""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from serve.core import InferenceService
from serve.http.auth import actor_of
from serve.http.body import read_body
from serve.rollout.plan_file import parse_json, plan_from_json, promoted_version, spec_from_json

JSON = "application/json"
ROLLOUT_PATH = "/v2/models/{model}/rollout"


def rollout_routes(service: InferenceService, *, max_request_bytes: int) -> list[BaseRoute]:
    rollouts = service.rollouts

    async def body_of(request: Request) -> bytes:
        return await read_body(request.headers, request.receive, max_request_bytes)

    def status(name: str) -> Response:
        return Response(orjson.dumps(rollouts.status(name)), media_type=JSON)

    async def get(request: Request) -> Response:
        return status(request.path_params["model"])

    async def put(request: Request) -> Response:
        name, actor = request.path_params["model"], actor_of(request.scope)
        with service.audited("rollout_set", actor, name):
            spec = spec_from_json(parse_json(await body_of(request), "the rollout spec"))
            await rollouts.set(name, spec, actor)
            return status(name)

    async def promote(request: Request) -> Response:
        name, actor = request.path_params["model"], actor_of(request.scope)
        with service.audited("rollout_promote", actor, name):
            version = promoted_version(parse_json(await body_of(request), "the promote body"))
            await rollouts.promote(name, version, actor)
            return status(name)

    async def abort(request: Request) -> Response:
        name, actor = request.path_params["model"], actor_of(request.scope)
        with service.audited("rollout_abort", actor, name):
            await body_of(request)
            await rollouts.abort(name, actor)
            return status(name)

    async def evidence(request: Request) -> Response:
        name = request.path_params["model"]
        service.repository.get(name)  # NOT_FOUND / UNAVAILABLE before the workers are asked
        return Response(await service.cluster.rollout_evidence(name), media_type=JSON)

    async def apply(request: Request) -> Response:
        name, actor = request.path_params["model"], actor_of(request.scope)
        with service.audited("rollout_apply", actor, name):
            plan = plan_from_json(parse_json(await body_of(request), "the rollout plan"), actor=actor)
            await rollouts.apply(name, plan, actor)
            return status(name)

    return [
        Route(ROLLOUT_PATH, get, methods=["GET"]),
        Route(ROLLOUT_PATH + "/evidence", evidence, methods=["GET"]),
        Route(ROLLOUT_PATH + "/apply", apply, methods=["POST"]),
        Route(ROLLOUT_PATH, put, methods=["PUT"]),
        Route(ROLLOUT_PATH + "/promote", promote, methods=["POST"]),
        Route(ROLLOUT_PATH + "/abort", abort, methods=["POST"]),
    ]
