"""The monitor's own HTTP port: the HTML report, the JSON API and ``/metrics``.

* ``GET /`` (also ``/report``): the HTML report with plots (drawn after each evaluation: plots.py).
* ``GET /api/models``: every model version with its baseline status, window, drift share and states.
* ``GET /api/drift?model=M[&version=V][&history=SECONDS]``: per feature every measure with its threshold,
  sample counts, verdict and state; ``history`` adds each measure's values over that many past seconds.
* ``GET /api/servers``: the replicas (up / stale / gone, and the ``--server`` URL each was found
  through) and, per ``--server``, the addresses it resolved to or why it did not resolve.
* ``GET /api/alerts``: the latest alerts.
* ``GET /api/rollouts``: with ``--rollouts``, every model's plan as judged, its last evaluation and the
  evidence it judged (``[]`` without).
* ``GET /api/rollouts/compare[?model=M]``: with or without ``--rollouts``, each arm of each rollout the replicas
  report against its primary: per input and output feature the measures and samples, the shadow's comparison
  counts and the arm's gates (rollout_compare.py); 404 when ``model`` has no rollout.
* ``GET /api/performance[?model=M[&version=V]]``: per model version whose servers join labels, realized and
  estimated performance over the horizon and per window of prediction, the baseline's held-out values, the label
  coverage and the verdicts (performance.py); 404 when ``model`` has none.
* ``GET /metrics``: Prometheus gauges (prom.py).
"""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import TypedDict

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from serve.monitor.baselines import BaselineJson
from serve.monitor.collector import RestartJson
from serve.monitor.model_report import ModelReport
from serve.monitor.model_report_json import ModelReportJson, ReplicaJson, ReportWindow, SloJson
from serve.monitor.performance_report import performance_sections
from serve.monitor.plots import PlotCache
from serve.monitor.prom import DriftCollector
from serve.monitor.report import render_page
from serve.monitor.rollout_report import rollout_sections
from serve.monitor.service import Monitor
from serve.repository.layout import is_version_number


class ModelSummary(TypedDict):
    """One model version in ``/api/models``."""

    model: str
    version: str
    evaluated_at: float
    baseline: BaselineJson
    window: ReportWindow | None
    drifted_share: float | None
    drifted_state_share: float | None
    dataset_drift: bool | None
    dataset_state: str | None
    prediction_drift: bool | None
    prediction_drift_state: str | None
    slo: SloJson
    features: int
    drifted_features: list[str]
    problems: list[str]
    replicas: list[ReplicaJson]
    restarts: list[RestartJson]


def _json(payload: object, status: int = 200) -> Response:
    return Response(
        orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS),
        status_code=status, media_type="application/json",
    )  # fmt: skip


def _models_summary(monitor: Monitor) -> list[ModelSummary]:
    return [_model_summary(r.to_json()) for _, r in sorted(monitor.latest.items())]


def _model_summary(r: ModelReportJson) -> ModelSummary:
    return {
        "model": r["model"], "version": r["version"], "evaluated_at": r["evaluated_at"], "baseline": r["baseline"],
        "window": r["window"], "drifted_share": r.get("drifted_share"),
        "drifted_state_share": r.get("drifted_state_share"), "dataset_drift": r.get("dataset_drift"),
        "dataset_state": r.get("dataset_state"), "prediction_drift": r.get("prediction_drift"),
        "prediction_drift_state": r.get("prediction_drift_state"), "slo": r["slo"],
        "features": len(r["features"]), "drifted_features": [f["name"] for f in r["features"] if f["drifted"]],
        "problems": r["problems"], "replicas": r.get("replicas", []), "restarts": r.get("restarts", []),
    }  # fmt: skip


def render_report(monitor: Monitor, plots: PlotCache | None = None) -> str:
    """The page of the latest evaluation whose plots are drawn (``plots`` draws each evaluation once)."""
    drawn, latest = (plots or PlotCache(monitor)).page()
    note = None
    if drawn.key != latest:
        newest = max((at for _, _, at in latest), default=None)
        note = "a newer evaluation is being drawn" + (f" ({_clock(newest)})" if newest is not None else "")
    servers = [s.to_json() for s in monitor.servers.values()]
    sections = rollout_sections(drawn.comparisons, drawn.rollout_plots)
    sections += performance_sections(drawn.performance, drawn.performance_plots)
    return render_page(drawn.reports, drawn.plots, servers, note, sections)


