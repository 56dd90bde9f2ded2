"""Prometheus metrics: collectors on an injected registry, fed by what the server observes.

- ``on_request`` (an Observer): every inference request's protocol, outcome, duration and,
  when it ran, its queue wait.
- ``on_execution`` (an Observer): every executed batch.
- ``changed`` (a repository VersionListener): load state and load duration. A version retired on
  purpose (its policy no longer chooses it, its model was unloaded) loses its gauges, so that
  ``serve_model_ready == 0`` means "should serve and does not" (a failed load) and the
  ServeModelNotReady alert fires on nothing else; its counters and histograms stay (what it did happened).
- ``refresh``: queue depth and batches in flight, read through ``queue_probe`` before each scrape.

Multiprocess-ready: every serve_* metric is a plain Counter, Histogram or Gauge, which is what
prometheus_client's multiprocess mode aggregates; gauges name their ``multiprocess_mode``. No
gauge is a callback (those are not supported there): the two live gauges hold values that
``refresh`` sets, so in that mode each worker must call ``refresh`` on a timer for its share to
stay current. Process metrics describe the scraped process only, and in that mode the scrape
registry is built from MultiProcessCollector instead of this one.

Requests that name no loaded model version are counted under ``model=""``, ``version=""``:
the name is client input, and labelling by it would let any client create series without bound.

The request and queue series carry the ``role`` of the rollout arm that answered (serve/rollout):
``""`` without a rollout, ``primary`` or ``candidate``, and ``shadow`` for mirrored copies that no
client sees. Client-facing queries select ``role!="shadow"``; shadow requests never enter a series of
another role, nor Triton's client-facing ``nv_inference_*`` counters. The ``serve_rollout_*`` gauges
are rollout_gauges.py's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from serve.events import Execution, Observer, RequestEvent, VersionKey
from serve.metrics.multiprocess import RETIRED, WorkerMetrics
from serve.metrics.rollout_gauges import RolloutGauges
from serve.metrics.triton_compat import HostCpuCollector, TritonCompatMetrics, TritonModelMetrics, failure_reason
from serve.repository.model_version import READY, LoadOutcome, ModelVersion, VersionListener
from serve.settings import ServerSettings

# (version, requests waiting, batches running) for every version that is serving.
QueueProbe = Callable[[], Iterable[tuple[VersionKey, int, int]]]

MODEL_LABELS = ("model", "version")
UNKNOWN_MODEL = ("", "")


BucketsName = Literal["latency", "batch_size"]
GaugeMode = Literal["all", "livesum", "livemin", "livemax", "livemostrecent"]  # the multiprocess_modes used here


@dataclass(frozen=True, slots=True)
class Family:
    """One serve_* metric family: the PrometheusMetrics attribute that holds it, and its declaration."""

    attribute: str
    kind: type[Counter | Histogram | Gauge]
    name: str
    documentation: str
    labels: tuple[str, ...] = MODEL_LABELS
    buckets: BucketsName | None = None  # histograms: which of the configured bucket sets
    multiprocess_mode: GaugeMode = "all"  # gauges: how the workers' values combine

    def declare(
        self, registry: CollectorRegistry, buckets: Mapping[BucketsName, Sequence[float]]
    ) -> Counter | Histogram | Gauge:
        if self.kind is Histogram:
            assert self.buckets is not None
            return Histogram(
                self.name, self.documentation, self.labels, registry=registry, buckets=buckets[self.buckets]
            )
        if self.kind is Gauge:
            return Gauge(
                self.name, self.documentation, self.labels, registry=registry, multiprocess_mode=self.multiprocess_mode
            )
        return Counter(self.name, self.documentation, self.labels, registry=registry)


ROLE_LABELS = (*MODEL_LABELS, "role")  # the arm of a rollout: serve/events.py RequestEvent.role
REQUEST_LABELS = (*ROLE_LABELS, "protocol", "outcome")
# In declaration (and so exposition) order.
FAMILIES = (
    Family("requests", Counter, "serve_requests", "Inference requests by protocol and outcome", REQUEST_LABELS),
    Family("request_duration", Histogram, "serve_request_duration_seconds",
           "End-to-end inference request time inside the server", REQUEST_LABELS, buckets="latency"),
    Family("inference_rows", Counter, "serve_inference_rows",
           "Rows (first dimension) inferred by successful executions"),
    Family("executions", Counter, "serve_executions", "Successful model executions (batches)"),
    Family("queue_duration", Histogram, "serve_queue_duration_seconds",
           "Time a request that ran waited in the queue for its batch", ROLE_LABELS, buckets="latency"),
    Family("compute_duration", Histogram, "serve_compute_duration_seconds",
           "Time of one successful execution: gathering inputs, running the model, splitting outputs",
           buckets="latency"),
    Family("batch_size", Histogram, "serve_batch_size", "Rows per successful execution", buckets="batch_size"),
    Family("queue_depth", Gauge, "serve_queue_depth", "Requests waiting in the queue", multiprocess_mode="livesum"),
    Family("in_flight", Gauge, "serve_batches_in_flight", "Batches executing now", multiprocess_mode="livesum"),
    # livemin: with several workers, a version is ready only where every live worker has it ready.
    Family("model_ready", Gauge, "serve_model_ready", "1 if the model version is loaded and ready, else 0",
           multiprocess_mode="livemin"),
    Family("load_duration", Gauge, "serve_model_load_duration_seconds",
           "Time the last successful load of the model version took", multiprocess_mode="livemax"),
    Family("load_failures", Counter, "serve_model_load_failures",
           "Loads of a model version that failed (version empty: the model's config); what served before serves on"),
)  # fmt: skip


def batch_size_buckets(max_rows: int) -> tuple[float, ...]:
    """1, 2, 4, ... up to ``max_rows`` (included even when it is not a power of two)."""
    buckets: list[float] = []
    size = 1
    while size < max_rows:
        buckets.append(size)
        size *= 2
    buckets.append(max(1, max_rows))
    return tuple(buckets)


_RequestSeries = tuple[Counter, Histogram, Histogram | None]


class _ModelSeries:
    """The children of one model version, resolved once: ``labels()`` costs on the hot path."""

    __slots__ = (
        "rows", "executions", "compute", "batch_size", "queue_depth", "in_flight", "triton",
    )  # fmt: skip

    def __init__(self, metrics: PrometheusMetrics, model: str, version: str) -> None:
        self.rows = metrics.inference_rows.labels(model, version)
        self.executions = metrics.executions.labels(model, version)
        self.compute = metrics.compute_duration.labels(model, version)
        self.batch_size = metrics.batch_size.labels(model, version)
        self.queue_depth = metrics.queue_depth.labels(model, version)
        self.in_flight = metrics.in_flight.labels(model, version)
        # Not readiness and load time: only ``changed`` sets those, so that a request observed after its
        # version retired cannot bring back a "not ready" series (PrometheusMetrics._retire).
        self.triton: TritonModelMetrics | None = (
            metrics.triton.model(model, version) if metrics.triton is not None else None
        )


class PrometheusMetrics(Observer, VersionListener):
    # Declared by FAMILIES, one attribute each.
    requests: Counter
    request_duration: Histogram
    inference_rows: Counter
    executions: Counter
    queue_duration: Histogram
    compute_duration: Histogram
    batch_size: Histogram
    queue_depth: Gauge
    in_flight: Gauge
    model_ready: Gauge
    load_duration: Gauge
    load_failures: Counter

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        latency_buckets_s: Sequence[float] | None = None,
        max_batch_size_bucket: int = 1024,
        triton_compat: bool = False,
        process_metrics: bool = True,
        multiprocess_dir: Path | None = None,
    ) -> None:
        self.registry = registry
        self._shared_files = multiprocess_dir is not None
        # With several workers, scrapes read every worker's files (multiprocess.py), not this registry.
        self._scraped = registry
        if multiprocess_dir is not None:
            self._scraped = CollectorRegistry()
            self._scraped.register(WorkerMetrics(multiprocess_dir))
            if triton_compat:
                self._scraped.register(HostCpuCollector())
            process_metrics = False
        if latency_buckets_s is None:
            latency_buckets_s = ServerSettings().latency_buckets_s
        self.latency_buckets_s = latency = tuple(latency_buckets_s)
        self.batch_size_buckets = batch_size_buckets(max_batch_size_bucket)
        buckets: dict[BucketsName, tuple[float, ...]] = {"latency": latency, "batch_size": self.batch_size_buckets}
        for family in FAMILIES:
            setattr(self, family.attribute, family.declare(registry, buckets))
        self.triton = TritonCompatMetrics(registry) if triton_compat else None
        if process_metrics:
            ProcessCollector(registry=registry)
            PlatformCollector(registry=registry)
            GCCollector(registry=registry)
        self._series: dict[tuple[str, str], _ModelSeries] = {}
        # (model, version, role, protocol, outcome) -> its request counter and histogram and, for a loaded
        # version, its (model, version, role) queue histogram: one lookup per request.
        self._request_children: dict[tuple[str, str, str, str, str], _RequestSeries] = {}
        self.rollouts = RolloutGauges(registry)
        self.queue_probe: QueueProbe | None = None

    def _model_series(self, name: str, version: str) -> _ModelSeries:
        series = self._series.get((name, version))
        if series is None:
            series = self._series[(name, version)] = _ModelSeries(self, name, version)
        return series

    # ---- repository listener ---------------------------------------------------------------
    def changed(self, version: ModelVersion) -> None:
        labels = (version.name, version.version_str)
        if version.retired:
            self._retire(*labels)
            return
        ready = self.model_ready.labels(*labels)
        if version.state == READY:
            ready.set(1)
            self.load_duration.labels(*labels).set(version.load_seconds)
            series = self._model_series(*labels)
            if series.triton is not None:
                series.triton.load_secs.set(version.load_seconds)
            return
        ready.set(0)  # loading, unloading, or failed to load: not serving what it should

    def _retire(self, name: str, version: str) -> None:
        """Drop the gauges of a version unloaded on purpose: it is gone, not failing."""
        series = self._series.pop((name, version), None)
        gauges = [self.model_ready, self.load_duration, self.queue_depth, self.in_flight]
        if self.triton is not None:
            gauges += [self.triton.pending, self.triton.load_secs]
        if not self._shared_files:
            for gauge in gauges:
                gauge.remove(name, version)
            return
        # prometheus_client cannot delete a value from the workers' shared files (remove() only warns):
        # the merged scrape drops the RETIRED ones (multiprocess.py), and live sums read 0 as before.
        self.model_ready.labels(name, version).set(RETIRED)
        self.load_duration.labels(name, version).set(RETIRED)
        if series is not None:
            series.queue_depth.set(0)
            series.in_flight.set(0)
            if series.triton is not None:
                series.triton.pending.set(0)
                series.triton.load_secs.set(RETIRED)

    def load_finished(self, outcome: LoadOutcome) -> None:
        if outcome.error:
            self.load_failures.labels(outcome.name, "").inc()
        for version in outcome.failed:
            self.load_failures.labels(version.name, version.version_str).inc()

    # ---- observer ----------------------------------------------------------------------------
    def on_execution(self, execution: Execution) -> None:
        # Like Triton, only batches that succeeded are counted; a failed batch shows as its
        # requests' model_error outcome.
        if execution.error is not None:
            return
        s = self._model_series(execution.key.name, execution.key.version)
        s.executions.inc()
        s.rows.inc(execution.rows)
        s.batch_size.observe(execution.rows)
        s.compute.observe(execution.compute_ns / 1e9)
        if s.triton is not None:
            s.triton.exec_count.inc()
            s.triton.count.inc(execution.rows)

    def on_request(self, event: RequestEvent) -> None:
        key = event.key
        labels = (key.name, key.version, event.role, event.protocol, event.outcome)
        children = self._request_children.get(labels)
        if children is None:
            children = self._request_children[labels] = (
                self.requests.labels(*labels),
                self.request_duration.labels(*labels),
                self.queue_duration.labels(*labels[:3]) if key.name else None,
            )
        children[0].inc()
        # A traced request leaves its trace id as the bucket's exemplar (OpenMetrics scrapes show it;
        # prometheus_client's multiprocess files, under --workers, keep none).
        exemplar = {"trace_id": event.trace_id} if event.traceparent else None
        children[1].observe(event.duration_ns / 1e9, exemplar)
        if children[2] is None:
            return  # the request named no loaded version: nothing is counted per model
        timings = event.timings
        if timings is not None:
            children[2].observe(timings.queue_ns / 1e9, exemplar)
        if self.triton is None or event.role == "shadow":
            return  # Triton's counters count what clients were answered
        t = self._model_series(key.name, key.version).triton
        assert t is not None
        if event.outcome != "success":
            t.failure[failure_reason(event.outcome)].inc()
            return
        t.success.inc()
        t.request_us.inc(event.duration_ns // 1000)
        if timings is not None:
            t.queue_us.inc(timings.queue_ns // 1000)
            t.input_us.inc(timings.compute_input_ns // 1000)
            t.infer_us.inc(timings.compute_infer_ns // 1000)
            t.output_us.inc(timings.compute_output_ns // 1000)

    # ---- scraping ----------------------------------------------------------------------------
    def refresh(self) -> None:
        """Copy the live queue depth and batches in flight of every serving version into the gauges."""
        if self.queue_probe is None:
            return
        seen: set[tuple[str, str]] = set()
        for key, depth, running in self.queue_probe():
            series = self._model_series(key.name, key.version)
            seen.add((key.name, key.version))
            series.queue_depth.set(depth)
            series.in_flight.set(running)
            if series.triton is not None:
                series.triton.pending.set(depth)
        for labels, series in self._series.items():
            if labels not in seen:  # unloaded since the last scrape
                series.queue_depth.set(0)
                series.in_flight.set(0)
                if series.triton is not None:
                    series.triton.pending.set(0)

    def exposition(self, accept: str = "") -> tuple[bytes, str]:
        """The scrape body and its content type, in the format the ``Accept`` header asks for."""
        self.refresh()
        encoder, content_type = choose_encoder(accept)
        return encoder(self._scraped), content_type
