"""Triton's metric names (``nv_*``, PROTOCOL.md §6) beside ours, for dashboards built for Triton.

Values are kept in ordinary prometheus_client Counters and Gauges, registered on a private
registry so that they stay multiprocess-capable; ``BareNames`` re-exposes them on the scraped
registry under Triton's exact names. Triton's C++ counters carry no ``_total`` suffix and
prometheus_client's exposition adds one to every counter, so the counters are re-emitted as
untyped families (a ``counter`` TYPE line would be renamed too); PromQL's ``rate()`` does not
look at the type.

Semantics follow Triton: a request counts once whatever its rows; ``nv_inference_count`` and
``nv_inference_exec_count`` count rows and executions of successful batches; durations are
cumulative integer microseconds of successful requests, and each request is charged its whole
batch's compute phases.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

LABELS = ("model", "version")
REASONS = ("REJECTED", "CANCELED", "BACKEND", "OTHER")

# Our outcome label -> Triton's failure reason. Triton answers both a full queue and a queue
# timeout from its scheduler as REJECTED; everything it cannot place is OTHER.
_REASON = {"rejected": "REJECTED", "timeout": "REJECTED", "cancelled": "CANCELED", "model_error": "BACKEND"}


def failure_reason(outcome: str) -> str:
    return _REASON.get(outcome, "OTHER")


class TritonModelMetrics:
    """The nv_* children of one model version, resolved once (label lookups cost on the hot path)."""

    __slots__ = (
        "success", "failure", "count", "exec_count", "pending", "request_us", "queue_us",
        "input_us", "infer_us", "output_us", "load_secs",
    )  # fmt: skip

    def __init__(self, metrics: TritonCompatMetrics, model: str, version: str) -> None:
        self.success = metrics.success.labels(model, version)
        self.failure = {reason: metrics.failure.labels(model, version, reason) for reason in REASONS}
        self.count = metrics.count.labels(model, version)
        self.exec_count = metrics.exec_count.labels(model, version)
        self.pending = metrics.pending.labels(model, version)
        self.request_us = metrics.request_us.labels(model, version)
        self.queue_us = metrics.queue_us.labels(model, version)
        self.input_us = metrics.input_us.labels(model, version)
        self.infer_us = metrics.infer_us.labels(model, version)
        self.output_us = metrics.output_us.labels(model, version)
        self.load_secs = metrics.load_secs.labels(model, version)


class TritonCompatMetrics:
    def __init__(self, registry: CollectorRegistry, *, host_metrics: bool = True) -> None:
        # Never scraped itself: BareNames renames what it holds.
        self.source = CollectorRegistry()
        r = self.source

        def counter(name: str, help_text: str, labels: tuple[str, ...] = LABELS) -> Counter:
            return Counter(name, help_text, labels, registry=r)

        self.success = counter("nv_inference_request_success", "Number of successful inference requests")
        self.failure = counter(
            "nv_inference_request_failure", "Number of failed inference requests", (*LABELS, "reason")
        )
        self.count = counter("nv_inference_count", "Number of inferences performed (rows)")
        self.exec_count = counter("nv_inference_exec_count", "Number of model executions performed")
        self.request_us = counter(
            "nv_inference_request_duration_us", "Cumulative inference request duration in microseconds"
        )
        self.queue_us = counter(
            "nv_inference_queue_duration_us", "Cumulative inference queuing duration in microseconds"
        )
        self.input_us = counter(
            "nv_inference_compute_input_duration_us", "Cumulative compute input duration in microseconds"
        )
        self.infer_us = counter(
            "nv_inference_compute_infer_duration_us", "Cumulative compute inference duration in microseconds"
        )
        self.output_us = counter(
            "nv_inference_compute_output_duration_us", "Cumulative compute output duration in microseconds"
        )
        self.pending = Gauge(
            "nv_inference_pending_request_count",
            "Number of requests waiting in the queue",
            LABELS,
            registry=r,
            multiprocess_mode="livesum",
        )
        self.load_secs = Gauge(
            "nv_model_load_duration_secs",
            "Model load time in seconds",
            LABELS,
            registry=r,
            multiprocess_mode="livemax",
        )
        registry.register(BareNames(self.source))
        if host_metrics:
            registry.register(HostCpuCollector())

    def model(self, model: str, version: str) -> TritonModelMetrics:
        # Creating the children exposes every series at 0 from the moment the model loads, as Triton does.
        return TritonModelMetrics(self, model, version)


class BareNames(Collector):
    """Re-exposes a registry's counters without the ``_total`` suffix and without ``_created``."""

    def __init__(self, source: Collector) -> None:
        self._source = source

    def collect(self) -> Iterable[Metric]:
        for family in self._source.collect():
            yield bare_counter(family) if family.type == "counter" else family


def bare_counter(family: Metric) -> Metric:
    """A counter family as Triton names it: untyped, without ``_total`` and ``_created``."""
    bare = Metric(family.name, family.documentation, "unknown")
    total = family.name + "_total"
    for sample in family.samples:
        if sample.name == total:
            bare.add_sample(family.name, sample.labels, sample.value)
    return bare


class HostCpuCollector(Collector):
    """nv_cpu_utilization and nv_cpu_memory_*_bytes from /proc, like Triton's CPU metrics (Linux only).

    Utilization is the busy share of all cores between two scrapes (since boot at the first).
    """

    def __init__(self, proc: Path = Path("/proc")) -> None:
        self._proc = proc
        self._last: tuple[int, int] | None = None  # (busy, total) jiffies at the previous scrape

    def collect(self) -> Iterator[Metric]:
        jiffies = self._cpu_jiffies()
        if jiffies is not None:
            busy, total = jiffies
            last_busy, last_total = self._last or (0, 0)
            self._last = jiffies
            elapsed = total - last_total
            utilization = (busy - last_busy) / elapsed if elapsed > 0 else 0.0
            yield GaugeMetricFamily("nv_cpu_utilization", "CPU utilization rate [0.0 - 1.0]", utilization)
        memory = self._memory_bytes()
        if memory is not None:
            total, used = memory
            yield GaugeMetricFamily("nv_cpu_memory_total_bytes", "CPU total memory (RAM) in bytes", total)
            yield GaugeMetricFamily("nv_cpu_memory_used_bytes", "CPU used memory (RAM) in bytes", used)

    def _cpu_jiffies(self) -> tuple[int, int] | None:
        try:
            first = (self._proc / "stat").read_text().split("\n", 1)[0].split()
        except OSError:
            return None
        if not first or first[0] != "cpu":
            return None
        values = [int(v) for v in first[1:9]]  # user nice system idle iowait irq softirq steal
        idle = values[3] + values[4]
        total = sum(values)
        return total - idle, total

    def _memory_bytes(self) -> tuple[int, int] | None:
        fields: dict[str, int] = {}
        try:
            for line in (self._proc / "meminfo").read_text().splitlines():
                key, _, rest = line.partition(":")
                if key in ("MemTotal", "MemAvailable"):
                    fields[key] = int(rest.split()[0]) * 1024  # the file says kB and means KiB
        except (OSError, ValueError, IndexError):
            return None
        if len(fields) != 2:
            return None
        return fields["MemTotal"], fields["MemTotal"] - fields["MemAvailable"]
