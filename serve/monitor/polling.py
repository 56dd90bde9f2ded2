"""Polling the replicas: find them again (discovery.py), ask each for its models, statistics and metrics.

Each cycle first resolves the ``--server`` names again: a replica that appears is added; one that is no
longer among the addresses is marked stale, no longer polled, and forgotten once it has been gone for the
evaluation horizon (by then none of its windows count). Replicas are polled concurrently, each in a worker
thread (plain blocking HTTP with a timeout: fetch.py); one that fails or times out is marked stale with its
error, keeps what it sent before (that traffic happened), and is tried again on the next cycle. A version
without a local baseline uses the one its replicas bin against, fetched from them once per hash (baselines.py
checks it as it checks files). Each model's rollout status (``GET …/rollout``) is read too, so that the report
can compare the versions of a rollout side by side (rollout_compare.py), with or without ``--rollouts``.
"""

from __future__ import annotations

import asyncio
import logging
import urllib.error
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypedDict, cast

import orjson

from serve.ground_truth.document import parse_document
from serve.input_stats.served_baseline import BASELINE_SHA256_HEADER, MODEL_SHA256_HEADER
from serve.monitor.baselines import BaselineRegistry
from serve.monitor.collector import StatsCollector, StatsDocument
from serve.monitor.config import MonitorSettings
from serve.monitor.discovery import Discovery, HostsFile, Resolver, system_resolver, tls_server_name
from serve.monitor.fetch import error_message, http_get_or_post, http_response
from serve.monitor.performance import PerformanceCollector
from serve.monitor.slo import SloTracker, parse_metrics
from serve.rollout.documents import StatusDocument

log = logging.getLogger("serve.monitor")

# A replica that refused to show a rollout (a token without the admin scope) is asked again only after this
# long: each refusal is an audit line on the server.
ROLLOUT_DENIED_RETRY_S = 600.0


class ServerJson(TypedDict):
    url: str
    target: str
    up: bool
    stale: bool
    last_ok: float | None
    last_error: str | None
    consecutive_failures: int
    vanished_at: float | None
    models: list[str]
    without_statistics: list[str]
    rollout_problems: dict[str, str]  # model → why its rollout could not be read (e.g. no admin scope)


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
    rollouts: dict[str, StatusDocument] = field(default_factory=dict)  # model → its status, where it has a plan
    rollout_problems: dict[str, str] = field(default_factory=dict)  # model → why its rollout could not be read

    @property
    def tls_name(self) -> str | None:
        return tls_server_name(self.url, self.target or self.url)

    def to_json(self) -> ServerJson:
        return {
            "url": self.url, "target": self.target or self.url, "up": self.up, "stale": self.stale,
            "last_ok": self.last_ok, "last_error": self.last_error, "consecutive_failures": self.failures,
            "vanished_at": self.vanished_at,
            "models": [f"{m}:{v}" for m, v in self.models], "without_statistics": self.no_stats,
            "rollout_problems": dict(self.rollout_problems),
        }  # fmt: skip


def default_resolver(settings: MonitorSettings) -> Resolver:
    return HostsFile(settings.hosts_file) if settings.hosts_file is not None else system_resolver


