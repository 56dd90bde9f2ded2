"""The report's Rollout sections: per model under a rollout, each arm against its primary (rollout_compare.py),
as a table of every input and output feature's measures, the shadow's comparison counts and the arm's gates,
and a plot of the two versions' output distributions on the same axes."""

from __future__ import annotations

import html
import io
from collections.abc import Mapping, Sequence
from itertools import groupby
from typing import TYPE_CHECKING

from serve.monitor.report import _badge, _fmt

if TYPE_CHECKING:
    from serve.monitor.rollout_compare import GatesJson, RolloutComparisonJson
    from serve.monitor.rollout_features import FeatureComparisonJson

ArmKey = tuple[str, str, str]  # (model, version, role)
RolloutPlots = dict[ArmKey, dict[str, str]]  # arm → feature → data: URI
COLUMNS = ("psi", "js", "ks", "wasserstein", "mean_shift", "missing_rate", "out_of_range", "linf", "unseen")
MAX_PLOTS = 4  # output features plotted per arm, the most different first
_PRIMARY_COLOUR = "#2c7fb8"
_OTHER_COLOUR = "#e67e22"
_VERDICT_LEVEL = {"healthy": "good", "failing": "bad", "inconclusive": "muted"}


def arm_key(c: RolloutComparisonJson) -> ArmKey:
    return c["model"], c["version"], c["role"]


def plotted(c: RolloutComparisonJson) -> list[FeatureComparisonJson]:
    """The output features worth a plot: those with both distributions on common groups, most different first."""
    outputs = [f for f in c["features"] if f["role"] == "output" and f["view"] is not None]
    return sorted(outputs, key=lambda f: -f["measures"].get("js", 0.0))[:MAX_PLOTS]


def pair_plot(feature: FeatureComparisonJson, primary: str, version: str) -> bytes:
    """PNG: the primary's and the other version's shares of ``feature`` side by side on the same groups."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    view = feature["view"]
    fig = Figure(figsize=(4.6, 2.5), dpi=80)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    if view is not None:
        xs = list(range(len(view["primary"])))
        width = 0.42
        ax.bar([x - width / 2 for x in xs], view["primary"], width, color=_PRIMARY_COLOUR, label=f"v{primary}")
        ax.bar([x + width / 2 for x in xs], view["other"], width, color=_OTHER_COLOUR, label=f"v{version}")
        step = max(1, len(xs) // 7)
        ax.set_xticks(xs[::step])
        ax.set_xticklabels(view["labels"][::step], fontsize=7, rotation=30)
        ax.legend(fontsize=7, frameon=False, loc="upper right")
    ax.set_ylabel("share", fontsize=8)
    ax.set_title(
        f"{feature['name']}: share per v{primary} ventile" if feature["kind"] == "numeric" else feature["name"],
        fontsize=8,
    )
    ax.tick_params(labelsize=7)
    fig.subplots_adjust(left=0.13, right=0.98, bottom=0.2, top=0.88)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def rollout_sections(comparisons: Sequence[RolloutComparisonJson], plots: Mapping[ArmKey, Mapping[str, str]]) -> str:
    """One section per model under a rollout, one block per arm."""
    parts = []
    for model, arms in groupby(sorted(comparisons, key=lambda c: c["model"]), key=lambda c: c["model"]):
        parts.append(f'<section id="rollout-{html.escape(model)}"><h2>{html.escape(model)} <small>rollout</small></h2>')
        parts += [_arm(c, plots.get(arm_key(c), {})) for c in arms]
        parts.append("</section>")
    return "\n".join(parts)


def _arm(c: RolloutComparisonJson, plots: Mapping[str, str]) -> str:
    primary, version = html.escape(c["primary"]), html.escape(c["version"])
    rows, window = c["window"]["rows"], c["window"]
    parts = [
        f"<h3>version {version} <small>({html.escape(c['role'])}, {c['percent']:g} %)</small> against primary "
        f"{primary}</h3>",
        f'<p class="meta">revision {c["revision"]}, {html.escape(c["phase"])} · {rows["primary"]} rows of v{primary} '
        f"and {rows['other']} of v{version} over the last {_fmt(window['horizon_s'] / 60)} min · compared on "
        f"{html.escape(', '.join(c['basis']) or '–')} (the primary as reference)</p>",
    ]
    counts = c["comparisons"]
    if counts is not None:
        parts.append(
            f'<p class="meta">paired with the primary on the same requests: {counts["rows"]} rows, '
            f"{counts['disagreements']} disagreements ({_fmt(counts['disagreement'])}) from "
            f"{counts['replicas']} replica(s)</p>"
        )
    parts.append(_gates(c["evaluation"]))
    if c["problems"]:
        parts.append('<p class="problems">' + "<br>".join(html.escape(p) for p in c["problems"]) + "</p>")
    header = "".join(f"<th>{m}</th>" for m in COLUMNS)
    parts.append(
        '<table><tr><th class="name">feature</th><th>role</th><th>kind</th><th>basis</th>'
        f"<th>values v{primary}</th><th>values v{version}</th>{header}</tr>"
    )
    parts += [_row(f) for f in c["features"]]
    parts.append("</table>")
    parts += [
        f'<figure><img src="{uri}" alt="v{primary} and v{version} shares of {html.escape(name)}" width="368" '
        f'height="200"><figcaption>{html.escape(name)}</figcaption></figure>'
        for name, uri in plots.items()
    ]
    return "\n".join(parts)


def _gates(evaluation: GatesJson | None) -> str:
    if evaluation is None:
        return '<p class="meta">gates: no evaluation of this arm yet</p>'
    level = _VERDICT_LEVEL.get(evaluation["verdict"], "muted")
    gates = "; ".join(
        f"{html.escape(g['name'])} {_fmt(g['value'])} (threshold {_fmt(g['threshold'])}, samples "
        f"{g['samples']['primary']}/{g['samples']['candidate']}): {html.escape(g['verdict'])}"
        for g in evaluation["gates"]
    )
    return (
        f'<p class="meta">gates {_badge(evaluation["verdict"], level)} at {html.escape(evaluation["at"])} by '
        f"{html.escape(evaluation['source'])}: {gates or 'no gate switched on'}</p>"
    )


def _row(f: FeatureComparisonJson) -> str:
    cells = "".join(f"<td>{_fmt(f['measures'].get(m))}</td>" for m in COLUMNS)
    problem = f'<br><span class="problems">{html.escape(f["problem"])}</span>' if f["problem"] else ""
    return (
        f'<tr><td class="name">{html.escape(f["name"])}{problem}</td><td>{f["role"]}</td><td>{f["kind"]}</td>'
        f"<td>{f['basis'] or '–'}</td><td>{f['samples']['primary']}</td><td>{f['samples']['other']}</td>{cells}</tr>"
    )
