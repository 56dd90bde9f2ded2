"""``serve monitor``: arguments and the command (heavy imports happen only when it runs)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from serve.monitor.config import MonitorSettings
    from serve.monitor.model_report_json import ModelReportJson
    from serve.monitor.service import OnceDocument

log = logging.getLogger("serve.monitor")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    _add_server_arguments(parser)
    _add_schedule_arguments(parser)
    _add_policy_arguments(parser)
    _add_output_arguments(parser)


def _add_server_arguments(parser: argparse.ArgumentParser) -> None:
    """Which replicas to poll, how to reach them, and where the baselines are."""
    parser.add_argument(
        "--server",
        action="append",
        required=True,
        metavar="URL",
        help="a replica's HTTP base URL, e.g. http://127.0.0.1:8000, or one whose host is a DNS name standing "
        "for every address it resolves to, re-resolved each poll (a headless Service: http://serve-replicas:8000) "
        "(repeatable)",
    )
    parser.add_argument(
        "--hosts-file",
        type=Path,
        default=None,
        metavar="FILE",
        help="resolve --server names from this /etc/hosts-format file first (read again every poll)",
    )
    parser.add_argument(
        "--token-file",
        type=Path,
        default=None,
        metavar="FILE",
        help="a file holding the bearer token (scope inference) to send to servers run with --auth-tokens-file",
    )
    parser.add_argument(
        "--rollouts",
        action="store_true",
        help="decide the replicas' rollouts on the evidence of all of them and apply each decision to every "
        "replica (run the servers with --rollout-decider monitor; --token-file's token needs the admin scope)",
    )
    parser.add_argument(
        "--model-repository",
        type=Path,
        default=None,
        help="find baselines as <model>/baseline.json (and check ONNX hashes for staleness); without it "
        "(or for a model it lacks) the baseline each server loaded is used",
    )
    parser.add_argument(
        "--baseline",
        action="append",
        type=Path,
        default=[],
        metavar="FILE",
        help="a baseline.json to use for the model version it names (repeatable)",
    )


def _add_schedule_arguments(parser: argparse.ArgumentParser) -> None:
    """When to poll, what each evaluation covers, how long history is kept, and the monitor's own port."""
    parser.add_argument("--interval", default="30s", help="time between polls [default 30s]")
    parser.add_argument("--horizon", default="15m", help="rolling window each evaluation covers [default 15m]")
    parser.add_argument("--timeout", default="10s", help="per-request timeout towards a server [default 10s]")
    parser.add_argument(
        "--db",
        default=None,
        help="SQLite history file [default serve-monitor.db; with --once none: nothing is written unless given]",
    )
    parser.add_argument("--retention", default="7d", help="how long history is kept [default 7d]")
    parser.add_argument("--host", default="127.0.0.1", help="address of the monitor's own port")
    parser.add_argument("--port", type=int, default=8010, help="port of the report, JSON API and /metrics [8010]")


def _add_policy_arguments(parser: argparse.ArgumentParser) -> None:
    """When a measure counts as drift, an SLO as violated, and where alerts go."""
    parser.add_argument(
        "--config", type=Path, default=None, help="TOML file with per-model/feature thresholds and SLOs"
    )
    parser.add_argument(
        "--threshold",
        action="append",
        default=[],
        metavar="MEASURE=VALUE",
        help="override a default threshold, e.g. psi=0.2 (negative switches the measure off)",
    )
    parser.add_argument(
        "--persistence",
        type=int,
        default=3,
        help="consecutive evaluations a state change needs before it alerts [default 3]",
    )
    parser.add_argument(
        "--min-samples",
        type=int,
        default=100,
        help="floor under the sample-size-aware minimum window [default 100]",
    )
    parser.add_argument(
        "--drift-share",
        type=float,
        default=0.5,
        help="share of drifted input features that makes a model drifted [default 0.5]",
    )
    parser.add_argument(
        "--slo-p99", type=float, default=None, metavar="SECONDS", help="p99 latency SLO per model (seconds)"
    )
    parser.add_argument("--slo-error-rate", type=float, default=None, help="error-rate SLO per model (0..1)")
    parser.add_argument(
        "--accuracy-drop",
        type=float,
        default=0.05,
        help="alert (accuracy_drop) when realized accuracy — or, while labels are too few, the estimate — is "
        "this far below the baseline's held-out accuracy [default 0.05]",
    )
    parser.add_argument(
        "--mae-increase",
        type=float,
        default=0.2,
        help="a regressor's accuracy_drop: realized MAE this share above the baseline's held-out MAE [default 0.2]",
    )
    parser.add_argument(
        "--accuracy-divergence",
        type=float,
        default=0.05,
        help="alert when realized and estimated accuracy are this far apart (concept drift) [default 0.05]",
    )
    parser.add_argument(
        "--min-labels",
        type=int,
        default=200,
        help="labelled rows over the horizon before realized performance is judged [default 200]",
    )
    parser.add_argument("--webhook", default=None, metavar="URL", help="POST every alert as JSON to this URL")
    parser.add_argument("--alert-rate", type=float, default=30.0, help="webhook calls per minute at most [30]")


