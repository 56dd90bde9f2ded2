"""Prometheus metrics: collectors on an injected registry, fed by the server's hooks.

- ``on_request`` (a RequestRecorder): every inference request's protocol, outcome and duration.
- ``on_timings`` (a TimingRecorder): the queue wait of every request that ran.
- ``observer_for`` (the repository's observer factory): every executed batch.
- ``on_state_change`` (the repository's hook): load state and load duration.
- ``refresh``: queue depth and batches in flight, read from the batchers before each scrape.

Multiprocess-ready: every serve_* metric is a plain Counter, Histogram or Gauge, which is what
prometheus_client's multiprocess mode aggregates; gauges name their ``multiprocess_mode``. No
gauge is a callback (those are not supported there): the two live gauges hold values that
``refresh`` sets, so in that mode each worker must call ``refresh`` on a timer for its share to
stay current. Process metrics describe the scraped process only, and in that mode the scrape
registry is built from MultiProcessCollector instead of this one.

Requests that name no loaded model version are counted under ``model=""``, ``version=""``:
the name is client input, and labelling by it would let any client create series without bound.
"""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from serve.batching.batcher import BatchObserver
from serve.batching.result import BatchResult
from serve.metrics.triton_compat import TritonCompatMetrics, TritonModelMetrics, failure_reason
from serve.repository.repository import READY, ModelVersion
from serve.settings import ServerSettings
from serve.types import InferRequest, InferResponse

MODEL_LABELS = ("model", "version")
UNKNOWN_MODEL = ("", "")


def batch_size_buckets(max_rows: int) -> tuple[float, ...]:
    """1, 2, 4, ... up to ``max_rows`` (included even when it is not a power of two)."""
    buckets: list[float] = []
    size = 1
    while size < max_rows:
        buckets.append(size)
        size *= 2
    buckets.append(max(1, max_rows))
    return tuple(buckets)


class _ModelSeries:
    """The children of one model version, resolved once: ``labels()`` costs on the hot path."""

    __slots__ = (
        "rows", "executions", "queue", "compute", "batch_size", "queue_depth", "in_flight", "ready", "load",
        "triton",
    )  # fmt: skip

    def __init__(self, metrics: PrometheusMetrics, model: str, version: str) -> None:
        self.rows = metrics.inference_rows.labels(model, version)
        self.executions = metrics.executions.labels(model, version)
        self.queue = metrics.queue_duration.labels(model, version)
        self.compute = metrics.compute_duration.labels(model, version)
        self.batch_size = metrics.batch_size.labels(model, version)
        self.queue_depth = metrics.queue_depth.labels(model, version)
        self.in_flight = metrics.in_flight.labels(model, version)
        self.ready = metrics.model_ready.labels(model, version)
        self.load = metrics.load_duration.labels(model, version)
        self.triton: TritonModelMetrics | None = (
            metrics.triton.model(model, version) if metrics.triton is not None else None
        )


class _ExecutionObserver:
    """A BatchObserver for one model version. Like Triton, only batches that succeeded are counted;
    a failed batch shows as its requests' ``model_error`` outcome."""

    def __init__(self, series: _ModelSeries) -> None:
        self._series = series

    def on_execution(
        self,
        batch_size: int,
        requests: int,
        compute_input_ns: int,
        compute_infer_ns: int,
        compute_output_ns: int,
        error: BaseException | None,
    ) -> None:
        if error is not None:
            return
        s = self._series
        s.executions.inc()
        s.rows.inc(batch_size)
        s.batch_size.observe(batch_size)
        s.compute.observe((compute_input_ns + compute_infer_ns + compute_output_ns) / 1e9)
        if s.triton is not None:
            s.triton.exec_count.inc()
            s.triton.count.inc(batch_size)


