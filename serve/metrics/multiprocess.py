"""Metrics of every worker process, from prometheus_client's multiprocess mode.

With ``--workers N`` each process writes its counters, histograms and gauges to memory-mapped
files in one directory (``PROMETHEUS_MULTIPROC_DIR``, set by the supervisor before any worker
imports prometheus_client); a scrape reads them all. Counters and histograms are summed exactly,
including a worker that has since died (its counts happened). Gauges follow their declared
``multiprocess_mode``: queue depth and batches in flight are summed over live workers
(``livesum``), readiness is the minimum (``livemin``: ready where every live worker is), load time
the maximum. Process metrics are left out: each would describe only the worker that was scraped.

A version retired on purpose must lose its readiness and load-time series (prometheus.py), but a
value cannot be deleted from the shared files: each worker writes ``RETIRED`` instead, and the merged
scrape leaves out a series whose merged value is ``RETIRED``. Readiness merges with livemin, so a
version leaves as soon as one live worker has retired it (the others follow within a poll), and
load time with livemax, so it leaves once every live worker has.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

from serve.metrics.triton_compat import bare_counter

ENVIRONMENT = "PROMETHEUS_MULTIPROC_DIR"
# Below any real value of the gauges that use it (readiness 0/1, seconds): "no such series".
RETIRED = -1.0
_RETIRABLE = frozenset({"serve_model_ready", "serve_model_load_duration_seconds", "nv_model_load_duration_secs"})


def multiprocess_dir() -> Path | None:
    """The shared directory when this process is one of several workers, else None."""
    value = os.environ.get(ENVIRONMENT)
    return Path(value) if value else None


class WorkerMetrics(Collector):
    """Every worker's serve_* and (bare-named, as Triton names them) nv_* metrics, merged from the files."""

    def __init__(self, path: Path) -> None:
        self._merged = MultiProcessCollector(None, path=str(path))  # type: ignore[no-untyped-call]

    def collect(self) -> Iterable[Metric]:
        for family in self._merged.collect():  # type: ignore[no-untyped-call]
            if family.name in _RETIRABLE:
                family.samples = [s for s in family.samples if s.value != RETIRED]
            yield bare_counter(family) if family.type == "counter" and family.name.startswith("nv_") else family


def forget_process(pid: int, path: Path) -> None:
    """A worker has died: its live gauges no longer count (its counters and histograms still do)."""
    mark_process_dead(pid, str(path))  # type: ignore[no-untyped-call]