class Poller:
    """The replicas (``servers``, by URL) and what polling them brought: statistics into ``collector``,
    request metrics into ``slo``, baselines served by replicas into ``registry``."""

    def __init__(
        self,
        settings: MonitorSettings,
        collector: StatsCollector,
        registry: BaselineRegistry,
        slo: SloTracker,
        clock: Callable[[], float],
        resolver: Resolver | None = None,
        performance: PerformanceCollector | None = None,
    ) -> None:
        self.settings = settings
        self.collector = collector
        self.performance = performance or PerformanceCollector()
        self.registry = registry
        self.slo = slo
        self.clock = clock
        self.discovery = Discovery(settings.servers, resolver or default_resolver(settings))
        # Addresses are known before the first poll; names join when first resolved.
        self.servers: dict[str, ServerStatus] = {
            url: ServerStatus(url, target=target) for url, target in self.discovery.known().items()
        }
        self._asked_why: set[tuple[str, str, str, str]] = set()  # (url, model, version, instance) asked for a reason
        self._rollouts_denied: dict[str, float] = {}  # replica URL → when it refused to show a rollout

    def _poll_server(self, status: ServerStatus) -> None:
        timeout = self.settings.timeout_s
        token = self.settings.token
        name = status.tls_name
        index = orjson.loads(http_get_or_post(status.url + "/v2/repository/index", timeout, b"{}", token, name))
        models = sorted(
            {(r["name"], str(r["version"])) for r in index if r.get("state") == "READY" and r.get("version")}
        )
        no_stats = []
        for model, version in models:
            quoted = urllib.parse.quote(model, safe="")
            base = f"{status.url}/v2/models/{quoted}/versions/{version}/input-stats"
            since = self.collector.since(status.url, model, version)
            try:
                document = orjson.loads(http_get_or_post(f"{base}?since={since}", timeout, token=token, tls_name=name))
            except urllib.error.HTTPError as exc:
                if exc.code == 404:
                    no_stats.append(f"{model}:{version}")
                    continue
                raise
            if self.collector.ingest(status.url, document):
                document = orjson.loads(http_get_or_post(f"{base}?since=0", timeout, token=token, tls_name=name))
                self.collector.ingest(status.url, document)
            self._baseline_from(status, model, version, document)
        self._poll_rollouts(status, sorted({model for model, _ in models}))
        self._poll_performance(status, sorted({model for model, _ in models}))
        try:
            metrics = http_get_or_post(status.url + "/metrics", timeout, token=token, tls_name=name).decode()
            self.slo.add(status.url, self.clock(), parse_metrics(metrics))
        except (OSError, ValueError) as exc:
            log.debug("no metrics from %s: %s", status.url, exc)
        status.models, status.no_stats = models, no_stats

    def _poll_rollouts(self, status: ServerStatus, models: list[str]) -> None:
        """Each model's rollout status; a server without the rollout API (404), or a token without the admin
        scope the route needs (401/403), leaves the model out, the latter with a reason for the report."""
        denied = self._rollouts_denied.get(status.url)
        if denied is not None and self.clock() - denied < ROLLOUT_DENIED_RETRY_S:
            return  # the reasons stay in status.rollout_problems
        rollouts: dict[str, StatusDocument] = {}
        problems: dict[str, str] = {}
        for model in models:
            url = f"{status.url}/v2/models/{urllib.parse.quote(model, safe='')}/rollout"
            try:
                document = orjson.loads(http_get_or_post(url, self.settings.timeout_s, None, self.settings.token,
                                                         status.tls_name))  # fmt: skip
            except urllib.error.HTTPError as exc:
                if exc.code in (401, 403):  # the token's scope: the same for every model
                    self._rollouts_denied[status.url] = self.clock()
                    reason = f"its rollout cannot be read: {error_message(exc)} (the admin scope is needed)"
                    status.rollouts, status.rollout_problems = {}, dict.fromkeys(models, reason)
                    return
                if exc.code != 404:
                    problems[model] = f"its rollout cannot be read: {error_message(exc)}"
                continue
            except (OSError, ValueError) as exc:
                problems[model] = f"its rollout cannot be read: {getattr(exc, 'reason', exc)}"
                continue
            if isinstance(document, dict) and document.get("plan") is not None and document.get("routing"):
                rollouts[model] = cast(StatusDocument, document)  # a rollout status (serve/rollout/documents.py)
        status.rollouts, status.rollout_problems = rollouts, problems

    def _poll_performance(self, status: ServerStatus, models: list[str]) -> None:
        """Each model's performance document (labels joined to predictions); a server without the route (404)
        or a model that keeps no predictions (400) is left out."""
        for model in models:
            url = f"{status.url}/v2/models/{urllib.parse.quote(model, safe='')}/performance"
            try:
                data = http_get_or_post(url, self.settings.timeout_s, None, self.settings.token, status.tls_name)
                self.performance.ingest(status.url, parse_document(data))
            except urllib.error.HTTPError as exc:
                if exc.code not in (400, 404):
                    log.warning("performance of %s from %s: %s", model, status.url, error_message(exc))
            except (OSError, ValueError) as exc:
                log.warning("performance of %s from %s: %s", model, status.url, getattr(exc, "reason", exc))

    def _baseline_from(self, status: ServerStatus, model: str, version: str, document: StatsDocument) -> None:
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
            data, headers = http_response(
                address, self.settings.timeout_s, token=self.settings.token, tls_name=status.tls_name
            )
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                self.registry.note_server_reason(model, version, url, error_message(exc))
            else:
                log.warning("baseline from %s: %s; asking again next poll", address, error_message(exc))
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
                self.performance.forget(url)  # until now its last document counted: those labels were joined
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

    def model_keys(self) -> list[tuple[str, str]]:
        """Every model version polled or still holding windows."""
        keys = set(self.collector.models())
        for s in self.servers.values():
            keys.update(s.models)
        return sorted(keys)
