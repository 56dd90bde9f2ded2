"""Throughput and latency of the server under concurrency, as ratios to raw onnxruntime.

Generates its models deterministically (a small 32-256-256-8 MLP and a compute-heavy
512-2048-2048-512 MLP, plus the heavy one with batching disabled), starts the server, and
drives it with h2load (Debian package nghttp2-client): HTTP/1.1 binary tensors with --h1,
and gRPC by posting a pre-encoded ModelInferRequest with gRPC framing over HTTP/2. A Python
client tops out at a few thousand requests/s, so it would measure itself, not the server.

For every point it prints requests/s, rows/s, p50/p99 latency (from h2load's per-request
log), the average batch size from the server's /stats, server and client CPU use (the server's
whole process tree: supervisor and workers), memory per worker process (RSS and PSS), and the
ratio of rows/s to raw onnxruntime in-process at its best batch size, measured in this run.
With ``--workers 1,2`` (or ``auto``) it runs the plan once per worker count, in rounds that
alternate the counts so that the machine's noise falls on all of them, and prints the scaling
ratio of each count to one worker.

    python -m bench.throughput [--duration 5] [--models small,wide] [--protocols grpc,http] [--workers 1,2]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import psutil

from bench._harness import HOST, ServerProcess, grpc_request_bytes, http_binary_body, start_server
from serve.cpus import resolve_workers
from serve.modelgen import mlp, save

MODELS = {"small": [32, 256, 256, 8], "wide": [512, 2048, 2048, 512]}
MAX_BATCH = 64
CONFIG = """name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: {max_batch}
{batching}
instance_group [{{ count: {instances} kind: KIND_CPU }}]
"""


@dataclass
class Point:
    workers: str
    model: str
    protocol: str
    concurrency: int
    rows: int
    requests_per_s: float
    rows_per_s: float
    p50_ms: float
    p99_ms: float
    failed: int
    avg_batch: float
    server_cpu: float
    client_cpu: float
    rss_mb: float  # per worker process (the single process without --workers)
    pss_mb: float  # the same, shared pages divided among the processes that share them


def write_repository(root: Path, models: list[str], instances: int) -> None:
    for key in models:
        model = mlp(MODELS[key], seed=1)
        for name, batching in ((key, "dynamic_batching { }"), (f"{key}_nobatch", "")):
            save(model, root / name / "1" / "model.onnx")
            (root / name / "config.pbtxt").write_text(
                CONFIG.format(name=name, max_batch=MAX_BATCH, batching=batching, instances=instances)
            )


def raw_ceiling(path: Path, dims: list[int], seconds: float = 1.5) -> tuple[int, float]:
    """Best rows/s of onnxruntime in-process over a few batch sizes (2 intra-op threads, no spinning)."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = psutil.cpu_count() or 2
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    best = (1, 0.0)
    for batch in (1, 4, 16, 32, 64):
        x = np.random.default_rng(0).standard_normal((batch, dims[0])).astype(np.float32)
        for _ in range(5):
            session.run(None, {"input": x})
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            session.run(None, {"input": x})
            n += 1
        rate = n * batch / (time.perf_counter() - t0)
        if rate > best[1]:
            best = (batch, rate)
    return best


def stats(port: int, model: str) -> tuple[int, int]:
    with urllib.request.urlopen(f"http://{HOST}:{port}/v2/models/{model}/stats") as r:
        s = json.load(r)["model_stats"][0]
    return int(s["inference_count"]), int(s["execution_count"])


def server_tree(server: ServerProcess) -> list[psutil.Process]:
    """The server's processes: the supervisor and its workers, or the single server process."""
    root = psutil.Process(server.process.pid)
    return [root, *root.children(recursive=True)]


def tree_cpu(tree: list[psutil.Process]) -> float:
    total = 0.0
    for process in tree:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def worker_memory(tree: list[psutil.Process]) -> tuple[float, float]:
    """Mean RSS and PSS (MiB) of the processes that serve: the workers, or the single process."""
    serving = tree[1:] or tree
    rss, pss = [], []
    for process in serving:
        try:
            info = process.memory_full_info()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        rss.append(info.rss / 2**20)
        pss.append(getattr(info, "pss", info.rss) / 2**20)
    return (statistics.mean(rss), statistics.mean(pss)) if rss else (float("nan"), float("nan"))


