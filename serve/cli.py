"""The `serve` command line: `serve run | validate | demo-repo | baseline | monitor | rollout`.

The flags of `serve run` and `serve validate` are derived from the settings' fields
(serve/settings.py), as are their environment variables SERVE_<FLAG> (dashes become
underscores, e.g. SERVE_HTTP_PORT); a flag on the command line wins.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from serve import __version__, settings
from serve.settings import ServerSettings, SettingsError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="serve",
        description="Serve ONNX models over the Open Inference Protocol (KServe V2) on HTTP and gRPC.",
    )
    parser.add_argument("--version", action="version", version=f"serve {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="start the server", description="Start the HTTP and gRPC server.")
    settings.add_arguments(run, "run")

    validate = sub.add_parser(
        "validate",
        help="load every model and run one inference each; non-zero exit if any fails",
        description="Load every model exactly as the server would, run one inference per model with generated "
        "inputs, print a table, and exit 1 if any model fails. For CI gates on model repositories.",
    )
    settings.add_arguments(validate, "validate")

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
    from serve.rollout_cli import add_arguments as add_rollout_arguments

    add_rollout_arguments(
        sub.add_parser(
            "rollout",
            help="a running server's rollout of a model: status, set, promote, abort",
            description="Read and change a model's rollout (canary, A/B, shadow) on a running server, over its "
            "HTTP API; a refused call exits 2 with the server's reason.",
        )
    )
    return parser


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


def _run_workers(settings: ServerSettings, root: Path) -> int:
    # The run directory (and prometheus_client's multiprocess mode) before anything imports the client.
    from serve.workers.rundir import prepare_run_dir

    run_dir = prepare_run_dir()
    from serve.workers.supervisor import run_supervisor

    try:
        return int(_run_in_loop(run_supervisor(settings, root, run_dir)))
    except OSError as exc:
        logging.getLogger("serve").error("%s", exc)
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "demo-repo":
        from serve.demo import write_demo_repository

        names = write_demo_repository(args.directory)
        print(f"wrote demo model repository with {', '.join(names)} to {args.directory}")
        return 0
    if args.command == "rollout":
        from serve.rollout_cli import run as run_rollout

        return run_rollout(args)
    try:
        server_settings = settings.from_arguments(args)
    except SettingsError as exc:
        print(f"serve {args.command}: {exc}", file=sys.stderr)
        return 2
    _setup_logging(server_settings.log_level)
    if args.command == "baseline":
        from serve.baseline.command import run as run_baseline

        return run_baseline(args)
    if args.command == "monitor":
        from serve.monitor.command import run as run_monitor

        return run_monitor(args)
    if args.command == "run":
        from serve.cpus import resolve_workers
        from serve.preflight import PreflightError, preflight

        root = _repository_root(server_settings)
        try:
            preflight(server_settings, root)  # before any model loads: a taken port must not wait for them
        except PreflightError as exc:
            print(f"serve run: {exc.message}", file=sys.stderr)
            return 1
        if resolve_workers(server_settings.workers) > 1:
            return _run_workers(server_settings, root)
        from serve.errors import ServeError
        from serve.server import run_server

        try:
            _run_in_loop(run_server(server_settings, root))
        except OSError as exc:
            logging.getLogger("serve").error("%s", exc)
            return 1
        except ServeError as exc:  # e.g. --load-model naming a model the repository does not have
            logging.getLogger("serve").error("cannot start: %s", exc.message)
            return 1
        return 0
    if args.command == "validate":
        from serve.validate import validate_repository

        if server_settings.model_repository is None:
            raise SystemExit("serve validate: --model-repository is required")
        return int(_run_in_loop(validate_repository(server_settings, _repository_root(server_settings))))
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
