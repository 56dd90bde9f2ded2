"""The `serve` command line: `serve run | validate | demo-repo | baseline | monitor`.

Every `serve run` flag can also come from an environment variable SERVE_<FLAG> (dashes
become underscores, e.g. SERVE_HTTP_PORT); a flag on the command line wins.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from serve import __version__
from serve.settings import ServerSettings

ENV_PREFIX = "SERVE_"


def _env_default(name: str, convert: Callable[[str], Any], default: Any) -> Any:
    env = ENV_PREFIX + name.upper().replace("-", "_")
    raw = os.environ.get(env)
    if raw is None:
        return default
    try:
        return convert(raw)
    except ValueError:
        raise SystemExit(f"serve: environment variable {env}={raw!r} is not valid") from None


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(raw)


def _add(
    parser: argparse.ArgumentParser,
    flag: str,
    *,
    type: Callable[[str], Any] = str,
    default: Any = None,
    help: str,
    **kwargs: Any,
) -> None:
    name = flag.lstrip("-")
    env = ENV_PREFIX + name.upper().replace("-", "_")
    if type is _bool:
        parser.add_argument(
            flag,
            action=argparse.BooleanOptionalAction,
            default=_env_default(name, _bool, default),
            help=f"{help} [env {env}; default {default}]",
            **kwargs,
        )
        return
    parser.add_argument(
        flag,
        type=type,
        default=_env_default(name, type, default),
        help=f"{help} [env {env}; default {default}]",
        **kwargs,
    )


def _add_repository_flags(parser: argparse.ArgumentParser, *, required: bool) -> None:
    d = ServerSettings()
    _add(
        parser,
        "--model-repository",
        type=Path,
        default=None,
        help="Triton-layout model repository" + ("" if required else "; omitted = the bundled demo repository"),
    )
    _add(
        parser,
        "--default-max-batch-size",
        type=int,
        default=d.default_max_batch_size,
        help="max_batch_size for batchable models without a config.pbtxt",
    )
    _add(
        parser,
        "--ort-intra-op-threads",
        type=int,
        default=d.ort_intra_op_threads,
        help="onnxruntime intra-op threads per instance when the config has none (0 = cores / instances)",
    )
    _add(
        parser,
        "--ort-allow-spinning",
        type=_bool,
        default=d.ort_allow_spinning,
        help="let onnxruntime threads spin while idle (faster on idle big machines, starves small ones)",
    )
    _add(parser, "--log-level", default=d.log_level, choices=["debug", "info", "warning", "error"], help="log level")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="serve",
        description="Serve ONNX models over the Open Inference Protocol (KServe V2) on HTTP and gRPC.",
    )
    parser.add_argument("--version", action="version", version=f"serve {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    d = ServerSettings()
    run = sub.add_parser("run", help="start the server", description="Start the HTTP and gRPC server.")
    _add_repository_flags(run, required=False)
    _add(
        run,
        "--model-name",
        default=None,
        help="serve only this model; --model-repository may then be a bare model directory (model.onnx, "
        "optional config.pbtxt and baseline.json, as KServe's /mnt/models), served as version 1",
    )
    _add(run, "--host", default=d.host, help="address to listen on (0.0.0.0 for all interfaces)")
    _add(run, "--http-port", type=int, default=d.http_port, help="HTTP/REST port")
    _add(run, "--grpc-port", type=int, default=d.grpc_port, help="gRPC port")
    _add(run, "--metrics-port", type=int, default=None, help="extra port serving only /metrics")
    _add(
        run,
        "--model-control-mode",
        default=d.model_control_mode,
        choices=["none", "explicit"],
        help="'explicit' answers repository load/unload requests and loads only --load-model at start",
    )
    run.add_argument(
        "--load-model",
        action="append",
        default=None,
        help="with --model-control-mode explicit: a model to load at start (repeatable)",
    )
    _add(
        run,
        "--max-request-bytes",
        type=int,
        default=d.max_request_bytes,
        help="largest request body / gRPC message accepted, bytes",
    )
    _add(
        run,
        "--shutdown-grace-s",
        type=float,
        default=d.shutdown_grace_s,
        help="seconds shutdown waits for queued and running requests",
    )
    _add(
        run,
        "--metrics-triton-compat",
        type=_bool,
        default=d.metrics_triton_compat,
        help="also export Triton's nv_* metric names",
    )
    _add(
        run,
        "--stats",
        type=_bool,
        default=d.stats_enabled,
        help="record input/output statistics per model (GET .../input-stats)",
    )
    _add(run, "--stats-window-s", type=float, default=d.stats_window_s, help="statistics window length, seconds")
    _add(run, "--stats-horizon-s", type=float, default=d.stats_horizon_s, help="how long windows are kept, seconds")
    _add(
        run,
        "--stats-sample-rate",
        type=float,
        default=d.stats_sample_rate,
        help="share of rows recorded in the statistics, in (0, 1]",
    )

    validate = sub.add_parser(
        "validate",
        help="load every model and run one inference each; non-zero exit if any fails",
        description="Load every model exactly as the server would, run one inference per model with generated "
        "inputs, print a table, and exit 1 if any model fails. For CI gates on model repositories.",
    )
    _add_repository_flags(validate, required=True)

    demo = sub.add_parser("demo-repo", help="write the bundled demo model repository to DIR")
    demo.add_argument("directory", type=Path, help="where to write it")

    # The drift commands keep their arguments in their own packages (cheap imports; the work is lazy).
    from serve.baseline.command import add_arguments as add_baseline_arguments
    from serve.monitor.command import add_arguments as add_monitor_arguments

    add_baseline_arguments(
        sub.add_parser(
            "baseline",
            help="compute a model's baseline.json (training distribution) for drift monitoring",
            description="Read training data in chunks and write baseline.json: per input feature its declared kind, "
            "counts, moments, bin edges and bin counts; and the model's output distribution on a held-out sample.",
        )
    )
    add_monitor_arguments(
        sub.add_parser(
            "monitor",
            help="watch servers' input statistics for drift against baselines",
            description="Poll servers' input statistics, merge replicas, compare with baselines, keep history in "
            "SQLite, export Prometheus gauges, serve an HTML report, and alert on drift.",
        )
    )
    return parser


def settings_from_args(args: argparse.Namespace) -> ServerSettings:
    s = ServerSettings()
    for name in (
        "model_repository",
        "model_name",
        "host",
        "http_port",
        "grpc_port",
        "metrics_port",
        "log_level",
        "model_control_mode",
        "max_request_bytes",
        "default_max_batch_size",
        "shutdown_grace_s",
        "ort_allow_spinning",
        "ort_intra_op_threads",
        "metrics_triton_compat",
        "stats_window_s",
        "stats_horizon_s",
        "stats_sample_rate",
    ):
        if hasattr(args, name):
            setattr(s, name, getattr(args, name))
    if hasattr(args, "stats"):
        s.stats_enabled = args.stats
    load_models = getattr(args, "load_model", None)
    if load_models is None and os.environ.get(ENV_PREFIX + "LOAD_MODEL"):
        load_models = [m for m in os.environ[ENV_PREFIX + "LOAD_MODEL"].split(",") if m]
    s.load_models = load_models or []
    return s


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _repository_root(settings: ServerSettings) -> Path:
    if settings.model_repository is not None:
        root = settings.model_repository
        if not root.is_dir():
            raise SystemExit(f"serve: model repository {root} is not a directory")
        return root
    from serve.demo import ensure_demo_repository

    root = ensure_demo_repository()
    logging.getLogger("serve").info("no --model-repository given: serving the demo repository at %s", root)
    return root


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:  # uvloop does not build on Windows
        return asyncio.new_event_loop()


def _run_in_loop(coro: Any) -> Any:
    loop = _new_loop()
    asyncio.set_event_loop(loop)
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "demo-repo":
        from serve.demo import write_demo_repository

        names = write_demo_repository(args.directory)
        print(f"wrote demo model repository with {', '.join(names)} to {args.directory}")
        return 0
    settings = settings_from_args(args)
    _setup_logging(settings.log_level)
    if args.command == "baseline":
        from serve.baseline.command import run as run_baseline

        return run_baseline(args)
    if args.command == "monitor":
        from serve.monitor.command import run as run_monitor

        return run_monitor(args)
    if args.command == "run":
        from serve.errors import ServeError
        from serve.server import run_server

        try:
            _run_in_loop(run_server(settings, _repository_root(settings)))
        except OSError as exc:
            logging.getLogger("serve").error("%s", exc)
            return 1
        except ServeError as exc:  # e.g. --load-model naming a model the repository does not have
            logging.getLogger("serve").error("cannot start: %s", exc.message)
            return 1
        return 0
    if args.command == "validate":
        from serve.validate import validate_repository

        if settings.model_repository is None:
            raise SystemExit("serve validate: --model-repository is required")
        return int(_run_in_loop(validate_repository(settings, _repository_root(settings))))
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