def _add_output_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--once",
        action="store_true",
        help="poll once, evaluate including the still-open window, print and exit: 0 no drift, 1 drift found, "
        "4 a server could not be read, 3 a model had no usable baseline (2: usage error)",
    )
    parser.add_argument("--format", choices=["json", "text"], default="text", help="output of --once")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"], help="log level")


def _read_token(path: Path | None) -> str | None:
    if path is None:
        return None
    token = path.read_text().strip()
    if not token or any(c.isspace() for c in token):
        raise ValueError(f"{path}: expected one bearer token and nothing else")
    return token


def settings_from_args(args: argparse.Namespace) -> MonitorSettings:
    from serve.monitor.config import MonitorSettings, load_config_file, parse_duration, parse_threshold_flags
    from serve.monitor.discovery import parse_target
    from serve.monitor.performance import PerformancePolicy
    from serve.monitor.policy import Policy, SloPolicy

    for url in args.server:
        parse_target(url)  # a bad URL is a usage error now, not a traceback later

    policy = Policy(
        thresholds=parse_threshold_flags(args.threshold), persistence=args.persistence,
        min_samples=args.min_samples, drift_share=args.drift_share,
        slo=SloPolicy(p99_latency_s=args.slo_p99, error_rate=args.slo_error_rate),
    )  # fmt: skip
    settings = MonitorSettings(
        servers=list(args.server), model_repository=args.model_repository, baselines=list(args.baseline),
        hosts_file=args.hosts_file, token=_read_token(args.token_file), rollouts=args.rollouts,
        interval_s=parse_duration(args.interval), horizon_s=parse_duration(args.horizon),
        timeout_s=parse_duration(args.timeout), db_path=args.db or (":memory:" if args.once else "serve-monitor.db"),
        retention_s=parse_duration(args.retention),
        host=args.host, port=args.port, webhook=args.webhook, alert_rate_per_minute=args.alert_rate, policy=policy,
        performance=PerformancePolicy(
            accuracy_drop=args.accuracy_drop, mae_increase=args.mae_increase, divergence=args.accuracy_divergence,
            min_labels=args.min_labels, min_estimate_rows=args.min_labels,
        ),
    )  # fmt: skip
    if args.config is not None:
        settings = load_config_file(args.config, settings)
    return settings


# Exit codes of --once, for scripts and CI.
EXIT_NO_DRIFT = 0
EXIT_DRIFT = 1
EXIT_NO_BASELINE = 3
EXIT_SERVER_UNREACHABLE = 4


def once_exit_code(document: OnceDocument) -> int:
    """1 when any model version drifted (dataset, prediction or any input feature); else 4 when a server could
    not be read; else 3 when a model version could not be judged for want of a usable baseline; else 0."""
    models = document["models"]
    if any(_drifted(m) for m in models):
        return EXIT_DRIFT
    if any(not s["up"] for s in document["servers"]):
        return EXIT_SERVER_UNREACHABLE
    if any(m["baseline"]["status"] != "ok" for m in models):
        return EXIT_NO_BASELINE
    return EXIT_NO_DRIFT


def _drifted(model: ModelReportJson) -> bool:
    return bool(
        model.get("dataset_drift")
        or model.get("prediction_drift")
        or any(f["drifted"] for f in model["features"] if f["role"] == "input")
    )


