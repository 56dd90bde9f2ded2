"""Open Inference Protocol over HTTP/REST, with Triton's extensions.

Routes only translate: bytes in, serve.types to the InferenceService, bytes out. Handlers
raise; the ErrorBoundary around the whole app turns every failure into a response.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route, Router
from starlette.types import ASGIApp

from serve.codecs.http_codec import load_json_object
from serve.core import InferenceService
from serve.errors import InvalidInput, Unsupported
from serve.http.auth import actor_of
from serve.http.body import read_body
from serve.http.errors import ErrorBoundary
from serve.http.feedback_routes import feedback_routes
from serve.http.infer import InferEndpoint
from serve.http.openapi import openapi_document
from serve.http.rollout_routes import rollout_routes
from serve.http.trace_routes import trace_routes
from serve.protocol import model_config_pb2 as mc
from serve.repository.config_file import parse_config_json
from serve.repository.config_json import message_to_json

JSON = "application/json"

Handler = Callable[[Request], Awaitable[Response]]


def json_response(payload: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(payload), status_code=status, media_type=JSON)


def _version(request: Request) -> str:
    version = request.path_params.get("version")
    return "" if version is None else str(version)


def _json_object(body: bytes) -> dict[str, Any]:
    """An optional JSON object body (repository requests); empty means {}."""
    return load_json_object(body) if body.strip() else {}


def _load_parameters(body: dict[str, Any]) -> tuple[mc.ModelConfig | None, dict[str, bytes]]:
    parameters = body.get("parameters", {})
    if not isinstance(parameters, dict):
        raise InvalidInput("'parameters' must be an object")
    config = None
    if "config" in parameters:
        if not isinstance(parameters["config"], str):
            raise InvalidInput("parameter 'config' must be a string holding the config as JSON")
        config = parse_config_json(parameters["config"])
    files: dict[str, bytes] = {}
    for key, value in parameters.items():
        if key.startswith("file:"):
            if not isinstance(value, str):
                raise InvalidInput(f"parameter '{key}' must be a base64 string")
            try:
                files[key[5:]] = base64.b64decode(value, validate=True)
            except binascii.Error:
                raise InvalidInput(f"parameter '{key}' is not valid base64") from None
    return config, files


def _unsupported_extensions() -> list[BaseRoute]:
    """Triton's shared-memory and log-settings endpoints: 501 naming the extension, not 404
    (Triton's clients read a 404 as "model not found")."""

    def refuse(extension: str) -> Handler:
        async def unsupported(request: Request) -> Response:
            raise Unsupported(f"the {extension} extension is not supported by this server")

        return unsupported

    routes: list[BaseRoute] = []
    for prefix, extension in (
        ("/v2/systemsharedmemory", "system shared memory"),
        ("/v2/cudasharedmemory", "CUDA shared memory"),
    ):
        handler = refuse(extension)
        routes += [
            Route(prefix + "/status", handler, methods=["GET"]),
            Route(prefix + "/unregister", handler, methods=["POST"]),
            Route(prefix + "/region/{region}/status", handler, methods=["GET"]),
            Route(prefix + "/region/{region}/register", handler, methods=["POST"]),
            Route(prefix + "/region/{region}/unregister", handler, methods=["POST"]),
        ]
    routes.append(Route("/v2/logging", refuse("logging"), methods=["GET", "POST"]))
    return routes


class _Routes:
    """The handlers of every route but inference; ``service`` carries all state (no globals)."""

    def __init__(self, service: InferenceService, max_request_bytes: int) -> None:
        self.service = service
        self.max_request_bytes = max_request_bytes
        self.described = orjson.dumps(openapi_document())

    async def body_of(self, request: Request) -> bytes:
        return await read_body(request.headers, request.receive, self.max_request_bytes)

    async def live(self, request: Request) -> Response:
        return Response(status_code=200 if self.service.server_live() else 400)

    async def ready(self, request: Request) -> Response:
        # Triton's 400 and empty 200; not ready also says which model and why (serve/core/readiness.py).
        readiness = self.service.readiness()
        return Response(status_code=200) if readiness.ready else json_response(readiness.as_json(), 400)

    async def server_metadata(self, request: Request) -> Response:
        return json_response(self.service.server_metadata())

    async def model_metadata(self, request: Request) -> Response:
        return json_response(self.service.model_metadata(request.path_params["model"], _version(request)))

    async def model_ready(self, request: Request) -> Response:
        why = self.service.model_not_ready(request.path_params["model"], _version(request))
        return json_response({"ready": False, "error": why}, 400) if why else Response(status_code=200)

    async def model_config(self, request: Request) -> Response:
        config = self.service.model_config(request.path_params["model"], _version(request))
        return json_response(message_to_json(config))

    async def model_stats(self, request: Request) -> Response:
        stats = await self.service.model_statistics(request.path_params.get("model", ""), _version(request))
        return json_response({"model_stats": stats})

    async def repository_index(self, request: Request) -> Response:
        with self.service.audited("index", actor_of(request.scope), ""):
            body = _json_object(await self.body_of(request))
            ready_only = body.get("ready", False)
            if not isinstance(ready_only, bool):
                raise InvalidInput("'ready' must be a boolean")
            return json_response(self.service.repository_index(ready_only))

    async def repository_load(self, request: Request) -> Response:
        name, actor = request.path_params["model"], actor_of(request.scope)
        with self.service.audited("load", actor, name):
            config, files = _load_parameters(_json_object(await self.body_of(request)))
            await self.service.load_model(name, config, files or None, actor=actor)
            return Response(status_code=200)

    async def repository_unload(self, request: Request) -> Response:
        name, actor = request.path_params["model"], actor_of(request.scope)
        with self.service.audited("unload", actor, name):
            await self.body_of(request)
            await self.service.unload_model(name, actor=actor)
            return Response(status_code=200)

    async def openapi(self, request: Request) -> Response:
        return Response(self.described, media_type=JSON)

    async def not_an_inference(self, request: Request) -> Response:
        # InferEndpoint answers every POST to an inference path; the route exists so that other
        # methods get 405 rather than 404.
        raise AssertionError("unreachable: InferEndpoint answers inference POSTs")

    def table(self) -> list[BaseRoute]:
        routes: list[BaseRoute] = [
            Route("/v2/health/live", self.live, methods=["GET"]),
            Route("/v2/health/ready", self.ready, methods=["GET"]),
            Route("/v2", self.server_metadata, methods=["GET"]),
            Route("/v2/models/stats", self.model_stats, methods=["GET"]),
            Route("/openapi.json", self.openapi, methods=["GET"]),
        ]
        for prefix in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
            routes += [
                Route(prefix, self.model_metadata, methods=["GET"]),
                Route(prefix + "/ready", self.model_ready, methods=["GET"]),
                Route(prefix + "/config", self.model_config, methods=["GET"]),
                Route(prefix + "/stats", self.model_stats, methods=["GET"]),
                Route(prefix + "/infer", self.not_an_inference, methods=["POST"]),
            ]
        for repo in ("/v2/repository", "/v2/repository/{repository}"):
            routes += [
                Route(repo + "/index", self.repository_index, methods=["POST"]),
                Route(repo + "/models/{model}/load", self.repository_load, methods=["POST"]),
                Route(repo + "/models/{model}/unload", self.repository_unload, methods=["POST"]),
            ]
        return routes


def create_app(
    service: InferenceService, *, max_request_bytes: int, extra_routes: list[BaseRoute] | None = None
) -> ASGIApp:
    """The HTTP app; ``service`` carries all state (no globals)."""
    routes = [
        *_Routes(service, max_request_bytes).table(),
        *rollout_routes(service, max_request_bytes=max_request_bytes),
        *feedback_routes(service, max_request_bytes=max_request_bytes),
        *trace_routes(service, max_request_bytes=max_request_bytes),
        *_unsupported_extensions(),
        *(extra_routes or []),
    ]
    return ErrorBoundary(InferEndpoint(Router(routes=routes), service, max_request_bytes=max_request_bytes))
