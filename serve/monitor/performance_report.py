"""The report's Performance sections: per model version whose servers join labels, realized against estimated
against held-out over the horizon, the verdicts, and a plot of the three window by window (performance.py)."""

from __future__ import annotations

import datetime as dt
import html
import io
from collections.abc import Mapping, Sequence

from serve.monitor.performance import PerformanceReportJson, number
from serve.monitor.report import _badge, _fmt

PerformancePlots = dict[tuple[str, str], str]  # (model, version) → data: URI
_REALIZED, _ESTIMATED, _BASELINE = "#2c7fb8", "#e67e22", "#777777"


def _metric(report: PerformanceReportJson) -> str:
    target = report["target"]
    return "mae" if target is not None and target["task"] == "regression" else "accuracy"


def performance_plot(report: PerformanceReportJson) -> bytes:
    """PNG: the realized and estimated value of each window of prediction time, the held-out value as a line."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    metric = _metric(report)
    fig = Figure(figsize=(8.4, 2.5), dpi=80)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    times = [dt.datetime.fromtimestamp(w["start"]) for w in report["windows"]]
    realized = [w["realized"].get(metric) for w in report["windows"]]
    shown = [(t, v) for t, v in zip(times, realized, strict=True) if v is not None]
    if shown:
        ax.plot(*zip(*shown, strict=True), marker="o", markersize=3, color=_REALIZED, label="realized")
    estimated = [(t, w["estimated"]["accuracy"]) for t, w in zip(times, report["windows"], strict=True)
                 if w["estimated"] is not None]  # fmt: skip
    if estimated and metric == "accuracy":
        ax.plot(*zip(*estimated, strict=True), marker="s", markersize=3, color=_ESTIMATED, label="estimated")
    held_out = number(report["baseline"], metric)
    if held_out is not None:
        ax.axhline(held_out, color=_BASELINE, linestyle="--", linewidth=1, label="held-out")
    ax.set_ylabel(metric, fontsize=8)
    ax.set_title(f"{report['model']} v{report['version']}: {metric} per window of prediction", fontsize=8)
    ax.tick_params(labelsize=7)
    if shown or estimated or held_out is not None:
        ax.legend(fontsize=7, frameon=False, loc="lower left")
    fig.autofmt_xdate()
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.25, top=0.88)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def performance_sections(reports: Sequence[PerformanceReportJson], plots: Mapping[tuple[str, str], str]) -> str:
    return "\n".join(_section(r, plots.get((r["model"], r["version"]))) for r in reports)


def _section(report: PerformanceReportJson, uri: str | None) -> str:
    model, version = html.escape(report["model"]), html.escape(report["version"])
    metric = _metric(report)
    real, estimated, held_out = report["realized"], report["estimated"], report["baseline"]
    verdicts = report["verdicts"]
    drop = verdicts["accuracy_drop"]
    badge = _badge("accuracy drop", "bad") if drop else _badge("ok", "good") if drop is False else _badge(
        "not judged", "muted")  # fmt: skip
    if verdicts["divergence"]:
        badge += " " + _badge("realized ≠ estimated", "bad")
    keys = ("accuracy", "f1", "auc", "log_loss") if metric == "accuracy" else ("mae", "rmse", "bias")
    cells = "".join(
        f"<tr><td class='name'>{k}</td><td>{_fmt(number(real, k))}</td>"
        f"<td>{_fmt(estimated['accuracy'] if estimated is not None and k == 'accuracy' else None)}</td>"
        f"<td>{_fmt(number(held_out, k))}</td></tr>"
        for k in keys
    )
    parts = [
        f'<section id="performance-{model}-{version}"><h2>{model} v{version} <small>performance</small> {badge}</h2>',
        f'<p class="meta">{_fmt(number(real, "rows") or 0)} labelled rows over the horizon · label coverage '
        f"{_fmt(report['label_coverage'])} · label delay p50 {_fmt(number(real, 'delay_p50_s'))} s · "
        f'<a href="/api/performance?model={model}&amp;version={version}">/api/performance</a></p>',
        f"<table><tr><th class='name'>metric</th><th>realized</th><th>estimated</th><th>held-out</th></tr>{cells}"
        "</table>",
    ]
    if report["problems"]:
        parts.append('<p class="problems">' + "<br>".join(html.escape(p) for p in report["problems"]) + "</p>")
    if uri is not None:
        parts.append(f'<figure><img src="{uri}" alt="{metric} of {model} v{version} per window" width="672" '
                     'height="200"></figure>')  # fmt: skip
    parts.append("</section>")
    return "\n".join(parts)