class PrometheusMetrics:
    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        latency_buckets_s: Sequence[float] | None = None,
        max_batch_size_bucket: int = 1024,
        triton_compat: bool = False,
        process_metrics: bool = True,
    ) -> None:
        self.registry = registry
        if latency_buckets_s is None:
            latency_buckets_s = ServerSettings().latency_buckets_s
        self.latency_buckets_s = latency = tuple(latency_buckets_s)
        self.batch_size_buckets = batch_size_buckets(max_batch_size_bucket)
        r = registry
        self.requests = Counter(
            "serve_requests",
            "Inference requests by protocol and outcome",
            (*MODEL_LABELS, "protocol", "outcome"),
            registry=r,
        )
        self.request_duration = Histogram(
            "serve_request_duration_seconds",
            "End-to-end inference request time inside the server",
            (*MODEL_LABELS, "protocol", "outcome"),
            registry=r,
            buckets=latency,
        )
        self.inference_rows = Counter(
            "serve_inference_rows",
            "Rows (first dimension) inferred by successful executions",
            MODEL_LABELS,
            registry=r,
        )
        self.executions = Counter("serve_executions", "Successful model executions (batches)", MODEL_LABELS, registry=r)
        self.queue_duration = Histogram(
            "serve_queue_duration_seconds",
            "Time a request that ran waited in the queue for its batch",
            MODEL_LABELS,
            registry=r,
            buckets=latency,
        )
        self.compute_duration = Histogram(
            "serve_compute_duration_seconds",
            "Time of one successful execution: gathering inputs, running the model, splitting outputs",
            MODEL_LABELS,
            registry=r,
            buckets=latency,
        )
        self.batch_size = Histogram(
            "serve_batch_size",
            "Rows per successful execution",
            MODEL_LABELS,
            registry=r,
            buckets=self.batch_size_buckets,
        )
        self.queue_depth = Gauge(
            "serve_queue_depth",
            "Requests waiting in the queue",
            MODEL_LABELS,
            registry=r,
            multiprocess_mode="livesum",
        )
        self.in_flight = Gauge(
            "serve_batches_in_flight",
            "Batches executing now",
            MODEL_LABELS,
            registry=r,
            multiprocess_mode="livesum",
        )
        # livemin: with several workers, a version is ready only where every live worker has it ready.
        self.model_ready = Gauge(
            "serve_model_ready",
            "1 if the model version is loaded and ready, else 0",
            MODEL_LABELS,
            registry=r,
            multiprocess_mode="livemin",
        )
        self.load_duration = Gauge(
            "serve_model_load_duration_seconds",
            "Time the last successful load of the model version took",
            MODEL_LABELS,
            registry=r,
            multiprocess_mode="livemax",
        )
        self.triton = TritonCompatMetrics(r) if triton_compat else None
        if process_metrics:
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
            GCCollector(registry=r)
        self._series: dict[tuple[str, str], _ModelSeries] = {}
        self._live: dict[tuple[str, str], ModelVersion] = {}  # versions whose batchers refresh() reads
        self._request_children: dict[tuple[str, str, str, str], tuple[Counter, Histogram]] = {}

    def _model_series(self, name: str, version: str) -> _ModelSeries:
        series = self._series.get((name, version))
        if series is None:
            series = self._series[(name, version)] = _ModelSeries(self, name, version)
        return series

    # ---- repository hooks --------------------------------------------------------------------
    def observer_for(self, model: ModelVersion) -> BatchObserver:
        """The repository's observer factory: called for every version it is about to start."""
        key = (model.name, model.version_str)
        self._live[key] = model
        return _ExecutionObserver(self._model_series(*key))

    def on_state_change(self, model: ModelVersion) -> None:
        key = (model.name, model.version_str)
        series = self._model_series(*key)
        if model.state == READY:
            self._live[key] = model
            series.ready.set(1)
            series.load.set(model.load_seconds)
            if series.triton is not None:
                series.triton.load_secs.set(model.load_seconds)
            return
        series.ready.set(0)
        if self._live.get(key) is model:
            del self._live[key]
            series.queue_depth.set(0)
            series.in_flight.set(0)
            if series.triton is not None:
                series.triton.pending.set(0)

    # ---- request hooks -----------------------------------------------------------------------
    def on_timings(self, model: ModelVersion, result: BatchResult) -> None:
        series = self._model_series(model.name, model.version_str)
        series.queue.observe(result.queue_ns / 1e9)
        t = series.triton
        if t is not None:
            t.queue_us.inc(result.queue_ns // 1000)
            t.input_us.inc(result.compute_input_ns // 1000)
            t.infer_us.inc(result.compute_infer_ns // 1000)
            t.output_us.inc(result.compute_output_ns // 1000)

    def on_request(
        self,
        model: ModelVersion | None,
        request: InferRequest,
        protocol: str,
        outcome: str,
        duration_s: float,
        response: InferResponse | None,
    ) -> None:
        name, version = (model.name, model.version_str) if model is not None else UNKNOWN_MODEL
        key = (name, version, protocol, outcome)
        children = self._request_children.get(key)
        if children is None:
            children = self._request_children[key] = (self.requests.labels(*key), self.request_duration.labels(*key))
        children[0].inc()
        children[1].observe(duration_s)
        if model is None or self.triton is None:
            return  # Triton counts per model only
        t = self._model_series(name, version).triton
        assert t is not None
        if outcome == "success":
            t.success.inc()
            t.request_us.inc(int(duration_s * 1e6))
        else:
            t.failure[failure_reason(outcome)].inc()

    # ---- scraping ----------------------------------------------------------------------------
    def refresh(self) -> None:
        """Copy the live queue depth and batches in flight of every loaded version into the gauges."""
        for key, model in self._live.items():
            batcher = model.batcher
            depth, running = (batcher.queue_depth, batcher.in_flight) if batcher is not None else (0, 0)
            series = self._series[key]
            series.queue_depth.set(depth)
            series.in_flight.set(running)
            if series.triton is not None:
                series.triton.pending.set(depth)

    def exposition(self, accept: str = "") -> tuple[bytes, str]:
        """The scrape body and its content type, in the format the ``Accept`` header asks for."""
        self.refresh()
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type
