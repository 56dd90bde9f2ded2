"""The monitor's cycle: find the replicas, poll every one, merge, evaluate against baselines, record, alert.

Each cycle first resolves the ``--server`` names again (discovery.py): a replica that appears
is added; one that is no longer among the addresses is marked stale, no longer polled, and
forgotten once it has been gone for the evaluation horizon (by then none of its windows
count). Replicas are polled concurrently, each in a worker thread (plain blocking HTTP with
a timeout); one that fails or times out is marked stale with its error, keeps what it sent
before (that traffic happened), and is tried again on the next cycle. A version without a
local baseline uses the one its replicas bin against, fetched from them once per hash
(baselines.py checks it as it checks files). The evaluation itself is numpy work and also
runs in a worker thread, so the monitor's own HTTP endpoints stay responsive.
"""

from __future__ import annotations

import asyncio
import http.client
import logging
import socket
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from serve.input_stats.served_baseline import BASELINE_SHA256_HEADER, MODEL_SHA256_HEADER
from serve.monitor.alerts import Alerter
from serve.monitor.baselines import BaselineRegistry
from serve.monitor.collector import StatsCollector
from serve.monitor.config import MonitorSettings
from serve.monitor.discovery import Discovery, HostsFile, Resolver, system_resolver, tls_server_name
from serve.monitor.evaluate import FeatureResult, ModelEvaluation, evaluate_model
from serve.monitor.policy import Policy, StateTracker
from serve.monitor.slo import SloTracker, parse_metrics
from serve.monitor.store import HistoryStore, Row

log = logging.getLogger("serve.monitor")


@dataclass(slots=True)
class ServerStatus:
    url: str
    up: bool = False
    stale: bool = True
    last_ok: float | None = None
    last_error: str | None = None
    failures: int = 0
    models: list[tuple[str, str]] = field(default_factory=list)
    no_stats: list[str] = field(default_factory=list)  # models whose input-stats route answered 404
    target: str = ""  # the --server URL it was found through (itself, for an address)
    vanished_at: float | None = None  # when it was no longer among the target's addresses

    @property
    def tls_name(self) -> str | None:
        return tls_server_name(self.url, self.target or self.url)

    def to_json(self) -> dict[str, Any]:
        return {
            "url": self.url, "target": self.target or self.url, "up": self.up, "stale": self.stale,
            "last_ok": self.last_ok, "last_error": self.last_error, "consecutive_failures": self.failures,
            "vanished_at": self.vanished_at,
            "models": [f"{m}:{v}" for m, v in self.models], "without_statistics": self.no_stats,
        }  # fmt: skip


def _http_response(
    url: str, timeout_s: float, body: bytes | None = None, token: str | None = None, tls_name: str | None = None
) -> tuple[bytes, dict[str, str]]:
    """GET (or POST ``body``) ``url``; with ``tls_name``, over TLS to the URL's address but checking the
    certificate against that name (a replica found through an https Service name: discovery.py)."""
    request = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET")
    if body is not None:
        request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    opener = urllib.request.build_opener(_NamedTlsHandler(tls_name)) if tls_name else urllib.request.build_opener()
    if tls_name:
        port = urllib.parse.urlsplit(url).port
        request.add_header("Host", tls_name if port is None else f"{tls_name}:{port}")
    with opener.open(request, timeout=timeout_s) as response:
        return bytes(response.read()), {k.lower(): v for k, v in response.headers.items()}


class _NamedTlsConnection(http.client.HTTPSConnection):
    """Connects to the URL's address, and speaks TLS as if to ``server_name``."""

    def __init__(self, host: str, *, server_name: str, context: ssl.SSLContext, **kwargs: Any) -> None:
        super().__init__(host, context=context, **kwargs)
        self._server_name, self._tls_context = server_name, context

    def connect(self) -> None:
        sock = socket.create_connection((self.host, self.port), self.timeout)
        self.sock = self._tls_context.wrap_socket(sock, server_hostname=self._server_name)


class _NamedTlsHandler(urllib.request.HTTPSHandler):
    def __init__(self, server_name: str) -> None:
        super().__init__()
        self._server_name = server_name

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        context = ssl.create_default_context()  # the system's trust, or SSL_CERT_FILE's

        def connection(host: str, **kwargs: Any) -> _NamedTlsConnection:
            kwargs.pop("context", None)
            return _NamedTlsConnection(host, server_name=self._server_name, context=context, **kwargs)

        return self.do_open(connection, req)


def _http(
    url: str, timeout_s: float, body: bytes | None = None, token: str | None = None, tls_name: str | None = None
) -> bytes:
    return _http_response(url, timeout_s, body, token, tls_name)[0]