def _verdict(value: bool | None) -> str:
    return "undecided" if value is None else ("DRIFT" if value else "stable")


def _print_text(document: OnceDocument) -> None:
    for s in document["servers"]:
        print(f"server {s['url']}: {'up' if s['up'] else 'STALE: ' + str(s['last_error'])}")
    if not document["models"]:
        print("no model version to evaluate: no server answered with a ready model")
    for m in document["models"]:
        origin = f" from {m['baseline']['path']}" if m["baseline"].get("path") else ""
        print(f"{m['model']} v{m['version']}: baseline {m['baseline']['status']}{origin}")
        window = m.get("window")
        if window is None:
            print("  not evaluated: no usable baseline")
        else:
            share = m.get("drifted_share")
            threshold = m.get("drift_share_threshold")
            drifted_inputs = "no inputs judged" if share is None else f"{share:.0%} of inputs drifted"
            print(
                f"  dataset {_verdict(m.get('dataset_drift'))} ({drifted_inputs}, threshold {threshold:.0%}), "
                f"prediction {_verdict(m.get('prediction_drift'))}, {window['rows']} rows in {window['windows']} "
                "windows"
            )
        for p in m.get("problems", []):
            print(f"  ! {p}")
        for f in m["features"]:
            hits = [k for k, v in f["measures"].items() if v.get("drifted")]
            needed = f.get("rows_needed")
            verdict = (
                "undecided (" + ("not with this baseline" if needed is None else f"{needed} more values") + ")"
                if f["drifted"] is None
                else ("DRIFT " + ",".join(hits))
                if f["drifted"]
                else "stable"
            )
            print(f"  {f['role']:6} {f['name']:24} N={f['samples']:<8} {verdict}")
    for c in document["rollouts"]:
        print(f"{c['model']} rollout: version {c['version']} ({c['role']}, {c['percent']:g} %) against primary "
              f"{c['primary']}, {c['window']['rows']['other']} and {c['window']['rows']['primary']} rows")  # fmt: skip
        for fc in c["features"]:
            values = ", ".join(f"{k} {v:.3g}" for k, v in fc["measures"].items())
            print(f"  {fc['role']:6} {fc['name']:24} {fc['basis'] or fc['problem']}: {values}")


async def _once(settings: MonitorSettings, fmt: str) -> int:
    import orjson

    from serve.monitor.service import Monitor

    monitor = Monitor(settings)
    try:
        results = await monitor.cycle(include_open=True)
        await monitor.alerter.drain()
        document = monitor.once_document(results)
    finally:
        await monitor.alerter.close()
        monitor.close()
    if fmt == "json":
        sys.stdout.write(
            orjson.dumps(document, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY).decode() + "\n"
        )
    else:
        _print_text(document)
    return once_exit_code(document)


async def _serve(settings: MonitorSettings) -> int:
    from serve.listening import bind_http_socket
    from serve.monitor.app import create_monitor_app
    from serve.monitor.service import Monitor
    from serve.uvicorn_server import start_uvicorn

    monitor = Monitor(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)  # the monitor's loop owns the signals, not uvicorn
    sock = bind_http_socket(settings.host, settings.port)
    server, web = await start_uvicorn(create_monitor_app(monitor), sock, what="monitor", log_level="warning")
    log.info(
        "monitor on http://%s:%d polling %s every %.0fs",
        settings.host,
        sock.getsockname()[1],
        ", ".join(settings.servers),
        settings.interval_s,
    )
    try:
        await monitor.run_forever(stop)
    finally:
        server.should_exit = True
        await web
        sock.close()
        await monitor.alerter.close()
        monitor.close()
    return 0


def run(args: argparse.Namespace) -> int:
    from serve.extras import MissingExtraError, require_extra
    from serve.input_stats.baseline import BaselineError

    try:
        settings = settings_from_args(args)
        if not args.once:
            require_extra("monitor")  # the report's plots; --once draws none, so it runs on a serving install
    except (ValueError, OSError, MissingExtraError) as exc:
        print(f"serve monitor: {exc}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_once(settings, args.format) if args.once else _serve(settings))
    except BaselineError as exc:
        print(f"serve monitor: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # its port cannot be listened on
        print(f"serve monitor: {exc.strerror or exc}", file=sys.stderr)
        return 1
