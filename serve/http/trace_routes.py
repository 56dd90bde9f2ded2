"""Triton's trace extension over HTTP: ``/v2/trace/setting`` (global) and ``/v2/models/{m}/trace/setting``.

* ``GET``: the settings document, every value a string (``trace_level`` a list of strings);
* ``POST`` with a JSON object of settings, each a string, a list of strings or null (clears a model's own value,
  so that it follows the global one): applies them on every worker, answers the document after them, and goes
  to the audit log (action ``trace_setting``; admin scope with --auth-tokens-file).

What each key means in OpenTelemetry mode: serve/tracing/settings.py.
"""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from serve.codecs.http_codec import load_json_object
from serve.core import InferenceService
from serve.http.auth import TRACE_SETTING, actor_of
from serve.http.body import read_body
from serve.tracing.settings import SettingValue, setting_values

JSON = "application/json"
GLOBAL_PATH = "/v2/trace/setting"
MODEL_PATH = "/v2/models/{model}/trace/setting"


def parse_changes(body: bytes) -> dict[str, SettingValue]:
    """The POST body's settings; InvalidInput naming the first key whose value is not a string, a list of
    strings or null."""
    return setting_values(load_json_object(body) if body.strip() else {})


def trace_routes(service: InferenceService, *, max_request_bytes: int) -> list[BaseRoute]:
    def document(model: str) -> Response:
        return Response(orjson.dumps(service.trace_setting(model)), media_type=JSON)

    async def get(request: Request) -> Response:
        return document(request.path_params.get("model", ""))

    async def post(request: Request) -> Response:
        model, actor = request.path_params.get("model", ""), actor_of(request.scope)
        with service.audited(TRACE_SETTING, actor, model):
            service.trace_setting(model)  # NOT_FOUND whatever the body holds
            changes = parse_changes(await read_body(request.headers, request.receive, max_request_bytes))
            updated = await service.update_trace_setting(model, changes, actor)
            return Response(orjson.dumps(updated), media_type=JSON)

    return [
        Route(GLOBAL_PATH, get, methods=["GET"]),
        Route(GLOBAL_PATH, post, methods=["POST"]),
        Route(MODEL_PATH, get, methods=["GET"]),
        Route(MODEL_PATH, post, methods=["POST"]),
    ]
