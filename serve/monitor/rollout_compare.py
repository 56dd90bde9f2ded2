"""The versions of a rollout side by side: each candidate's and the shadow's input and output statistics
against the primary's, over the same evaluation horizon, with the drift measures (serve/drift/measures.py).

For every model whose replicas report a rollout (``GET …/rollout``, read at every poll: polling.py), the plan
with the highest revision names the primary and the other arms. Each arm's windows and the primary's, merged
across replicas by the collector, are summed over the horizon and compared feature by feature
(rollout_features.py), the primary standing where a drift evaluation has the baseline. When both versions bin
against the same baseline the measures are exact on the two blocks; when they do not (a baseline names one
version, or none is loaded), numeric features are compared by what both sides carry — their sketches, else
their moments — and the comparison's problems say so.

Beside them, the shadow's paired comparison counts from the status documents' ``evidence.comparisons``
(rows, disagreements; summed over the replicas on the newest revision) and the gates of the arm's last
evaluation: the monitor's own with ``--rollouts``, else the newest a replica made.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypedDict

from serve.monitor.collector import StatsCollector
from serve.monitor.evaluate import merge_windows
from serve.monitor.rollout_features import FeatureComparisonJson, compare_feature
from serve.rollout.analyser import EvaluationJson, GateJson
from serve.rollout.comparison import comparison_key
from serve.rollout.documents import StatusDocument


class ShadowCountsJson(TypedDict):
    """The shadow's paired comparison with the primary since its step began (the status documents' evidence)."""

    rows: int
    disagreements: int
    disagreement: float | None
    replicas: int  # status documents summed


class CompareWindow(TypedDict):
    start: float
    end: float
    horizon_s: float
    include_open: bool
    rows: dict[str, int]  # "primary", "other"
    windows: dict[str, int]


class GatesJson(TypedDict):
    verdict: str
    at: str
    source: str  # "monitor" (--rollouts) or the replica's URL
    gates: list[GateJson]


class RolloutComparisonJson(TypedDict):
    """One arm of a model's rollout against its primary (``/api/rollouts/compare``, ``--once``'s ``rollouts``)."""

    model: str
    primary: str
    version: str
    role: str  # candidate | shadow
    percent: float
    revision: int
    phase: str
    compared_at: float
    window: CompareWindow
    baselines: dict[str, str | None]  # "primary", "other": the sha256 each side's blocks are binned against
    basis: list[str]  # the bases its features were compared on
    features: list[FeatureComparisonJson]  # outputs first
    comparisons: ShadowCountsJson | None  # None: no paired comparison in the evidence (a candidate)
    evaluation: GatesJson | None  # None: no evaluation of this arm yet (one arm is judged per evaluation)
    problems: list[str]


@dataclass(frozen=True, slots=True)
class Horizon:
    start: float
    end: float
    horizon_s: float
    include_open: bool


@dataclass(frozen=True, slots=True)
class ReplicaRollout:
    """One replica's status document of one model."""

    url: str
    status: StatusDocument


def compare_rollouts(
    rollouts: Mapping[str, Sequence[ReplicaRollout]],
    collector: StatsCollector,
    horizon: Horizon,
    decided: Mapping[str, EvaluationJson | None] | None = None,
) -> list[RolloutComparisonJson]:
    """Every arm of every model's rollout against its primary; ``decided``: the monitor's own evaluations."""
    out: list[RolloutComparisonJson] = []
    for model, replicas in sorted(rollouts.items()):
        out += compare_model(model, replicas, collector, horizon, (decided or {}).get(model))
    return out


def compare_model(
    model: str,
    replicas: Sequence[ReplicaRollout],
    collector: StatsCollector,
    horizon: Horizon,
    decided: EvaluationJson | None = None,
) -> list[RolloutComparisonJson]:
    planned = [r for r in replicas if r.status["plan"] is not None and r.status["routing"] is not None]
    if not planned:
        return []
    revision = max(_revision(r.status) for r in planned)
    newest = [r for r in planned if _revision(r.status) == revision]
    status = newest[0].status
    routing, plan = status["routing"], status["plan"]
    assert routing is not None and plan is not None
    arms = [(str(a["version"]), "candidate", float(a["percent"])) for a in routing["candidates"]]
    if routing["shadow"] is not None:
        arms.append((str(routing["shadow"]["version"]), "shadow", float(routing["shadow"]["percent"])))
    primary = str(routing["primary"])
    out = []
    for version, role, percent in arms:
        entry = compare_arm(model, primary, version, collector, horizon)
        entry["role"], entry["percent"], entry["revision"] = role, percent, revision
        entry["phase"] = plan["status"]["phase"]
        entry["comparisons"] = _shadow_counts(newest, primary, version)
        entry["evaluation"] = _evaluation(newest, version, role, decided)
        if len(newest) < len(planned):
            entry["problems"].append(
                f"{len(planned) - len(newest)} replica(s) still on an older revision of the plan; their evidence "
                "is left out"
            )
        out.append(entry)
    return out


