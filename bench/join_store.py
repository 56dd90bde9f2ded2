"""What keeping predictions for their labels costs (issue 21): the join store's memory stays bounded, and
recording every answered request costs the hot path ≤ 3 % at c=64.

* ``memory``: one JoinStore (``--max-rows``, default 1,000,000) of a single-row binary classifier, fed
  ``--predictions`` (default 3,000,000) predictions with ids as the server mints them; at each checkpoint the
  Python heap it holds (tracemalloc), the process's RSS growth and the store's own estimate, and the cost of
  ``record`` per call with the longest single call (how long it can hold the event loop). Past ``max_rows``
  every figure must stay flat. ``--trace`` adds the Python heap as tracemalloc counts it (and slows the calls).
* ``hot-path``: two `serve run` processes over the same small model (bench/throughput.py's 32-256-256-8 MLP,
  a classifier by its FP32 [8] output): one keeping predictions (the default), one with
  ``--feedback-retention-s 0``. They run one at a time, alternating in each round, at c=64 over gRPC and HTTP
  binary tensors (h2load); it prints req/s and server CPU per request of each and their ratio.

    python -m bench.join_store memory [--predictions 3000000] [--max-rows 1000000]
    python -m bench.join_store hot-path [--duration 5] [--rounds 3] [--protocols grpc,http]
"""

from __future__ import annotations

import argparse
import gc
import resource
import shutil
import statistics
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

from bench._harness import ServerProcess, start_server
from bench.throughput import MODELS, run_point, write_repository
from serve.ground_truth.store import JoinStore
from serve.ground_truth.targets import Target

CHECKPOINTS = (250_000, 500_000, 1_000_000, 2_000_000, 3_000_000)


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def memory(args: argparse.Namespace) -> None:
    target = Target("probabilities", "classification", 2, ("0", "1"))
    store = JoinStore(target, window_s=60.0, retention_s=86_400.0, max_rows=args.max_rows)
    rng = np.random.default_rng(0)
    scores = rng.random((4096, 1)).astype(np.float32)
    rows = [np.concatenate([s, 1 - s])[None, :] for s in scores]  # one request's [1, 2] output, as views are
    prefix = "8f3a9c21"
    gc.collect()
    if args.trace:  # the Python heap's own count; it slows every allocation down, so timings are then not the store's
        tracemalloc.start()
    rss0 = _rss_mb()
    done = 0
    print(f"{'predictions':>12s} {'held':>10s} {'heap MiB':>9s} {'RSS +MiB':>9s} {'store MiB':>9s} {'B/held':>7s} "
          f"{'record us':>9s} {'longest ms':>10s}")  # fmt: skip
    clock = time.perf_counter
    for checkpoint in [c for c in CHECKPOINTS if c <= args.predictions] or [args.predictions]:
        t0 = clock()
        longest = 0.0  # the longest single record(): how long it can hold the event loop
        for i in range(done, checkpoint):
            started = clock()
            store.record(f"{prefix}-{i}", rows[i & 4095])
            longest = max(longest, clock() - started)
        store.windows()  # folds whatever is pending, as the next feedback call or export would
        per_call = (clock() - t0) / (checkpoint - done) * 1e6
        done = checkpoint
        heap = tracemalloc.get_traced_memory()[0] / 2**20 if args.trace else float("nan")
        held = store.predictions_held
        print(f"{done:12,d} {held:10,d} {heap:9.1f} {_rss_mb() - rss0:9.1f} {store.memory_bytes() / 2**20:9.1f} "
              f"{store.memory_bytes() / max(1, held):7.0f} {per_call:9.2f} {longest * 1e3:10.1f}")  # fmt: skip
    if args.trace:
        tracemalloc.stop()


def hot_path(args: argparse.Namespace) -> None:
    if shutil.which("h2load") is None:
        raise SystemExit("h2load not found: apt-get install nghttp2-client")
    dims = MODELS["small"]
    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        write_repository(tmp / "models", ["small"], 1)
        servers: dict[str, ServerProcess] = {
            "kept": start_server(tmp / "models", log=tmp / "kept.log"),
            "off": start_server(tmp / "models", "--feedback-retention-s", "0", log=tmp / "off.log"),
        }
        try:
            for round_index in range(args.rounds):
                order = ["kept", "off"] if round_index % 2 == 0 else ["off", "kept"]
                for protocol in args.protocols.split(","):
                    for name in order:
                        p = run_point(servers[name], "small", dims, protocol, args.concurrency, 1, args.duration, tmp)
                        cpu_us = p.server_cpu / p.requests_per_s * 1e6 if p.requests_per_s else float("nan")
                        results.setdefault((protocol, name), []).append((p.requests_per_s, cpu_us))
                        print(f"round {round_index} {protocol:5s} {name:5s} {p.requests_per_s:9,.0f} req/s "
                              f"{cpu_us:6.0f} us/req  avg batch {p.avg_batch:5.1f}  failed {p.failed}",
                              flush=True)  # fmt: skip
        finally:
            for server in servers.values():
                server.stop()
    print()
    # The machine is shared: each round's two points ran back to back, so the median of the rounds' own ratios is
    # the figure that noise moves least; the means are shown too.
    print(f"{'proto':5s} {'kept req/s':>10s} {'off req/s':>10s} {'kept/off':>8s} {'median':>7s} {'kept us':>8s} "
          f"{'off us':>8s} {'cpu ratio':>9s} {'median':>7s}")  # fmt: skip
    for protocol in args.protocols.split(","):
        kept, off = results[(protocol, "kept")], results[(protocol, "off")]
        rate_k, rate_o = statistics.mean(r for r, _ in kept), statistics.mean(r for r, _ in off)
        cpu_k, cpu_o = statistics.mean(c for _, c in kept), statistics.mean(c for _, c in off)
        rate_median = statistics.median(k[0] / o[0] for k, o in zip(kept, off, strict=True))
        cpu_median = statistics.median(k[1] / o[1] for k, o in zip(kept, off, strict=True))
        print(f"{protocol:5s} {rate_k:10,.0f} {rate_o:10,.0f} {rate_k / rate_o:8.1%} {rate_median:7.1%} {cpu_k:8.0f} "
              f"{cpu_o:8.0f} {cpu_k / cpu_o:9.1%} {cpu_median:7.1%}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    mem = sub.add_parser("memory", help="the join store's memory under many predictions and no labels")
    mem.add_argument("--predictions", type=int, default=3_000_000)
    mem.add_argument("--max-rows", type=int, default=1_000_000)
    mem.add_argument("--trace", action="store_true", help="also count the Python heap with tracemalloc (slow)")
    hot = sub.add_parser("hot-path", help="req/s and CPU per request with and without keeping predictions")
    hot.add_argument("--duration", type=float, default=5)
    hot.add_argument("--rounds", type=int, default=3)
    hot.add_argument("--concurrency", type=int, default=64)
    hot.add_argument("--protocols", default="grpc,http")
    args = parser.parse_args()
    memory(args) if args.what == "memory" else hot_path(args)


if __name__ == "__main__":
    main()
