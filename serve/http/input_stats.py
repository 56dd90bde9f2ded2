"""``GET /v2/models/{m}[/versions/{v}]/input-stats?since=<seq>``: a ``serve`` extension, not OIP.

(``…/stats`` belongs to Triton's statistics extension.) The document is built in a worker
thread: it can be megabytes, and the event loop must keep serving inference meanwhile.
"""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from serve.errors import InvalidInput
from serve.stats.wiring import StatsLookup

JSON = "application/json"


def parse_since(raw: str | None) -> int:
    if raw is None or raw == "":
        return 0
    if not (raw.isascii() and raw.isdigit()):
        raise InvalidInput(f"'since' must be a non-negative integer, not {raw!r}")
    return int(raw)


def input_stats_routes(lookup: StatsLookup) -> list[BaseRoute]:
    async def input_stats(request: Request) -> Response:
        since = parse_since(request.query_params.get("since"))
        version = request.path_params.get("version")
        recorder = lookup(request.path_params["model"], "" if version is None else str(version))
        body = await asyncio.to_thread(recorder.export_json, since)
        return Response(body, media_type=JSON)

    return [
        Route("/v2/models/{model}/input-stats", input_stats, methods=["GET"]),
        Route("/v2/models/{model}/versions/{version}/input-stats", input_stats, methods=["GET"]),
    ]