def _revision(status: StatusDocument) -> int:
    return status["plan"]["status"]["revision"] if status["plan"] is not None else -1


def compare_arm(
    model: str, primary: str, version: str, collector: StatsCollector, horizon: Horizon
) -> RolloutComparisonJson:
    """``version``'s statistics against ``primary``'s over ``horizon`` (role, percent and the evidence are the
    caller's: compare_model)."""
    problems: list[str] = []
    sha_p, sha_o = _baselines(collector, model, primary, version, problems)
    blocks, rows, windows = {}, {}, {}
    for side, v, sha in (("primary", primary, sha_p), ("other", version, sha_o)):
        collected = collector.collected(model, v, horizon.start, include_open=horizon.include_open, baseline_sha256=sha)
        problems += [f"version {v}: {p}" for p in collected.problems]
        blocks[side], rows[side] = merge_windows(collected.windows)
        windows[side] = len(collected.windows)
    for v, sha in ((primary, sha_p), (version, sha_o)):
        if not collector.features(model, v, sha):
            problems.append(f"version {v} has sent no statistics (not served, or served with --no-stats)")
    metas = {m["name"]: m for m in collector.features(model, version, sha_o)}
    features = [
        compare_feature(meta, metas.get(meta["name"]), blocks["primary"].get(meta["name"]),
                        blocks["other"].get(meta["name"]), primary, version)
        for meta in collector.features(model, primary, sha_p)
        if meta["kind"] != "bytes"
    ]  # fmt: skip
    features.sort(key=lambda f: f["role"] != "output")
    return {
        "model": model, "primary": primary, "version": version, "role": "", "percent": 0.0, "revision": 0,
        "phase": "", "compared_at": horizon.end,
        "window": {"start": horizon.start, "end": horizon.end, "horizon_s": horizon.horizon_s,
                   "include_open": horizon.include_open, "rows": rows, "windows": windows},
        "baselines": {"primary": sha_p, "other": sha_o},
        "basis": sorted({f["basis"] for f in features if f["basis"] is not None}),
        "features": features, "comparisons": None, "evaluation": None, "problems": problems,
    }  # fmt: skip


def _baselines(
    collector: StatsCollector, model: str, primary: str, version: str, problems: list[str]
) -> tuple[str | None, str | None]:
    """The baseline each side's blocks are taken binned against: one both share if any (exact measures), else
    each side's most common (or none: sketches)."""
    shas_p, shas_o = collector.baseline_shas(model, primary), collector.baseline_shas(model, version)
    common = [s for s in shas_p if s in shas_o]
    if common:
        return common[0], common[0]
    sha_p, sha_o = (shas_p[0] if shas_p else None), (shas_o[0] if shas_o else None)
    if sha_p is None and sha_o is None:
        problems.append("neither version bins against a baseline: numeric features compared by their sketches")
    else:
        problems.append(
            f"versions {primary} and {version} bin against different baselines ({_short(sha_p)}, {_short(sha_o)}): "
            "numeric features compared by what both sides carry (sketches or moments), not by bins"
        )
    return sha_p, sha_o


def _short(sha: str | None) -> str:
    return f"{sha[:12]}…" if sha else "none"


def _shadow_counts(replicas: Sequence[ReplicaRollout], primary: str, version: str) -> ShadowCountsJson | None:
    key = comparison_key(primary, version)
    rows = disagreements = found = 0
    for r in replicas:
        comparisons = r.status["evidence"].get("comparisons")
        counts = comparisons.get(key) if isinstance(comparisons, dict) else None
        if not isinstance(counts, dict):
            continue
        r_rows, r_disagreements = counts.get("rows"), counts.get("disagreements")
        if isinstance(r_rows, int) and isinstance(r_disagreements, int):
            rows, disagreements, found = rows + r_rows, disagreements + r_disagreements, found + 1
    if not found:
        return None
    return {"rows": rows, "disagreements": disagreements, "disagreement": disagreements / rows if rows else None,
            "replicas": found}  # fmt: skip


def _evaluation(
    replicas: Sequence[ReplicaRollout], version: str, role: str, decided: EvaluationJson | None
) -> GatesJson | None:
    """The arm's last evaluation: the monitor's (it judged every replica's evidence), else the newest a replica
    made (each judges its own share of the traffic)."""

    def of_arm(e: EvaluationJson | None) -> bool:
        return e is not None and str(e["version"]) == version and e["role"] == role

    if decided is not None and of_arm(decided):
        return {"verdict": decided["verdict"], "at": decided["at"], "source": "monitor", "gates": decided["gates"]}
    own = [(r.url, e) for r in replicas if (e := r.status["evaluation"]) is not None and of_arm(e)]
    if not own:
        return None
    url, newest = max(own, key=lambda item: item[1]["at"])
    return {"verdict": newest["verdict"], "at": newest["at"], "source": url, "gates": newest["gates"]}
