"""``serve`` extensions for the monitor, not OIP (``…/stats`` belongs to Triton's statistics extension):

* ``GET /v2/models/{m}[/versions/{v}]/input-stats?since=<seq>``: the statistics document. It is
  built in a worker thread: it can be megabytes, and the event loop must keep serving meanwhile.
* ``GET /v2/models/{m}[/versions/{v}]/baseline``: the baseline.json the version bins against, its
  exact bytes, with ``Serve-Baseline-Sha256`` (of those bytes), ``Serve-Model-Sha256`` (of the
  loaded ONNX file) and ``Serve-Model-Version``; 404 saying why when there is none to use.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from serve.errors import InvalidInput, ServeError
from serve.stats.recorder import StatsRecorder
from serve.stats.served_baseline import (
    BASELINE_SHA256_HEADER,
    MODEL_SHA256_HEADER,
    MODEL_VERSION_HEADER,
    BaselineLookup,
    ServedBaseline,
)

JSON = "application/json"

# lookup(model name, version or "" for the default version) → the version's recorder;
# raises ModelNotFound / ModelNotReady like the repository does.
Lookup = Callable[[str, str], StatsRecorder]


def parse_since(raw: str | None) -> int:
    if raw is None or raw == "":
        return 0
    try:
        since = int(raw)
    except ValueError:
        raise InvalidInput(f"'since' must be a non-negative integer, not {raw!r}") from None
    if since < 0:
        raise InvalidInput(f"'since' must be a non-negative integer, not {raw!r}")
    return since


def input_stats_routes(lookup: Lookup) -> list[Route]:
    async def input_stats(request: Request) -> Response:
        try:
            since = parse_since(request.query_params.get("since"))
            version = request.path_params.get("version")
            recorder = lookup(request.path_params["model"], "" if version is None else str(version))
            body = await asyncio.to_thread(recorder.export_json, since)
        except ServeError as exc:
            return Response(orjson.dumps({"error": exc.message}), status_code=exc.http_status, media_type=JSON)
        return Response(body, media_type=JSON)

    return [
        Route("/v2/models/{model}/input-stats", input_stats, methods=["GET"]),
        Route("/v2/models/{model}/versions/{version:int}/input-stats", input_stats, methods=["GET"]),
    ]


def baseline_routes(lookup: BaselineLookup) -> list[Route]:
    async def baseline(request: Request) -> Response:
        try:
            version = request.path_params.get("version")
            served: ServedBaseline = lookup(request.path_params["model"], "" if version is None else str(version))
        except ServeError as exc:
            return Response(orjson.dumps({"error": exc.message}), status_code=exc.http_status, media_type=JSON)
        headers = {
            BASELINE_SHA256_HEADER: served.sha256,
            MODEL_SHA256_HEADER: served.model_sha256,
            MODEL_VERSION_HEADER: str(served.version),
        }
        return Response(served.data, media_type=JSON, headers=headers)

    return [
        Route("/v2/models/{model}/baseline", baseline, methods=["GET"]),
        Route("/v2/models/{model}/versions/{version:int}/baseline", baseline, methods=["GET"]),
    ]