def _clock(t: float) -> str:
    return dt.datetime.fromtimestamp(t).strftime("%H:%M:%S")


def _newest_version(monitor: Monitor, model: str, version: str | None) -> ModelReport | None:
    """The latest report of ``model`` ``version``; of its highest version when ``version`` is None."""
    matches = [r for (m, v), r in monitor.latest.items() if m == model and (version is None or v == version)]
    if not matches:
        return None
    return max(matches, key=lambda r: int(r.version) if is_version_number(r.version) else -1)


def _drift(monitor: Monitor, request: Request) -> Response:
    model = request.query_params.get("model")
    if not model:
        return _json({"error": "query parameter 'model' is required"}, 400)
    version = request.query_params.get("version")
    report = _newest_version(monitor, model, version)
    if report is None:
        return _json({"error": f"no evaluation for model '{model}'" + (f" version {version}" if version else "")}, 404)
    document = report.to_json()
    raw_history = request.query_params.get("history")
    if raw_history:
        try:
            seconds = float(raw_history)
        except ValueError:
            return _json({"error": "'history' is a number of seconds"}, 400)
        since = (monitor.last_evaluation or 0) - seconds
        document["features"] = [
            {**f, "history": monitor.store.history(report.model, report.version, f["name"], None, since)}
            for f in document["features"]
        ]
    return _json(document)


def create_monitor_app(monitor: Monitor, plots: PlotCache | None = None) -> Starlette:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DriftCollector(monitor))
    if monitor.rollouts is not None:  # the serve_rollout_* gauges of the decisions it makes for the replicas
        registry.register(monitor.rollouts.registry)
    plots = plots or PlotCache(monitor)
    monitor.evaluation_listeners.append(plots.evaluated)
    if monitor.latest:  # evaluations made before the app existed, or loaded from the history store
        plots.evaluated()

    async def report(request: Request) -> Response:
        page = await asyncio.to_thread(render_report, monitor, plots)
        return HTMLResponse(page)

    async def models(request: Request) -> Response:
        return _json({"models": _models_summary(monitor), "servers": [s.to_json() for s in monitor.servers.values()]})

    async def drift(request: Request) -> Response:
        return _drift(monitor, request)

    async def servers(request: Request) -> Response:
        return _json(
            {
                "servers": [s.to_json() for s in monitor.servers.values()],
                "discovery": [t.to_json() for t in monitor.discovery.targets],
            }
        )

    async def alerts(request: Request) -> Response:
        return _json({"alerts": monitor.store.alerts()})

    async def rollouts(request: Request) -> Response:
        return _json({"rollouts": monitor.rollouts.document() if monitor.rollouts is not None else []})

    async def compare(request: Request) -> Response:
        model = request.query_params.get("model")
        found = [c for c in monitor.comparisons if model is None or c["model"] == model]
        if model is not None and not found:
            return _json({"error": f"no rollout of model '{model}' reported by the servers"}, 404)
        return _json({"evaluated_at": monitor.last_evaluation, "rollouts": found})

    async def performance(request: Request) -> Response:
        model, version = request.query_params.get("model"), request.query_params.get("version")
        found = [
            p
            for (m, v), p in sorted(monitor.performance.items())
            if (model is None or m == model) and (version is None or v == version)
        ]
        if model is not None and not found:
            return _json({"error": f"no performance of model '{model}' reported by the servers"}, 404)
        return _json({"evaluated_at": monitor.last_evaluation, "performance": found})

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return Starlette(
        routes=[
            Route("/", report, methods=["GET"]),
            Route("/report", report, methods=["GET"]),
            Route("/api/models", models, methods=["GET"]),
            Route("/api/drift", drift, methods=["GET"]),
            Route("/api/servers", servers, methods=["GET"]),
            Route("/api/alerts", alerts, methods=["GET"]),
            Route("/api/rollouts", rollouts, methods=["GET"]),
            Route("/api/rollouts/compare", compare, methods=["GET"]),
            Route("/api/performance", performance, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
        ]
    )