def wait_for_workers(server: ServerProcess, count: int, timeout_s: float = 120) -> None:
    """Until every worker serves: the first one already answers /v2/health/ready."""
    if count <= 1:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"http://{HOST}:{server.http_port}/metrics", timeout=5) as r:
            for line in r.read().decode().splitlines():
                if line.startswith("serve_workers ") and float(line.split()[1]) >= count:
                    return
        time.sleep(0.2)
    raise RuntimeError(f"{count} workers did not start")


GRPC_CONNECTIONS = 16


def h2load(
    url: str,
    body: Path,
    concurrency: int,
    duration: float,
    protocol: str,
    log: Path,
    extra_headers: list[str],
    rate: float | None = None,
) -> tuple[int, int, list[float], float]:
    """``rate``: offer this many requests per second in all (h2load --rps, split over its clients) instead
    of sending each request as soon as the last one is answered."""
    if protocol == "http":
        clients = concurrency
        shape = ["-c", str(concurrency), "-m", "1", "--h1"]
    else:
        # SO_REUSEPORT spreads connections, not streams: with only 4 the kernel's hash often puts 3
        # or 4 of them on one of two workers. 16 spread evenly enough to measure workers by.
        clients = min(concurrency, GRPC_CONNECTIONS)
        shape = ["-c", str(clients), "-m", str(max(1, concurrency // clients))]
    if rate is not None:
        shape += ["--rps", f"{rate / clients:g}"]
    log.unlink(missing_ok=True)  # h2load appends to its log file: each point reads only its own
    args = [
        "h2load",
        *shape,
        "-t",
        "1",
        "-D",
        f"{duration:g}",
        "-d",
        str(body),
        "--log-file",
        str(log),
        "--warm-up-time",
        "1",
    ]
    for header in extra_headers:
        args += ["-H", header]
    process = psutil.Popen([*args, url], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out, _ = process.communicate()
    # cpu_times of a reaped child are gone; h2load's own user+sys comes from the children total.
    text = out.decode()
    succeeded = failed = 0
    for line in text.splitlines():
        if line.startswith("requests:"):
            parts = line.replace(",", "").split()
            succeeded = int(parts[parts.index("succeeded") - 1])
            failed = int(parts[parts.index("failed") - 1]) + int(parts[parts.index("errored") - 1])
    if not log.exists():
        raise RuntimeError(f"h2load wrote no log:\n{text}")
    latencies = []
    for line in log.read_text().splitlines():
        cols = line.split("\t")
        if len(cols) >= 3 and cols[1] == "200":
            latencies.append(int(cols[2]) / 1000.0)
    return succeeded, failed, latencies, 0.0


def run_point(
    server: ServerProcess,
    model: str,
    dims: list[int],
    protocol: str,
    concurrency: int,
    rows: int,
    duration: float,
    tmp: Path,
    workers: str = "1",
    rate: float | None = None,
) -> Point:
    x = np.random.default_rng(0).standard_normal((rows, dims[0])).astype(np.float32)
    body_path = tmp / f"body-{protocol}-{rows}.bin"
    if protocol == "http":
        body, header_len = http_binary_body("input", x, "FP32")
        body_path.write_bytes(body)
        url = f"http://{HOST}:{server.http_port}/v2/models/{model}/infer"
        headers = [f"Inference-Header-Content-Length: {header_len}", "Content-Type: application/octet-stream"]
    else:
        message = grpc_request_bytes(model, "input", x, "FP32")
        body_path.write_bytes(b"\x00" + len(message).to_bytes(4, "big") + message)
        url = f"http://{HOST}:{server.grpc_port}/inference.GRPCInferenceService/ModelInfer"
        headers = ["content-type: application/grpc", "te: trailers"]
    tree = server_tree(server)
    before_stats = stats(server.http_port, model)
    cpu_before = tree_cpu(tree)
    children_before = psutil.Process().cpu_times()
    t0 = time.perf_counter()
    log = tmp / "h2load.log"
    ok, failed, latencies, _ = h2load(url, body_path, concurrency, duration, protocol, log, headers, rate)
    elapsed = time.perf_counter() - t0
    cpu_after = tree_cpu(tree)
    children_after = psutil.Process().cpu_times()
    after_stats = stats(server.http_port, model)
    measured = duration  # h2load -D counts the measurement period only (after warm-up)
    rows_done = after_stats[0] - before_stats[0]
    executions = max(1, after_stats[1] - before_stats[1])
    server_cpu = (cpu_after - cpu_before) / elapsed
    rss_mb, pss_mb = worker_memory(tree)
    client_cpu = (
        children_after.children_user
        + children_after.children_system
        - children_before.children_user
        - children_before.children_system
    ) / elapsed
    lat = np.asarray(latencies) if latencies else np.asarray([float("nan")])
    return Point(
        workers=workers,
        model=model,
        protocol=protocol,
        concurrency=concurrency,
        rows=rows,
        requests_per_s=ok / measured,
        rows_per_s=ok * rows / measured,
        p50_ms=float(np.percentile(lat, 50)),
        p99_ms=float(np.percentile(lat, 99)),
        failed=failed,
        avg_batch=rows_done / executions,
        server_cpu=server_cpu,
        client_cpu=client_cpu,
        rss_mb=rss_mb,
        pss_mb=pss_mb,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=5, help="seconds measured per point")
    parser.add_argument("--models", default="small,wide")
    parser.add_argument("--protocols", default="grpc,http")
    parser.add_argument("--concurrency", default="1,8,64")
    parser.add_argument("--instances", type=int, default=1, help="instance_group count of the bench models")
    parser.add_argument("--workers", default="1", help="worker counts to compare, e.g. 1,2 or 1,auto")
    parser.add_argument("--rounds", type=int, default=1, help="rounds over the worker counts (alternating)")
    parser.add_argument("--no-nobatch", action="store_true", help="skip the batching-disabled comparison")
    parser.add_argument("--no-batch16", action="store_true", help="skip the 16-row points")
    parser.add_argument("--server-arg", action="append", default=[], help="extra `serve run` argument")
    parser.add_argument("--json", type=Path, help="also write the points as JSON here")
    parser.add_argument(
        "--compare-stats",
        action="store_true",
        help="only concurrency 64: input statistics on vs off (--no-stats), as a ratio",
    )
    args = parser.parse_args()
    if args.compare_stats:
        compare_stats(args)
        return
    if shutil.which("h2load") is None:
        raise SystemExit("h2load not found: apt-get install nghttp2-client")
    models = args.models.split(",")
    protocols = args.protocols.split(",")
    levels = [int(c) for c in args.concurrency.split(",")]
    worker_counts = args.workers.split(",")
    points: list[Point] = []
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        repo = tmp / "models"
        write_repository(repo, models, args.instances)
        ceilings = {m: raw_ceiling(repo / m / "1" / "model.onnx", MODELS[m]) for m in models}
        for m, (batch, rate) in ceilings.items():
            print(f"raw onnxruntime {m}: best {rate:,.0f} rows/s at batch {batch}", flush=True)
        plan = []
        for m in models:
            for p in protocols:
                plan += [(m, p, c, 1) for c in levels] + ([] if args.no_batch16 else [(m, p, 8, 16)])
            if not args.no_nobatch and m == "wide":
                plan += [(f"{m}_nobatch", p, 64, 1) for p in protocols]
        for _round in range(args.rounds):
            for workers in worker_counts:
                server = start_server(repo, "--workers", workers, *args.server_arg, log=tmp / "server.log")
                try:
                    wait_for_workers(server, resolve_workers(workers))
                    for model, protocol, concurrency, rows in plan:
                        dims = MODELS[model.removesuffix("_nobatch")]
                        point = run_point(server, model, dims, protocol, concurrency, rows, args.duration, tmp, workers)
                        points.append(point)
                        print(format_point(point, ceilings[model.removesuffix("_nobatch")][1]), flush=True)
                finally:
                    server.stop()
    print()
    print(table(points, {m: c[1] for m, c in ceilings.items()}))
    if len(worker_counts) > 1:
        print()
        print(scaling(points, worker_counts))
    if args.json:
        args.json.write_text(json.dumps([p.__dict__ for p in points], indent=2))


def scaling(points: list[Point], worker_counts: list[str]) -> str:
    """Requests/s of every worker count relative to the first, per point, averaged over rounds."""
    base = worker_counts[0]
    rates: dict[tuple[str, str, int, int, str], list[float]] = {}
    for p in points:
        rates.setdefault((p.model, p.protocol, p.concurrency, p.rows, p.workers), []).append(p.requests_per_s)
    lines = [
        f"{'model':14s} {'proto':5s} {'conc':>4s} {'rows':>4s} "
        + " ".join(f"{w + ' : ' + base:>10s}" for w in worker_counts[1:])
    ]
    for key in sorted({k[:4] for k in rates}):
        one = statistics.mean(rates[(*key, base)])
        ratios = [statistics.mean(rates.get((*key, w), [float("nan")])) / one for w in worker_counts[1:]]
        lines.append(f"{key[0]:14s} {key[1]:5s} {key[2]:4d} {key[3]:4d} " + " ".join(f"{r:10.2f}" for r in ratios))
    return "\n".join(lines)


def compare_stats(args: argparse.Namespace) -> None:
    """Throughput at concurrency 64 with statistics on and off, alternating servers to share the noise."""
    models = args.models.split(",")
    protocols = args.protocols.split(",")
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        repo = tmp / "models"
        write_repository(repo, models, args.instances)
        rates: dict[tuple[str, str, str], list[float]] = {}
        for _round in range(2):
            for mode in ("--stats", "--no-stats"):
                server = start_server(repo, mode, *args.server_arg, log=tmp / "server.log")
                try:
                    for m in models:
                        for p in protocols:
                            point = run_point(server, m, MODELS[m], p, 64, 1, args.duration, tmp)
                            rates.setdefault((m, p, mode), []).append(point.rows_per_s)
                            print(f"{mode:10s} {format_point(point, float('nan'))}", flush=True)
                finally:
                    server.stop()
    print()
    print(f"{'model':8s} {'proto':5s} {'stats on rows/s':>16s} {'stats off rows/s':>17s} {'on / off':>9s}")
    for m in models:
        for p in protocols:
            on = statistics.mean(rates[(m, p, "--stats")])
            off = statistics.mean(rates[(m, p, "--no-stats")])
            print(f"{m:8s} {p:5s} {on:16,.0f} {off:17,.0f} {on / off:9.1%}")


HEADER = (
    f"{'wrk':>4s} {'model':14s} {'proto':5s} {'conc':>4s} {'rows':>4s} {'req/s':>9s} {'rows/s':>9s} {'p50 ms':>7s} "
    f"{'p99 ms':>7s} {'batch':>6s} {'srv cpu':>7s} {'cli cpu':>7s} {'vs raw':>7s} {'fail':>5s} {'RSS MiB':>8s} "
    f"{'PSS MiB':>8s}"
)


def format_point(p: Point, ceiling: float) -> str:
    return (
        f"{p.workers:>4s} {p.model:14s} {p.protocol:5s} {p.concurrency:4d} {p.rows:4d} {p.requests_per_s:9,.0f} "
        f"{p.rows_per_s:9,.0f} {p.p50_ms:7.3f} {p.p99_ms:7.3f} {p.avg_batch:6.1f} {p.server_cpu:7.2f} "
        f"{p.client_cpu:7.2f} {p.rows_per_s / ceiling:7.1%} {p.failed:5d} {p.rss_mb:8.0f} {p.pss_mb:8.0f}"
    )


def table(points: list[Point], ceilings: dict[str, float]) -> str:
    lines = [HEADER]
    for p in points:
        lines.append(format_point(p, ceilings[p.model.removesuffix("_nobatch")]))
    nob = {p.protocol: p.rows_per_s for p in points if p.model.endswith("_nobatch")}
    for p in points:
        if p.model == "wide" and p.concurrency == 64 and p.rows == 1 and p.protocol in nob:
            lines.append(f"wide {p.protocol} c64: batching on / off = {p.rows_per_s / nob[p.protocol]:.2f}x")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
