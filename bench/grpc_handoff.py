"""One gRPC connection, HTTP/2 terminated once, calls handed to workers: what it costs and what it buys.

bench/grpc_balancing.py showed that a proxy hop (Envoy) spreads one connection's calls over two workers but
costs more CPU per call than it frees. This measures the other design the issue names: a front process that
terminates HTTP/2 and gRPC once (pygrpc-native's Rust front) and hands each call's bytes to a worker over a
Unix socket (bench/_handoff.py, a prototype that carries no deadline, metadata, cancellation or TLS). Over
ONE connection with 64 streams (h2load ``-c 1 -m 64``), point by point (A B C ...):

* ``native``: ``serve run --grpc-frontend native``, one process (the front end in the worker);
* ``handoff x1``: the front process and one worker;
* ``handoff x2``: the front process and two workers.

It prints req/s, each process's CPU, the CPU of all of them per answered call, and the ratios to ``native``.

    python -m bench.grpc_handoff [--duration 6] [--rounds 3]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench._harness import free_port
from bench.grpc_balancing import Target, run_rounds, serve, summary, workspace
from bench.grpc_servicer import check_answer, wait_for_grpc


def start_handoff(name: str, repo: Path, tmp: Path, workers: int, message: bytes) -> Target:
    target = Target(name, free_port())
    sockets = [str(tmp / f"{name.replace(' ', '-')}-w{i}.sock") for i in range(workers)]
    for index, path in enumerate(sockets):
        target.processes[f"worker {index + 1}"] = subprocess.Popen(
            [sys.executable, "-m", "bench._handoff", "worker", "--socket", path, "--repository", str(repo)],
            stdout=subprocess.DEVNULL,
        )
    target.processes["front"] = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench._handoff",
            "front",
            "--port",
            str(target.grpc_port),
            "--workers",
            ",".join(sockets),
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        wait_for_grpc(target.grpc_port, target.processes["front"], message)
        check_answer(target.grpc_port)
    except BaseException:
        target.stop()
        raise
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=6, help="seconds measured per point")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if shutil.which("h2load") is None:
        raise SystemExit("h2load not found: apt-get install nghttp2-client")
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        repo, message, body = workspace(tmp)
        targets: list[Target] = []
        try:
            process, port = serve(repo, "native")
            targets.append(Target("native", port, {"worker": process}))
            wait_for_grpc(port, process, message)
            targets.append(start_handoff("handoff x1", repo, tmp, 1, message))
            targets.append(start_handoff("handoff x2", repo, tmp, 2, message))
        except BaseException:
            for target in targets:
                target.stop()
            raise
        print("one connection, 64 streams")
        points = run_rounds(targets, body, args.duration, args.rounds)
    print(summary(points))


if __name__ == "__main__":
    main()
