"""Latency and error SLOs per model version from the servers' Prometheus ``/metrics``.

Read: ``serve_request_duration_seconds`` (histogram; labels model, version, protocol,
outcome) and ``serve_requests_total{outcome}``. Each poll stores a cumulative snapshot per
server; over the horizon the monitor takes each server's increase (a counter that went
down means the process restarted: the increase is then its value since the restart), sums
the servers, and reads the p99 from the summed buckets by linear interpolation inside the
bucket, as PromQL's ``histogram_quantile`` does. Latency is over successful requests;
the error rate counts server-side failures (``ERROR_OUTCOMES``) over all requests. A rollout's
mirrored copies (``role="shadow"``) answered no client and are left out.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

ERROR_OUTCOMES = frozenset({"error", "model_error", "timeout", "rejected", "unavailable"})


@dataclass(slots=True)
class ModelCounters:
    requests: float = 0.0
    errors: float = 0.0
    buckets: dict[float, float] = field(default_factory=dict)  # le → cumulative count, successful requests

    def minus(self, earlier: ModelCounters) -> ModelCounters:
        if self.requests < earlier.requests or any(self.buckets.get(le, 0.0) < c for le, c in earlier.buckets.items()):
            return self  # reset: everything counted since the restart
        return ModelCounters(
            self.requests - earlier.requests,
            self.errors - earlier.errors,
            {le: c - earlier.buckets.get(le, 0.0) for le, c in self.buckets.items()},
        )

    def plus(self, other: ModelCounters) -> ModelCounters:
        buckets = dict(self.buckets)
        for le, c in other.buckets.items():
            buckets[le] = buckets.get(le, 0.0) + c
        return ModelCounters(self.requests + other.requests, self.errors + other.errors, buckets)


@dataclass(frozen=True, slots=True)
class SloFigures:
    """One model version over the horizon, all replicas."""

    requests: float
    error_rate: float | None  # None: no request
    p99_latency_s: float | None  # None: no successful request


Snapshot = dict[tuple[str, str], ModelCounters]


def parse_metrics(text: str) -> Snapshot:
    out: Snapshot = {}
    # Matched on sample names: parsers differ on whether a counter's family keeps its _total suffix.
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.labels.get("role") == "shadow":
                continue
            if s.name == "serve_requests_total":
                c = out.setdefault((s.labels.get("model", ""), s.labels.get("version", "")), ModelCounters())
                c.requests += s.value
                if s.labels.get("outcome") in ERROR_OUTCOMES:
                    c.errors += s.value
            elif s.name == "serve_request_duration_seconds_bucket" and s.labels.get("outcome") == "success":
                c = out.setdefault((s.labels.get("model", ""), s.labels.get("version", "")), ModelCounters())
                le = float(s.labels["le"])
                c.buckets[le] = c.buckets.get(le, 0.0) + s.value
    return out


def quantile(buckets: Mapping[float, float], q: float) -> float | None:
    """``histogram_quantile`` over cumulative buckets; None without observations."""
    if not buckets:
        return None
    bounds = sorted(buckets)
    total = buckets[bounds[-1]]
    if total <= 0:
        return None
    rank = q * total
    prev_le, prev_c = 0.0, 0.0
    for le in bounds:
        c = buckets[le]
        if c >= rank:
            if math.isinf(le):
                return prev_le  # as Prometheus: the highest finite bound
            if c == prev_c:
                return le
            return prev_le + (le - prev_le) * (rank - prev_c) / (c - prev_c)
        prev_le, prev_c = le, c
    return prev_le


class SloTracker:
    """Cumulative snapshots per server over the horizon, and the SLO figures from them."""

    def __init__(self, horizon_s: float) -> None:
        self.horizon_s = horizon_s
        self._snapshots: dict[str, deque[tuple[float, Snapshot]]] = {}

    def add(self, server: str, t: float, snapshot: Snapshot) -> None:
        history = self._snapshots.setdefault(server, deque())
        history.append((t, snapshot))
        # Keep one snapshot at or before the horizon's start, as the base of the increase.
        while len(history) > 2 and history[1][0] <= t - self.horizon_s:
            history.popleft()

    def increase(self, model: str, version: str) -> ModelCounters:
        total = ModelCounters()
        for history in self._snapshots.values():
            if not history:
                continue
            last = history[-1][1].get((model, version))
            if last is None:
                continue
            first = history[0][1].get((model, version)) if len(history) > 1 else None
            total = total.plus(last.minus(first) if first is not None else last)
        return total

    def figures(self, model: str, version: str) -> SloFigures:
        inc = self.increase(model, version)
        return SloFigures(
            inc.requests, inc.errors / inc.requests if inc.requests > 0 else None, quantile(inc.buckets, 0.99)
        )
