"""The versions of a rollout side by side: each candidate's and the shadow's input and output statistics
against the primary's, over the same evaluation horizon, with the drift measures (serve/drift/measures.py).

For every model whose replicas report a rollout (``GET …/rollout``, read at every poll: polling.py), the plan
with the highest revision names the primary and the other arms. Each arm's windows and the primary's, merged
across replicas by the collector, are summed over the horizon and compared feature by feature, the primary
standing where a drift evaluation has the baseline:

- **bins**: both versions bin against the same baseline's edges, so the measures are exact on the two blocks
  (psi, js, ks, wasserstein in the primary's σ, missing_rate, out_of_range; ks and wasserstein with their
  error bounds), and the plot shows both on the primary's 20 quantile groups;
- **categories**: the same vocabulary: linf, unseen, psi, js, missing_rate;
- **sketch**: no common baseline, both sides carry KLL sketches: ks from the two sketches' CDFs, within the
  sum of their rank errors (its ``bound``), and the moments;
- **moments**: nothing else in common (one side binned, the other sketched): the mean shift in the primary's
  σ and the missing rates, from the exact moments.

Beside them, the shadow's paired comparison counts from the status documents' ``evidence.comparisons``
(rows, disagreements; summed over the replicas on the newest revision) and the gates of the arm's last
evaluation: the monitor's own with ``--rollouts``, else the newest a replica made.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypedDict

import numpy as np

from serve.drift import measures as ms
from serve.input_stats.blocks import Block, kll_from_block
from serve.input_stats.document import FeatureMeta
from serve.monitor.collector import StatsCollector
from serve.monitor.evaluate import merge_windows
from serve.rollout.analyser import EvaluationJson, GateJson
from serve.rollout.comparison import comparison_key
from serve.rollout.documents import StatusDocument

BINS = "bins"
CATEGORIES = "categories"
SKETCH = "sketch"
MOMENTS = "moments"

_NUMERIC = ("psi", "js", "ks", "wasserstein", "missing_rate", "out_of_range", "mean_shift")
_CATEGORICAL = ("linf", "unseen", "psi", "js", "missing_rate")
_SKETCH_RANKS = np.linspace(0.0, 1.0, 101)


class SideMoments(TypedDict):
    """One version's values of a feature over the horizon."""

    count: int  # every value, missing included
    n: int  # finite, non-missing (numeric); non-missing (categorical)
    mean: float | None
    std: float | None
    missing_rate: float | None


class PairMoments(TypedDict):
    primary: SideMoments
    other: SideMoments


class PairView(TypedDict):
    """Both versions' shares on the same groups: the primary's 20 quantile groups (lower edges), or categories."""

    labels: list[str]
    primary: list[float]
    other: list[float]


class FeatureComparisonJson(TypedDict):
    name: str
    role: str  # input | output
    tensor: str
    kind: str
    basis: str | None  # bins | categories | sketch | moments; None: not compared (problem says why)
    samples: dict[str, int]  # "primary", "other": values behind the measures
    measures: dict[str, float]  # the primary as reference (p), the other version as live (q)
    bounds: dict[str, float]  # the true value lies within measure + [0, bound] (ks) or ± bound (others)
    moments: PairMoments | None
    view: PairView | None
    problem: str | None


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


def compare_feature(
    meta: FeatureMeta, other_meta: FeatureMeta | None, p: Block | None, q: Block | None, primary: str, version: str
) -> FeatureComparisonJson:
    """One feature of the primary (``p``) against the same feature of the other version (``q``)."""
    entry: FeatureComparisonJson = {
        "name": meta["name"], "role": meta["role"], "tensor": meta["tensor"], "kind": meta["kind"], "basis": None,
        "samples": {"primary": int(p["count"]) if p else 0, "other": int(q["count"]) if q else 0},
        "measures": {}, "bounds": {}, "moments": None, "view": None, "problem": None,
    }  # fmt: skip
    if other_meta is None or q is None or p is None:
        missing = version if (other_meta is None or q is None) else primary
        entry["problem"] = f"no statistics of this feature from version {missing} in the horizon"
        return entry
    if other_meta["kind"] != meta["kind"]:
        entry["problem"] = f"{meta['kind']} in version {primary}, {other_meta['kind']} in version {version}"
        return entry
    if meta["kind"] == "categorical":
        _categorical(entry, meta, other_meta, p, q)
    else:
        _numeric(entry, meta, other_meta, p, q)
    return entry


