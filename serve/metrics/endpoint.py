"""``GET /metrics``: a route for the main HTTP app and a tiny app of its own for ``--metrics-port``."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from serve.metrics.prometheus import PrometheusMetrics

METRICS_PATH = "/metrics"


def metrics_route(metrics: PrometheusMetrics) -> Route:
    async def scrape(request: Request) -> Response:
        body, content_type = metrics.exposition(request.headers.get("accept", ""))
        return Response(body, headers={"Content-Type": content_type})

    return Route(METRICS_PATH, scrape, methods=["GET"])


def create_metrics_app(metrics: PrometheusMetrics) -> Starlette:
    """The whole app behind ``--metrics-port``: only /metrics."""
    return Starlette(routes=[metrics_route(metrics)])
