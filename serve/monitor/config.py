"""Monitor settings: command-line flags plus an optional TOML file for per-model and per-feature policy.

Example ``monitor.toml``::

    persistence = 3            # evaluations a state change needs
    min_samples = 100          # floor under the sample-size-aware minimum
    false_alarm = 0.01         # per feature and evaluation, without drift
    model_false_alarm = 0.01   # per model version and evaluation, split across its features
    pool = "1h"                # an undecided feature may pool windows this far beyond the horizon ("0": never)

    [thresholds]               # every model; a measure set to -1 is switched off
    psi = 0.2

    [models.churn]
    drift_share = 0.3
    thresholds = { ks = 0.15 }
    slo = { p99_latency_s = 0.05, error_rate = 0.01 }

    [models.churn.features."age"]
    thresholds = { psi = 0.3, wasserstein = -1 }

Precedence, lowest first: built-in defaults, the baseline file's ``thresholds``, the
file's top level, ``[models.<name>]``, ``[models.<name>.features.<feature>]``; a
``--threshold`` flag overrides the top level.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypedDict, cast

from serve.monitor.performance import PerformancePolicy
from serve.monitor.policy import DEFAULT_THRESHOLDS, MEASURES, Policy, SloPolicy

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(text: str | float | int) -> float:
    """``30s``, ``15m``, ``1h``, ``7d``, ``250ms`` or plain seconds."""
    if isinstance(text, (int, float)):
        return float(text)
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"not a duration: {text!r} (use e.g. 30s, 15m, 1h, 7d)")
    return float(match.group(1)) * _UNITS[match.group(2)]


class FeatureOverrides(TypedDict, total=False):
    thresholds: dict[str, float | None]


class SloOverrides(TypedDict, total=False):
    p99_latency_s: float | None
    error_rate: float | None
    min_requests: int


class ModelOverrides(TypedDict, total=False):
    """``[models.<name>]`` of the config file."""

    thresholds: dict[str, float | None]
    features: dict[str, FeatureOverrides]
    slo: SloOverrides
    drift_share: float
    persistence: int
    min_samples: int


@dataclass(slots=True)
class MonitorSettings:
    servers: list[str]
    model_repository: Path | None = None
    baselines: list[Path] = field(default_factory=list)
    hosts_file: Path | None = None  # names → addresses for --server, read every poll, before DNS
    token: str | None = None  # bearer token (inference scope) for servers run with --auth-tokens-file
    rollouts: bool = False  # decide the replicas' rollouts (serve/monitor/rollouts.py); the token needs admin
    interval_s: float = 30.0
    horizon_s: float = 900.0  # the rolling window each evaluation covers
    timeout_s: float = 10.0  # per HTTP request to a server
    db_path: str = "serve-monitor.db"
    retention_s: float = 7 * 86400.0
    host: str = "127.0.0.1"
    port: int = 8010
    webhook: str | None = None
    alert_rate_per_minute: float = 30.0
    webhook_retries: int = 3
    max_plot_features: int = 24  # per model on the report page; the table lists all
    max_series_features: int = 500  # per model in /metrics (top by score); serve_drift_inputs_truncated says so
    # thresholds here are only explicit overrides (flags, file); policy_for() layers them over the defaults
    policy: Policy = field(default_factory=lambda: Policy(thresholds={}))
    model_overrides: dict[str, ModelOverrides] = field(default_factory=dict)
    performance: PerformancePolicy = field(default_factory=PerformancePolicy)  # realized / estimated accuracy

    def policy_for(self, model: str, baseline_thresholds: Mapping[str, float | None] | None = None) -> Policy:
        base = self.policy
        thresholds = {**DEFAULT_THRESHOLDS, **_thresholds(baseline_thresholds or {}), **base.thresholds}
        over = self.model_overrides.get(model, ModelOverrides())
        thresholds.update(_thresholds(over.get("thresholds", {})))
        features = {name: _thresholds(f.get("thresholds", {})) for name, f in over.get("features", {}).items()}
        slo = over.get("slo", SloOverrides())
        return replace(
            base,
            thresholds=thresholds,
            feature_thresholds=features,
            drift_share=float(over.get("drift_share", base.drift_share)),
            persistence=int(over.get("persistence", base.persistence)),
            min_samples=int(over.get("min_samples", base.min_samples)),
            slo=SloPolicy(
                p99_latency_s=_opt_float(slo.get("p99_latency_s", base.slo.p99_latency_s)),
                error_rate=_opt_float(slo.get("error_rate", base.slo.error_rate)),
                min_requests=int(slo.get("min_requests", base.slo.min_requests)),
            ),
        )


def _opt_float(value: float | None) -> float | None:
    return None if value is None else float(value)


def _thresholds(raw: Mapping[str, float | None]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for measure, value in raw.items():
        if measure not in MEASURES:
            raise ValueError(f"unknown drift measure {measure!r} (known: {', '.join(MEASURES)})")
        out[measure] = None if value is None or float(value) < 0 else float(value)
    return out


def parse_threshold_flags(flags: list[str]) -> dict[str, float | None]:
    raw: dict[str, float | None] = {}
    for flag in flags:
        if "=" not in flag:
            raise ValueError(f"--threshold takes MEASURE=VALUE, not {flag!r}")
        measure, value = flag.split("=", 1)
        raw[measure.strip()] = float(value)
    return _thresholds(raw)


def load_config_file(path: Path, settings: MonitorSettings) -> MonitorSettings:
    with path.open("rb") as f:
        data = tomllib.load(f)
    policy = settings.policy
    policy = replace(
        policy,
        thresholds={**_thresholds(data.get("thresholds", {})), **policy.thresholds},
        persistence=int(data.get("persistence", policy.persistence)),
        min_samples=int(data.get("min_samples", policy.min_samples)),
        false_alarm=float(data.get("false_alarm", policy.false_alarm)),
        model_false_alarm=float(data.get("model_false_alarm", policy.model_false_alarm)),
        pool_s=parse_duration(data.get("pool", policy.pool_s)),
        drift_share=float(data.get("drift_share", policy.drift_share)),
        slo=replace(policy.slo, **data.get("slo", {})),
    )
    # TOML as read: thresholds are checked here, the other values converted where used (float(), int()).
    models = cast(dict[str, ModelOverrides], data.get("models", {}))
    for over in models.values():
        _thresholds(over.get("thresholds", {}))  # fail early on typos
        for feature in over.get("features", {}).values():
            _thresholds(feature.get("thresholds", {}))
    return replace(settings, policy=policy, model_overrides=models)