def _error_message(exc: urllib.error.HTTPError) -> str:
    """The ``{"error": …}`` of a server's error answer, else its status line."""
    try:
        message = orjson.loads(exc.read()).get("error")
    except (OSError, ValueError, AttributeError):
        message = None
    return str(message) if message else f"HTTP {exc.code} {exc.reason}"


def default_resolver(settings: MonitorSettings) -> Resolver:
    return HostsFile(settings.hosts_file) if settings.hosts_file is not None else system_resolver


def _model_key(kind: str, model: str, version: str, *rest: str) -> str:
    return ":".join((kind, model, version, *rest))


class Monitor:
    def __init__(
        self,
        settings: MonitorSettings,
        *,
        store: HistoryStore | None = None,
        alerter: Alerter | None = None,
        registry: BaselineRegistry | None = None,
        clock: Callable[[], float] = time.time,
        resolver: Resolver | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.store = store or HistoryStore(settings.db_path, settings.retention_s)
        self.alerter = alerter or Alerter(
            settings.webhook, rate_per_minute=settings.alert_rate_per_minute, retries=settings.webhook_retries,
            timeout_s=settings.timeout_s,
        )  # fmt: skip
        self.registry = registry or BaselineRegistry(settings.model_repository, settings.baselines)
        self.collector = StatsCollector()
        self.slo = SloTracker(settings.horizon_s)
        self.discovery = Discovery(settings.servers, resolver or default_resolver(settings))
        # Addresses are known before the first poll; names join when first resolved.
        self.servers: dict[str, ServerStatus] = {
            url: ServerStatus(url, target=target) for url, target in self.discovery.known().items()
        }
        self._asked_why: set[tuple[str, str, str, str]] = set()  # (url, model, version, instance) asked for a reason
        self.trackers: dict[str, StateTracker] = {
            key: StateTracker(state, streak, since) for key, (state, streak, since) in self.store.load_states().items()
        }
        self.latest: dict[tuple[str, str], dict[str, Any]] = {
            key: payload for key, (_, payload) in self.store.load_latest().items()
        }
        self.last_evaluation: float | None = None
        self.evaluations = 0
        # Called on the event loop after each evaluation is recorded (the report app draws its plots then).
        self.evaluation_listeners: list[Callable[[], None]] = []

    # ---------------------------------------------------------------- polling

    def _poll_server(self, status: ServerStatus) -> None:
        timeout = self.settings.timeout_s
        token = self.settings.token
        name = status.tls_name
        index = orjson.loads(_http(status.url + "/v2/repository/index", timeout, b"{}", token, name))
        models = sorted(
            {(r["name"], str(r["version"])) for r in index if r.get("state") == "READY" and r.get("version")}
        )
        no_stats = []
        for model, version in models:
            quoted = urllib.parse.quote(model, safe="")
            base = f"{status.url}/v2/models/{quoted}/versions/{version}/input-stats"
            since = self.collector.since(status.url, model, version)
            try:
                document = orjson.loads(_http(f"{base}?since={since}", timeout, token=token, tls_name=name))
            except urllib.error.HTTPError as exc:
                if exc.code == 404:
                    no_stats.append(f"{model}:{version}")
                    continue
                raise
            if self.collector.ingest(status.url, document):
                document = orjson.loads(_http(f"{base}?since=0", timeout, token=token, tls_name=name))
                self.collector.ingest(status.url, document)
            self._baseline_from(status, model, version, document)
        try:
            metrics = _http(status.url + "/metrics", timeout, token=token, tls_name=name).decode()
            self.slo.add(status.url, self.clock(), parse_metrics(metrics))
        except (OSError, ValueError) as exc:
            log.debug("no metrics from %s: %s", status.url, exc)
        status.models, status.no_stats = models, no_stats

    def _baseline_from(self, status: ServerStatus, model: str, version: str, document: dict[str, Any]) -> None:
        """Fetch the baseline this replica bins against when no local one covers the version and it is new;
        when it bins against none, ask once per instance why (the 404 message goes into the report)."""
        url = status.url
        sha256 = (document.get("baseline") or {}).get("sha256")
        quoted = urllib.parse.quote(model, safe="")
        address = f"{url}/v2/models/{quoted}/versions/{version}/baseline"
        if sha256:
            if not self.registry.wants_from_server(model, version, sha256):
                return
        else:
            asked = (url, model, version, str(document["instance"]["id"]))
            if asked in self._asked_why or not self.registry.wants_from_server(model, version, ""):
                return
            self._asked_why.add(asked)
        try:
            data, headers = _http_response(
                address, self.settings.timeout_s, token=self.settings.token, tls_name=status.tls_name
            )
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                self.registry.note_server_reason(model, version, url, _error_message(exc))
            else:
                log.warning("baseline from %s: %s; asking again next poll", address, _error_message(exc))
            return
        except OSError as exc:  # the statistics came through: the replica is up, only this fetch failed
            log.warning("baseline from %s: %s; asking again next poll", address, getattr(exc, "reason", exc))
            return
        self.registry.add_from_server(
            model,
            version,
            address,
            data,
            headers.get(BASELINE_SHA256_HEADER.lower(), ""),
            headers.get(MODEL_SHA256_HEADER.lower(), ""),
        )

    def _track_replicas(self, found: dict[str, str], now: float) -> None:
        """Add replicas that appeared, mark the vanished stale, forget those gone for the horizon."""
        for url, target in found.items():
            status = self.servers.get(url)
            if status is None:
                self.servers[url] = ServerStatus(url, target=target)
                if url != target:
                    log.info("replica %s found through %s", url, target)
            elif status.vanished_at is not None:
                status.vanished_at = None
                log.info("replica %s is back among the addresses of %s", url, target)
        for url, status in list(self.servers.items()):
            if url in found:
                continue
            if status.vanished_at is None:
                status.vanished_at, status.up, status.stale = now, False, True
                self.collector.close_ended_from(url, now)
                status.last_error = f"no longer among the addresses of {status.target}"
                log.info("replica %s is gone from %s; marked stale", url, status.target)
            elif now - status.vanished_at > self.settings.horizon_s:
                del self.servers[url]
                log.info("replica %s forgotten: gone for longer than the horizon", url)

    async def poll(self) -> None:
        found = await asyncio.to_thread(self.discovery.resolve)
        self._track_replicas(found, self.clock())

        async def one(status: ServerStatus) -> None:
            try:
                await asyncio.to_thread(self._poll_server, status)
            except (OSError, ValueError) as exc:  # refused, timed out, HTTP error, bad JSON
                status.failures += 1
                status.up, status.stale = False, True
                if isinstance(exc, urllib.error.HTTPError):
                    reason = f"HTTP {exc.code} {exc.reason}"
                else:
                    reason = str(getattr(exc, "reason", exc)) or type(exc).__name__
                if status.last_error != reason or status.failures == 1:
                    log.warning("server %s is stale (%s); retrying every cycle", status.url, reason)
                status.last_error = reason
                return
            if status.failures:
                log.info("server %s is back after %d failed poll(s)", status.url, status.failures)
            status.up, status.stale, status.failures, status.last_error = True, False, 0, None
            status.last_ok = self.clock()

        await asyncio.gather(*(one(s) for s in self.servers.values() if s.vanished_at is None))

    # ---------------------------------------------------------------- evaluation

    def model_keys(self) -> list[tuple[str, str]]:
        keys = set(self.collector.models())
        for s in self.servers.values():
            keys.update(s.models)
        return sorted(keys)

    def evaluate(self, *, include_open: bool = False) -> dict[tuple[str, str], tuple[dict[str, Any], Any]]:
        """Evaluate every model version; (report JSON, ModelEvaluation or None) per model version."""
        now = self.clock()
        # windows older than the horizon stay for pooling (Policy.pool_s), and at least an hour
        self.collector.forget_before(now - self.settings.horizon_s - max(3600.0, self.settings.policy.pool_s))
        out = {}
        for model, version in self.model_keys():
            out[(model, version)] = self._evaluate_model(model, version, now, include_open)
        return out

    def _evaluate_model(self, model: str, version: str, now: float, include_open: bool) -> tuple[dict[str, Any], Any]:
        entry = self.registry.get(model, version, self.collector.baseline_shas(model, version))
        baseline = entry.baseline
        policy = self.settings.policy_for(model, (baseline.document.get("thresholds") if baseline else None) or {})
        report: dict[str, Any] = {
            "model": model, "version": version, "evaluated_at": now, "baseline": entry.to_json(),
            "problems": list(entry.problems), "features": [],
        }  # fmt: skip
        slo = self._slo(model, version, policy)
        report["slo"] = slo
        if not entry.usable or baseline is None:
            report["window"] = None
            return report, None
        horizon_start = now - self.settings.horizon_s
        collected = self.collector.collected(
            model,
            version,
            horizon_start - policy.pool_s,
            include_open=include_open,
            baseline_sha256=baseline.sha256,
        )
        report["problems"] += collected.problems
        report["replicas"] = [
            {**i, "stale": self.servers[i["source"]].stale if i["source"] in self.servers else True}
            for i in self.collector.instances(model, version)
        ]
        report["restarts"] = collected.restarts
        recent = [w for w in collected.windows if w["end"] > horizon_start]
        older = [w for w in collected.windows if w["end"] <= horizon_start]
        ev = evaluate_model(model, version, baseline, recent, policy, older=older)
        report["window"] = {
            "start": ev.window_start, "end": ev.window_end, "rows": ev.rows, "horizon_s": self.settings.horizon_s,
            "include_open": include_open, "windows": len(recent), "pool_s": policy.pool_s,
            "pool_windows": len(older),
        }  # fmt: skip
        report["drifted_share"] = ev.drifted_share
        report["dataset_drift"] = ev.dataset_verdict
        report["prediction_drift"] = ev.prediction_verdict
        report["drift_share_threshold"] = policy.drift_share
        report["persistence"] = policy.persistence
        report["features"] = [{**f.to_json(), "view": f.view} for f in ev.features]
        return report, ev

    def _slo(self, model: str, version: str, policy: Policy) -> dict[str, Any]:
        figures = self.slo.figures(model, version)
        s = policy.slo
        enough = (figures["requests"] or 0) >= s.min_requests
        latency = figures["p99_latency_s"]
        errors = figures["error_rate"]
        return {
            **figures,
            "p99_latency_threshold_s": s.p99_latency_s,
            "error_rate_threshold": s.error_rate,
            "min_requests": s.min_requests,
            "latency_violated": (latency >= s.p99_latency_s)
            if enough and latency is not None and s.p99_latency_s
            else None,
            "errors_violated": (errors >= s.error_rate) if enough and errors is not None and s.error_rate else None,
        }

    # ---------------------------------------------------------------- state, history, alerts

    def _tracker(self, key: str) -> StateTracker:
        tracker = self.trackers.get(key)
        if tracker is None:
            tracker = self.trackers[key] = StateTracker(since=self.clock())
        return tracker

    def _observe(self, key: str, verdict: bool | None, persistence: int, now: float, alert: dict[str, Any]) -> str:
        tracker = self._tracker(key)
        if tracker.observe(verdict, persistence, now):
            firing = tracker.state == "drifted"
            payload = {**alert, "key": key, "state": "firing" if firing else "resolved", "time": now}
            payload["message"] = alert["firing" if firing else "resolved"]
            payload.pop("firing"), payload.pop("resolved")
            sent = self.alerter.emit(payload)
            self.store.add_alert(now, key, payload["state"], payload, None if self.alerter.webhook is None else sent)
        return tracker.state

    def record(self, results: dict[tuple[str, str], tuple[dict[str, Any], Any]]) -> None:
        """History rows, persistent states and alerts for one evaluation (call on the event loop)."""
        now = self.clock()
        rows: list[Row] = []
        for (model, version), (report, ev) in results.items():
            persistence = int(report.get("persistence") or self.settings.policy.persistence)
            if ev is not None:
                self._record_model(model, version, report, ev, persistence, now, rows)
            slo = report["slo"]
            for what, violated, value, threshold in (
                ("latency", slo["latency_violated"], slo["p99_latency_s"], slo["p99_latency_threshold_s"]),
                ("errors", slo["errors_violated"], slo["error_rate"], slo["error_rate_threshold"]),
            ):
                if threshold is None:
                    continue
                label = "p99 latency" if what == "latency" else "error rate"
                state = self._observe(
                    _model_key("slo_" + what, model, version), violated, persistence, now,
                    {"kind": "slo_" + what, "model": model, "version": version, "value": value, "threshold": threshold,
                     "firing": f"{model} v{version}: {label} {value:.4g} is over the SLO {threshold:.4g}"
                     if value is not None else "",
                     "resolved": f"{model} v{version}: {label} back within the SLO {threshold:.4g}"},
                )  # fmt: skip
                slo[f"{what}_state"] = state
                if value is not None:
                    rows.append(
                        (
                            now,
                            model,
                            version,
                            "",
                            "model",
                            f"slo_{what}",
                            value,
                            threshold,
                            None if violated is None else int(violated),
                            int(slo["requests"] or 0),
                            None,
                            None,
                        )
                    )
            self.latest[(model, version)] = report
            self.store.save_latest(model, version, now, report)
        self.store.add_evaluations(rows, now)
        self.store.save_states((k, t.state, t.streak, t.since) for k, t in self.trackers.items())
        self.last_evaluation = now
        self.evaluations += 1
        for listener in self.evaluation_listeners:
            listener()

    def _record_model(
        self,
        model: str,
        version: str,
        report: dict[str, Any],
        ev: ModelEvaluation,
        persistence: int,
        now: float,
        rows: list[Row],
    ) -> None:
        by_name = {f["name"]: f for f in report["features"]}
        for f in ev.features:
            if f.samples == 0 and f.verdict is None:
                by_name[f.name]["state"] = self._tracker(_model_key("feature", model, version, f.role, f.name)).state
                continue
            for name, m in f.measures.items():
                rows.append(
                    (
                        now,
                        model,
                        version,
                        f.name,
                        f.role,
                        name,
                        m.value,
                        m.threshold,
                        None if m.drifted is None else int(m.drifted),
                        f.samples,
                        ev.window_start,
                        ev.window_end,
                    )
                )
            state = self._observe(
                _model_key("feature", model, version, f.role, f.name), f.verdict, persistence, now,
                {"kind": f"{f.role}_drift", "model": model, "version": version, "feature": f.name, "role": f.role,
                 "samples": f.samples, "measures": {k: m.to_json() for k, m in f.measures.items()},
                 "firing": f"{model} v{version} {f.role} '{f.name}' drifted: {_crossed(f)} (N={f.samples})",
                 "resolved": f"{model} v{version} {f.role} '{f.name}' stable again (N={f.samples})"},
            )  # fmt: skip
            by_name[f.name]["state"] = state
        inputs = [f for f in report["features"] if f["role"] == "input"]
        drifted_states = sum(1 for f in inputs if f.get("state") == "drifted")
        report["drifted_state_share"] = drifted_states / len(inputs) if inputs else None
        outputs = [f for f in report["features"] if f["role"] == "output"]
        report["prediction_drift_state"] = (
            ("drifted" if any(f.get("state") == "drifted" for f in outputs) else "ok") if outputs else None
        )
        share = ev.drifted_share
        report["dataset_state"] = self._observe(
            _model_key("dataset", model, version), ev.dataset_verdict, persistence, now,
            {"kind": "dataset_drift", "model": model, "version": version, "drifted_share": share,
             "threshold": report["drift_share_threshold"],
             "firing": f"{model} v{version}: {share or 0:.0%} of input features drifted "
             f"(threshold {report['drift_share_threshold']:.0%})",
             "resolved": f"{model} v{version}: dataset drift cleared ({share or 0:.0%} of inputs drifted)"},
        )  # fmt: skip
        if share is not None:
            rows.append(
                (
                    now,
                    model,
                    version,
                    "",
                    "model",
                    "drifted_share",
                    share,
                    report["drift_share_threshold"],
                    None if ev.dataset_verdict is None else int(ev.dataset_verdict),
                    ev.rows,
                    ev.window_start,
                    ev.window_end,
                )
            )

    # ---------------------------------------------------------------- cycles

    async def cycle(self, *, include_open: bool = False) -> dict[tuple[str, str], tuple[dict[str, Any], Any]]:
        await self.poll()
        results = await asyncio.to_thread(self.evaluate, include_open=include_open)
        self.record(results)
        return results

    async def run_forever(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            started = time.monotonic()
            try:
                await self.cycle()
            except Exception:  # one bad cycle must not end the monitor
                log.exception("monitor cycle failed")
            remaining = self.settings.interval_s - (time.monotonic() - started)
            try:
                await asyncio.wait_for(stop.wait(), timeout=max(0.0, remaining))
            except TimeoutError:
                pass

    def once_document(self, results: dict[tuple[str, str], tuple[dict[str, Any], Any]]) -> dict[str, Any]:
        """``serve monitor --once --format json``: the per-evaluation verdicts, no persistence applied."""
        models = []
        for (_, _), (report, _) in sorted(results.items()):
            slim = {k: v for k, v in report.items() if k not in ("features", "replicas")}
            slim["features"] = [{k: v for k, v in f.items() if k not in ("view", "state")} for f in report["features"]]
            models.append(slim)
        return {
            "generated_at": self.clock(),
            "servers": [s.to_json() for s in self.servers.values()],
            "discovery": [t.to_json() for t in self.discovery.targets],
            "models": models,
        }

    def close(self) -> None:
        self.store.close()


def _crossed(f: FeatureResult) -> str:
    hits = []
    for k, m in f.measures.items():
        if m.drifted and m.threshold is not None:
            noise = (
                f" and its no-drift ceiling {m.noise.ceiling:.3g}" if m.noise and m.noise.ceiling > m.threshold else ""
            )
            hits.append(f"{k} {m.value:.3g} ≥ threshold {m.threshold:.3g}{noise}")
    return ", ".join(hits) or "threshold crossed"
