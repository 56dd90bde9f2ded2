"""Open Inference Protocol over HTTP/REST, with Triton's extensions.

Routes only translate: bytes in, serve.types to the InferenceService, bytes out. Every
ServeError becomes ``{"error": message}`` with the status the error class carries.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp

from serve.codecs import http_codec
from serve.core import InferenceService
from serve.errors import InvalidInput, ServeError
from serve.http.body import ClientGone, read_body
from serve.http.infer import InferEndpoint
from serve.repository.config_json import message_to_json
from serve.repository.model_config import parse_config_json

JSON = "application/json"
HEADER_LENGTH = "inference-header-content-length"

log = logging.getLogger(__name__)

Handler = Callable[[Request], Awaitable[Response]]


def _json(payload: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(payload), status_code=status, media_type=JSON)


def _error(exc: ServeError) -> Response:
    return Response(http_codec.encode_error(exc.message), status_code=exc.http_status, media_type=JSON)


def _guard(handler: Handler) -> Handler:
    async def guarded(request: Request) -> Response:
        try:
            return await handler(request)
        except ServeError as exc:
            return _error(exc)
        except ClientGone:
            return Response(status_code=499)
        except Exception as exc:
            # A bug must still answer in the protocol's error format, not as a plain-text 500.
            log.exception("%s %s failed", request.method, request.url.path)
            return _json({"error": f"internal error: {type(exc).__name__}: {exc}"}, 500)

    guarded.__name__ = handler.__name__
    return guarded


def _version(request: Request) -> str:
    # The route's int convertor hands over an int; the core takes versions as strings.
    version = request.path_params.get("version")
    return "" if version is None else str(version)


async def _body(request: Request, max_bytes: int) -> bytes:
    return await read_body(request.headers, request.receive, max_bytes)


def create_app(
    service: InferenceService, *, max_request_bytes: int, extra_routes: list[Route] | None = None
) -> ASGIApp:
    """The Starlette app; ``service`` carries all state (no globals)."""

    async def live(request: Request) -> Response:
        return Response(status_code=200 if service.server_live() else 400)

    async def ready(request: Request) -> Response:
        return Response(status_code=200 if service.server_ready() else 400)

    async def server_metadata(request: Request) -> Response:
        return _json(service.server_metadata())

    async def model_metadata(request: Request) -> Response:
        return _json(service.model_metadata(request.path_params["model"], _version(request)))

    async def model_ready(request: Request) -> Response:
        ok = service.model_ready(request.path_params["model"], _version(request))
        return Response(status_code=200 if ok else 400)

    async def model_config(request: Request) -> Response:
        config = service.model_config(request.path_params["model"], _version(request))
        return _json(message_to_json(config))

    async def model_stats(request: Request) -> Response:
        stats = service.model_statistics(request.path_params.get("model", ""), _version(request))
        return _json({"model_stats": stats})

    async def infer_not_here(request: Request) -> Response:
        return _json({"error": f"no inference route for {request.url.path}"}, 404)

    async def repository_index(request: Request) -> Response:
        ready_only = False
        body = await _body(request, max_request_bytes)
        if body.strip():
            try:
                parsed = orjson.loads(body)
            except orjson.JSONDecodeError as exc:
                raise InvalidInput(f"malformed JSON: {exc}") from None
            ready_only = bool(parsed.get("ready", False)) if isinstance(parsed, dict) else False
        return _json(service.repository_index(ready_only))

    async def repository_load(request: Request) -> Response:
        body = await _body(request, max_request_bytes)
        config = None
        files: dict[str, bytes] = {}
        if body.strip():
            try:
                parsed = orjson.loads(body)
            except orjson.JSONDecodeError as exc:
                raise InvalidInput(f"malformed JSON: {exc}") from None
            parameters = parsed.get("parameters", {}) if isinstance(parsed, dict) else {}
            if not isinstance(parameters, dict):
                raise InvalidInput("'parameters' must be an object")
            if "config" in parameters:
                config = parse_config_json(str(parameters["config"]))
            import base64
            import binascii

            for key, value in parameters.items():
                if key.startswith("file:"):
                    try:
                        files[key[5:]] = base64.b64decode(str(value), validate=True)
                    except binascii.Error:
                        raise InvalidInput(f"parameter '{key}' is not valid base64") from None
        await service.load_model(request.path_params["model"], config, files or None)
        return Response(status_code=200)

    async def repository_unload(request: Request) -> Response:
        await _body(request, max_request_bytes)
        await service.unload_model(request.path_params["model"])
        return Response(status_code=200)

    model = "/v2/models/{model}"
    versioned = "/v2/models/{model}/versions/{version:int}"
    routes = [
        Route("/v2/health/live", _guard(live), methods=["GET"]),
        Route("/v2/health/ready", _guard(ready), methods=["GET"]),
        Route("/v2", _guard(server_metadata), methods=["GET"]),
        Route("/v2/models/stats", _guard(model_stats), methods=["GET"]),
    ]
    for prefix in (model, versioned):
        routes += [
            Route(prefix, _guard(model_metadata), methods=["GET"]),
            Route(prefix + "/ready", _guard(model_ready), methods=["GET"]),
            Route(prefix + "/config", _guard(model_config), methods=["GET"]),
            Route(prefix + "/stats", _guard(model_stats), methods=["GET"]),
            # InferEndpoint answers every POST here before the router sees it; the route exists
            # so that other methods on an inference path get 405, not 404.
            Route(prefix + "/infer", _guard(infer_not_here), methods=["POST"]),
        ]
    for repo in ("/v2/repository", "/v2/repository/{repository}"):
        routes += [
            Route(repo + "/index", _guard(repository_index), methods=["POST"]),
            Route(repo + "/models/{model}/load", _guard(repository_load), methods=["POST"]),
            Route(repo + "/models/{model}/unload", _guard(repository_unload), methods=["POST"]),
        ]
    routes += extra_routes or []

    async def not_found(request: Request, exc: Exception) -> Response:
        return _json({"error": f"no route for {request.method} {request.url.path}"}, 404)

    async def method_not_allowed(request: Request, exc: Exception) -> Response:
        return _json({"error": f"method {request.method} is not allowed on {request.url.path}"}, 405)

    router = Starlette(routes=routes, exception_handlers={404: not_found, 405: method_not_allowed})
    return InferEndpoint(router, service, max_request_bytes=max_request_bytes)
