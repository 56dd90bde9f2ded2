"""Ground truth over HTTP (a ``serve`` extension, scope ``inference``; README: Ground truth):

* ``POST /v2/models/{m}[/versions/{v}]/feedback``: labels for earlier predictions, a JSON array of
  ``{"id", "row"?, "label" | "value", "time"?}`` or the same objects as JSON lines; answers how many
  joined, and how many were unknown, expired, duplicates or conflicting;
* ``GET /v2/models/{m}[/versions/{v}]/performance``: the realized performance document
  (serve/ground_truth/document.py) for the whole server, which ``serve monitor`` merges across replicas.
"""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from serve.core import InferenceService
from serve.ground_truth.document import encode
from serve.ground_truth.labels import parse_feedback
from serve.http.body import read_body

JSON = "application/json"


def _target(request: Request) -> tuple[str, str]:
    version = request.path_params.get("version")
    return request.path_params["model"], "" if version is None else str(version)


def feedback_routes(service: InferenceService, *, max_request_bytes: int) -> list[BaseRoute]:
    async def feedback(request: Request) -> Response:
        name, version = _target(request)
        service.repository.get(name)  # NOT_FOUND before the body is read
        labels = parse_feedback(await read_body(request.headers, request.receive, max_request_bytes))
        counts = await service.feedback(name, version, labels)
        return Response(orjson.dumps(counts.to_json()), media_type=JSON)

    async def performance(request: Request) -> Response:
        return Response(encode(await service.performance(*_target(request))), media_type=JSON)

    routes: list[BaseRoute] = []
    for prefix in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
        routes.append(Route(prefix + "/feedback", feedback, methods=["POST"]))
        routes.append(Route(prefix + "/performance", performance, methods=["GET"]))
    return routes
