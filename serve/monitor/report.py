"""The HTML report: per model version, features sorted by drift, and per feature a PNG plot.

Plots are drawn on the server with matplotlib's Agg backend and embedded as
``data:image/png;base64`` URIs, so the page needs no script and no internet access.
Each plot is small (≈ 15–30 KB): only the ``max_plot_features`` most drifted features
of a model get one (the table lists them all), which keeps the page light (a pitfall of
self-contained HTML reports, MONITOR.md §4.6).
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the page reads the documents; it needs none of the modules that make them
    from serve.monitor.model_report import FeatureEntry, MeasureEntry, ModelReport
    from serve.monitor.model_report_json import History
    from serve.monitor.polling import ServerJson

COLUMNS = ("psi", "js", "ks", "wasserstein", "missing_rate", "out_of_range", "linf", "unseen")
_BASELINE_COLOUR = "#7f8c8d"
_LIVE_COLOUR = "#e67e22"
MAX_POINTS = 300  # per measure on the drift-over-time plot


def feature_plot(feature: FeatureEntry, history: History) -> bytes:
    """PNG: baseline vs live shares (left) and each deciding measure / its threshold over time (right)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8.4, 2.5), dpi=80)
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.25, 1]})
    view = feature.view
    if view:
        n = len(view["baseline"])
        xs = list(range(n))
        width = 0.42
        left.bar([x - width / 2 for x in xs], view["baseline"], width, color=_BASELINE_COLOUR, label="baseline")
        left.bar([x + width / 2 for x in xs], view["live"], width, color=_LIVE_COLOUR, label="live")
        step = max(1, n // 10)
        left.set_xticks(xs[::step])
        left.set_xticklabels(view["labels"][::step], fontsize=7, rotation=30 if feature.kind == "categorical" else 0)
        left.set_ylabel("share", fontsize=8)
        left.set_title(
            "share per baseline ventile (lower edge)" if feature.kind == "numeric" else "share per category",
            fontsize=8,
        )
        left.legend(fontsize=7, frameon=False, loc="upper right")
    else:
        left.text(0.5, 0.5, "no live data", ha="center", va="center", transform=left.transAxes)
    left.tick_params(labelsize=7)
    plotted = False
    for measure, points in sorted(history.items()):
        pts = _thin([(t, v / th) for t, v, th in points if v is not None and th])
        if not pts:
            continue
        right.plot([dt.datetime.fromtimestamp(t) for t, _ in pts], [abs(v) for _, v in pts], label=measure, lw=1.2)
        plotted = True
    right.axhline(1.0, color="#c0392b", ls="--", lw=1)
    right.set_title("drift over time: value / threshold (dashed: 1)", fontsize=8)
    right.tick_params(labelsize=7)
    if plotted:
        right.legend(fontsize=6, frameon=False, ncol=3, loc="upper left")
        fig.autofmt_xdate(rotation=0, ha="center")
        import matplotlib.dates as mdates

        right.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M"))  # type: ignore[no-untyped-call]
    # Fixed margins: tight_layout measured every label by drawing the figure once more, half of a plot's cost.
    fig.subplots_adjust(left=0.07, right=0.99, bottom=0.15, top=0.9, wspace=0.16)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def _thin(points: list[tuple[float, float]], most: int = MAX_POINTS) -> list[tuple[float, float]]:
    """At most ``most`` points, each the largest |value| of its run of neighbours, so that no spike is lost:
    a plot 300 pixels wide shows no more, and matplotlib's cost grows with the points it is given."""
    if len(points) <= most:
        return points
    step = -(-len(points) // most)
    return [max(points[i : i + step], key=lambda p: abs(p[1])) for i in range(0, len(points), step)]


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _fmt(value: object, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "–"
        return f"{value:.{digits}g}"
    return html.escape(str(value))


def _badge(text: str, level: str) -> str:
    return f'<span class="badge {level}">{html.escape(text)}</span>'


def _verdict_badge(verdict: str | None, rows_needed: int | None) -> str:
    """This evaluation's verdict: drifted, stable, or undecided with the values still needed."""
    if verdict == "drifted":
        return _badge("drifted", "bad")
    if verdict == "stable":
        return _badge("stable", "good")
    needed = "not with this baseline" if rows_needed is None else f"+{_count(rows_needed)} values"
    return _badge("undecided", "muted") + f'<br><span class="small">{needed}</span>'


def _state_badge(state: str | None) -> str:
    """The persistent state (after ``persistence`` agreeing decided verdicts): what alerts follow."""
    return _badge("drifted", "bad") if state == "drifted" else _badge("ok", "good")


def _count(n: float) -> str:
    if n >= 10_000:
        return f"{n / 1000:.0f}k" if n < 1e6 else f"{n / 1e6:.3g}M"
    return str(int(n))


def _detectable(f: FeatureEntry) -> str:
    d = f.detectable
    if not d:
        return "–"
    if d["unit"] == "σ":
        return f"≥ {d['shift']:.2g}σ in mean"
    return f"≥ {d['shift']:.2g} in {html.escape(str(d['of']))}"


def _span(f: FeatureEntry) -> str:
    w = f.window
    if w is None or w["start"] is None or w["end"] is None:
        return "–"
    minutes = (w["end"] - w["start"]) / 60
    text = f"{minutes:.0f} min" if minutes >= 1 else f"{minutes * 60:.0f} s"
    return f"{text}, pooled {w['windows']} windows" if w["pooled"] else text


def _measure_cell(m: MeasureEntry) -> str:
    noise = m.noise
    title = ""
    if noise is not None and noise["ceiling"] is not None:
        title = (
            f' title="no drift: typically {_fmt(noise["typical"])}, at most {_fmt(noise["ceiling"])} '
            f'({noise["source"]}); threshold {_fmt(m.threshold)}"'
        )
    cls = {"drifted": ' class="hit"', "undecided": ' class="undecided"'}.get(str(m.state), "")
    return f"<td{cls}{title}>{_fmt(m.value)}</td>"


CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;background:#fafafa}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 6px}
.meta{color:#555;font-size:12px}.problems{color:#a94442;font-size:13px}
table{border-collapse:collapse;background:#fff;font-size:12px;margin:8px 0}
th,td{border:1px solid #ddd;padding:3px 7px;text-align:right}th{background:#eee}
td.name,th.name{text-align:left}td.hit{color:#c0392b;font-weight:600}td.undecided{color:#7f8c8d}
.small{font-size:10px;color:#555}td.nowrap{white-space:nowrap}
.badge{display:inline-block;padding:1px 7px;border-radius:9px;font-size:11px;color:#fff}
.bad{background:#c0392b}.warn{background:#e67e22}.good{background:#27ae60}.muted{background:#95a5a6}
figure{display:inline-block;margin:6px;background:#fff;border:1px solid #ddd;padding:4px}
figcaption{font-size:12px;color:#333}h3{font-size:15px;margin:16px 0 4px}
"""


_VERDICT_NOTE = (
    '<p class="meta">verdict: <b>drifted</b> when a measure reaches its threshold and exceeds what no drift '
    "produces at this window and baseline size; <b>stable</b> when every measure stays below its threshold "
    "with that noise added; otherwise <b>undecided</b>, with the values still needed. State: the verdict "
    "after persistence (alerts follow it). Hover a value for its no-drift range.</p>"
)


def _model_section(report: ModelReport, plots: Mapping[str, str]) -> str:
    model, version = report.model, report.version
    parts = [f'<section id="{html.escape(model)}-{html.escape(version)}">']
    parts.append(f"<h2>{html.escape(model)} <small>version {html.escape(version)}</small></h2>")
    parts += _model_summary(report)
    header = "".join(f"<th>{c}</th>" for c in COLUMNS)
    parts.append(_VERDICT_NOTE)
    parts.append(
        '<table><tr><th class="name">feature</th><th>role</th><th>kind</th><th>values</th><th>span</th>'
        f"<th>verdict</th><th>state</th><th>detectable at this window</th><th>score</th>{header}</tr>"
    )
    parts += [_feature_row(model, f) for f in report.features]
    parts.append("</table>")
    parts += [_feature_figure(model, f, plots[f.name]) for f in report.features if f.name in plots]
    parts.append("</section>")
    return "\n".join(parts)


def _model_summary(report: ModelReport) -> list[str]:
    """Badges, the window, the SLO and the problems of a model version."""
    base = report.baseline
    findings = report.findings
    states = findings.states if findings is not None else None
    badges = [_badge(f"baseline {base['status']}", "good" if base["status"] == "ok" else "bad")]
    if states is not None and states.dataset_state == "drifted":
        badges.append(_badge("dataset drift", "bad"))
    if states is not None and states.prediction_drift_state == "drifted":
        badges.append(_badge("prediction drift", "bad"))
    parts = [" ".join(badges)]
    share = findings.drifted_share if findings is not None else None
    window = findings.window if findings is not None else None
    rows, windows = (window["rows"], window["windows"]) if window is not None else (0, 0)
    horizon_s = window["horizon_s"] if window is not None else 0
    threshold = findings.drift_share_threshold if findings is not None else None
    when = dt.datetime.fromtimestamp(report.evaluated_at).strftime("%Y-%m-%d %H:%M:%S")
    parts.append(
        f'<p class="meta">evaluated {when} · {rows} rows in {windows} window(s) '
        f"over the last {_fmt((horizon_s or 0) / 60)} min · drifted inputs "
        f"{'–' if share is None else f'{share:.0%}'} (model threshold {_fmt(threshold)}) · "
        f"replicas {len(findings.replicas) if findings is not None else 0} · "
        f"baseline from {html.escape(str(base['path'] or '–'))}</p>"
    )
    slo = report.slo
    if slo.requests:
        parts.append(
            f'<p class="meta">SLO: {int(slo.requests)} requests, p99 {_fmt(slo.p99_latency_s)} s '
            f"(max {_fmt(slo.p99_latency_threshold_s)}), error rate {_fmt(slo.error_rate)} "
            f"(max {_fmt(slo.error_rate_threshold)})</p>"
        )
    if report.problems:
        parts.append('<p class="problems">' + "<br>".join(html.escape(p) for p in report.problems) + "</p>")
    return parts


def _feature_row(model: str, f: FeatureEntry) -> str:
    cells = []
    for c in COLUMNS:
        m = f.measures.get(c)
        cells.append("<td></td>" if m is None else _measure_cell(m))
    problem = f'<br><span class="problems">{html.escape(f.problem)}</span>' if f.problem else ""
    verdict = "–" if f.problem else _verdict_badge(f.verdict, f.rows_needed)
    return (
        f'<tr><td class="name"><a href="#plot-{html.escape(model)}-{html.escape(f.name)}">'
        f"{html.escape(f.name)}</a>{problem}</td><td>{f.role}</td><td>{f.kind}</td>"
        f'<td>{f.samples}</td><td class="nowrap">{_span(f)}</td><td>{verdict}</td>'
        f"<td>{_state_badge(f.state)}</td><td>{_detectable(f)}</td>"
        f"<td>{_fmt(f.score)}</td>{''.join(cells)}</tr>"
    )


def _feature_figure(model: str, f: FeatureEntry, uri: str) -> str:
    return (
        f'<figure id="plot-{html.escape(model)}-{html.escape(f.name)}"><img src="{uri}" '
        f'alt="baseline vs live and drift over time for {html.escape(f.name)}" width="672" height="200">'
        f"<figcaption>{html.escape(f.name)} ({f.role}, {f.kind}) — score {_fmt(f.score)}"
        f"</figcaption></figure>"
    )


def render_page(
    reports: Sequence[ModelReport],
    plots: Mapping[tuple[str, str], Mapping[str, str]],
    servers: Sequence[ServerJson],
    note: str | None = None,
    rollouts: str = "",
) -> str:
    """The page; ``rollouts``: the Rollout sections (rollout_report.py), shown before the model versions."""
    now = dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
    server_line = ", ".join(
        f"{html.escape(s['url'])} {_badge('up', 'good') if s['up'] else _badge('stale', 'bad')}" for s in servers
    )
    body = [
        "<!doctype html><html><head><meta charset='utf-8'><title>serve drift report</title>",
        f"<style>{CSS}</style></head><body>",
        "<h1>serve · drift report</h1>",
        f'<p class="meta">generated {now} · servers: {server_line or "none"} · '
        '<a href="/api/models">/api/models</a> · <a href="/metrics">/metrics</a></p>',
    ]
    if note:
        body.append(f'<p class="meta">{html.escape(note)}: reload in a moment to see it</p>')
    if not reports:
        body.append("<p>No evaluation yet: the monitor has not reached a server with models.</p>")
    if rollouts:
        body.append(rollouts)
    for report in reports:
        body.append(_model_section(report, plots.get(report.key, {})))
    body.append("</body></html>")
    return "\n".join(body)