def _numeric(entry: FeatureComparisonJson, meta: FeatureMeta, other: FeatureMeta, p: Block, q: Block) -> None:
    moments: PairMoments = {"primary": _moments(p), "other": _moments(q)}
    entry["moments"] = moments
    edges = meta.get("edges")
    if "bins" in p and "bins" in q and edges is not None and edges == other.get("edges"):
        bp, bq = ms.Binned.from_block(p), ms.Binned.from_block(q)
        entry["samples"] = {"primary": bp.n, "other": bq.n}
        raw = ms.numeric_measures(bp, bq, np.asarray(edges, dtype=np.float64))
        entry["basis"] = BINS
        entry["measures"] = {k: float(raw[k]) for k in _NUMERIC if raw.get(k) is not None}
        entry["bounds"] = {k: float(raw[f"{k}_bound"]) for k in ("ks", "wasserstein") if f"{k}_bound" in raw}
        if "view" in raw:
            view = raw["view"]
            entry["view"] = {"labels": _group_labels(view["groups"], edges), "primary": view["baseline"].tolist(),
                             "other": view["live"].tolist()}  # fmt: skip
        return
    shift = _mean_shift(p, q)
    if shift is not None:
        entry["measures"]["mean_shift"] = shift
    missing_p, missing_q = moments["primary"]["missing_rate"], moments["other"]["missing_rate"]
    if missing_p is not None and missing_q is not None:
        entry["measures"]["missing_rate"] = missing_q - missing_p
    entry["basis"] = MOMENTS
    if "kll" in p and "kll" in q:
        ks = _ks_sketches(p, q)
        if ks is not None:
            entry["measures"]["ks"], entry["bounds"]["ks"] = ks
            entry["basis"] = SKETCH


def _categorical(entry: FeatureComparisonJson, meta: FeatureMeta, other: FeatureMeta, p: Block, q: Block) -> None:
    vocabulary = meta.get("vocabulary")
    if vocabulary is None or vocabulary != other.get("vocabulary") or len(p["counts"]) != len(q["counts"]):
        entry["problem"] = "the two versions count this feature over different vocabularies"
        return
    cp, cq = ms.Categories.from_block(p), ms.Categories.from_block(q)
    raw = ms.categorical_measures(cp, cq)
    entry["basis"] = CATEGORIES
    entry["samples"] = {"primary": cp.count, "other": cq.count}
    entry["measures"] = {k: float(raw[k]) for k in _CATEGORICAL if raw.get(k) is not None}
    if "view" in raw:
        labels = [str(v) for v in vocabulary] + ["(other)"]
        entry["view"] = {"labels": labels, "primary": raw["view"]["baseline"].tolist(),
                         "other": raw["view"]["live"].tolist()}  # fmt: skip


def _moments(block: Block) -> SideMoments:
    count = int(block["count"])
    missing = int(block["missing"]) + int(block.get("nan", 0))
    n = int(block.get("n", count - missing))
    m2 = float(block.get("m2", 0.0))
    return {
        "count": count, "n": n, "mean": block.get("mean"),
        "std": float(np.sqrt(m2 / (n - 1))) if n > 1 else None,
        "missing_rate": missing / count if count else None,
    }  # fmt: skip


def _mean_shift(p: Block, q: Block) -> float | None:
    """|Δ mean| in the primary's σ (as measures.py's mean_shift: a lower bound on W1/σ)."""
    mp, mq = p.get("mean"), q.get("mean")
    if mp is None or mq is None:
        return None
    n = int(p.get("n", 0))
    std = float(np.sqrt(float(p.get("m2", 0.0)) / (n - 1))) if n > 1 else 0.0
    return abs(mq - mp) / max(std, ms.STD_FLOOR)


def _ks_sketches(p: Block, q: Block) -> tuple[float, float] | None:
    """(KS between the two KLL sketches' CDFs at both sides' percentiles, the sum of their rank errors)."""
    sp, sq = kll_from_block(p), kll_from_block(q)
    if sp.is_empty() or sq.is_empty():
        return None
    points = sorted({*sp.get_quantiles(_SKETCH_RANKS.tolist()), *sq.get_quantiles(_SKETCH_RANKS.tolist())})
    fp = np.asarray(sp.get_cdf(points), dtype=np.float64)
    fq = np.asarray(sq.get_cdf(points), dtype=np.float64)
    bound = float(sp.normalized_rank_error(False) + sq.normalized_rank_error(False))
    return float(np.max(np.abs(fp - fq))), bound


def _group_labels(groups: np.ndarray, edges: Sequence[float]) -> list[str]:
    """Lower edge of each group of fine bins (fine bin b spans [edges[b-1], edges[b]))."""
    labels = []
    for g in range(int(groups.max()) + 1 if groups.size else 0):
        lo = int(np.flatnonzero(groups == g)[0]) - 1
        labels.append(f"{edges[lo]:.3g}" if 0 <= lo < len(edges) else "-inf")
    return labels


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
