"""``serve`` extensions for the drift monitor, not OIP (``…/stats`` belongs to Triton's statistics
extension):

* ``GET /v2/models/{m}[/versions/{v}]/input-stats?since=<seq>``: the statistics document. It is
  built in a worker thread: it can be megabytes, and the event loop must keep serving meanwhile.
* ``GET /v2/models/{m}[/versions/{v}]/baseline``: the baseline.json the version bins against, its
  exact bytes, with ``Serve-Baseline-Sha256`` (of those bytes), ``Serve-Model-Sha256`` (of the
  loaded ONNX file) and ``Serve-Model-Version``; 404 saying why when there is none to use.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from serve.errors import InvalidInput
from serve.input_stats.served_baseline import (
    BASELINE_SHA256_HEADER,
    MODEL_SHA256_HEADER,
    MODEL_VERSION_HEADER,
    BaselineLookup,
)
from serve.input_stats.wiring import StatsDocuments

JSON = "application/json"


def parse_since(raw: str | None) -> int:
    if raw is None or raw == "":
        return 0
    if not (raw.isascii() and raw.isdigit()):
        raise InvalidInput(f"'since' must be a non-negative integer, not {raw!r}")
    return int(raw)


def _target(request: Request) -> tuple[str, str]:
    version = request.path_params.get("version")
    return request.path_params["model"], "" if version is None else str(version)


def monitoring_routes(stats: StatsDocuments, baselines: BaselineLookup) -> list[BaseRoute]:
    async def input_stats(request: Request) -> Response:
        since = parse_since(request.query_params.get("since"))
        return Response(await stats(*_target(request), since), media_type=JSON)

    async def baseline(request: Request) -> Response:
        served = baselines(*_target(request))
        headers = {
            BASELINE_SHA256_HEADER: served.sha256,
            MODEL_SHA256_HEADER: served.model_sha256,
            MODEL_VERSION_HEADER: str(served.version),
        }
        return Response(served.data, media_type=JSON, headers=headers)

    routes: list[BaseRoute] = []
    for prefix in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
        routes.append(Route(prefix + "/input-stats", input_stats, methods=["GET"]))
        routes.append(Route(prefix + "/baseline", baseline, methods=["GET"]))
    return routes
