"""The report's plots, drawn once per evaluation, in the background, as soon as the evaluation is made.

A plot costs matplotlib a tenth of a second to a second (more on a busy machine), and a report has up to
``max_plot_features`` of them per model, so drawing them when the page was asked for made it take 4 to 22 s after
every evaluation (issue 17). Now the monitor calls :meth:`PlotCache.evaluated` after each evaluation, one thread
draws that evaluation's plots while the monitor goes on polling, and the page shows the latest *drawn*
evaluation: its table and its plots together, at once. While a newer evaluation is being drawn the page shows the
one before and says so; only before the first drawing has ended does a page wait for it. The rollout comparisons
of the same cycle (rollout_compare.py) are drawn with it: each arm's most different outputs, both versions on the
same axes; and so is each version's performance per window (performance_report.py).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from serve.monitor.model_report import FeatureEntry, ModelReport
from serve.monitor.model_report_json import History
from serve.monitor.performance import PerformanceReportJson
from serve.monitor.performance_report import PerformancePlots, performance_plot
from serve.monitor.report import data_uri, feature_plot
from serve.monitor.rollout_compare import RolloutComparisonJson
from serve.monitor.rollout_features import FeatureComparisonJson
from serve.monitor.rollout_report import RolloutPlots, arm_key, pair_plot, plotted

if TYPE_CHECKING:
    from serve.monitor.service import Monitor

log = logging.getLogger("serve.monitor")

Plots = dict[tuple[str, str], dict[str, str]]  # (model, version) → feature → data: URI
Key = tuple[tuple[str, str, float], ...]  # the evaluation a set of plots belongs to: (model, version, evaluated_at)
_Pending = tuple[Key, list[ModelReport], list[RolloutComparisonJson], list[PerformanceReportJson]]


def evaluation_key(reports: Sequence[ModelReport]) -> Key:
    return tuple((r.model, r.version, float(r.evaluated_at)) for r in reports)


@dataclass(frozen=True)
class Drawn:
    """An evaluation's reports and their plots, shown together."""

    key: Key
    reports: list[ModelReport]
    plots: Plots
    comparisons: list[RolloutComparisonJson] = field(default_factory=list)
    rollout_plots: RolloutPlots = field(default_factory=dict)
    performance: list[PerformanceReportJson] = field(default_factory=list)
    performance_plots: PerformancePlots = field(default_factory=dict)


class PlotCache:
    def __init__(
        self,
        monitor: Monitor,
        draw: Callable[[FeatureEntry, History], bytes] = feature_plot,
        draw_pair: Callable[[FeatureComparisonJson, str, str], bytes] = pair_plot,
    ) -> None:
        self._monitor = monitor
        self._draw = draw
        self._draw_pair = draw_pair
        self._changed = threading.Condition()
        self._drawn: Drawn | None = None
        self._pending: _Pending | None = None
        self._drawing: Key | None = None

    def latest_reports(self) -> list[ModelReport]:
        return [r for _, r in sorted(self._monitor.latest.items())]

    def evaluated(self) -> None:
        """Start drawing the monitor's latest evaluation; returns at once (a newer one replaces one still queued)."""
        reports = self.latest_reports()
        self._schedule(evaluation_key(reports), reports)

    def page(self, timeout_s: float = 120.0) -> tuple[Drawn, Key]:
        """The latest drawn evaluation, and the key of the latest evaluation (newer while it is being drawn).

        Waits only while nothing has been drawn yet (and then at most ``timeout_s``, for a page without plots)."""
        reports = self.latest_reports()
        key = evaluation_key(reports)
        self._schedule(key, reports)
        with self._changed:
            self._changed.wait_for(lambda: self._drawn is not None, timeout_s)
            performance = [p for _, p in sorted(self._monitor.performance.items())]
            return self._drawn or Drawn(key, reports, {}, list(self._monitor.comparisons), {}, performance), key

    def wait_drawn(self, timeout_s: float) -> bool:
        """Wait until nothing is being drawn or queued (tests and the benchmark)."""
        with self._changed:
            return self._changed.wait_for(lambda: self._drawing is None and self._pending is None, timeout_s)

    def _schedule(self, key: Key, reports: Sequence[ModelReport]) -> None:
        with self._changed:
            if key in (self._drawing, self._drawn.key if self._drawn else None):
                return
            start = self._drawing is None and self._pending is None
            performance = [p for _, p in sorted(self._monitor.performance.items())]
            self._pending = (key, list(reports), list(self._monitor.comparisons), performance)
            if start:
                threading.Thread(target=self._work, name="serve-monitor-plots", daemon=True).start()

    def _work(self) -> None:
        while True:
            with self._changed:
                if self._pending is None:
                    self._changed.notify_all()
                    return
                key, reports, comparisons, performance = self._pending
                self._pending, self._drawing = None, key
            try:
                plots, rollout_plots = self._draw_all(reports), self._draw_rollouts(comparisons)
                performance_plots = {(r["model"], r["version"]): data_uri(performance_plot(r)) for r in performance}
            except Exception:  # a failed drawing must not leave a page waiting; it shows no plots
                if not self._monitor.closed:  # closed under the drawing: its store is gone, and so is the page
                    log.exception("drawing the drift report's plots failed")
                plots, rollout_plots, performance_plots = {}, {}, {}
            with self._changed:
                drawn = Drawn(key, reports, plots, comparisons, rollout_plots, performance, performance_plots)
                self._drawn, self._drawing = drawn, None
                self._changed.notify_all()

    def _draw_all(self, reports: Sequence[ModelReport]) -> Plots:
        monitor = self._monitor
        # The drift-over-time plot shows the recent past: 8 horizons, at least 6 hours.
        span_s = max(monitor.settings.horizon_s * 8, 6 * 3600)
        plots: Plots = {}
        for r in reports:
            own = plots[r.key] = {}
            since = float(r.evaluated_at) - span_s
            for f in r.features[: monitor.settings.max_plot_features]:
                deciding = [m for m, v in f.measures.items() if v.threshold is not None]
                history = monitor.store.history(r.model, r.version, f.name, deciding, since)
                own[f.name] = data_uri(self._draw(f, history))
        return plots

    def _draw_rollouts(self, comparisons: Sequence[RolloutComparisonJson]) -> RolloutPlots:
        return {
            arm_key(c): {f["name"]: data_uri(self._draw_pair(f, c["primary"], c["version"])) for f in plotted(c)}
            for c in comparisons
        }
