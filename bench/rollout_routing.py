"""The cost of a rollout on the hot path (issue 20): routing ≤ 2 % at c=64 on both protocols, and the
client p99 with a 100 % shadow within 1.2x of without.

One `serve run` process serves three models with the same two ONNX files (bench/throughput.py's small
32-256-256-8 MLP, version 1 and version 2 with other weights, ``version_policy: { all: {} }``):

- ``plain``: no rollout; unversioned requests go to the latest version;
- ``routed``: ``rollout.yaml`` primary 1, candidate 2 at 100 %: every request goes through the router
  (its random draw, the arm's lookup, the role on its event) and is answered by version 2. The same
  batching as ``plain``: what is measured is the router on the hot path. (A 50/50 split also halves the
  batches each version forms, so it costs what running two models on half the traffic each costs, not
  what routing costs: measured once on this machine at c=64, 0.82x plain's req/s on gRPC, 0.68x on HTTP.)
- ``shadowed``: ``rollout.yaml`` primary 1, shadow 2 at 100 %: every request is answered by 1 and
  mirrored to 2.

Both rollouts' gates are set so the analyser never decides (a sample minimum no run reaches, the gates
off): it evaluates every interval, as in production, and the weights stay as written.

h2load (nghttp2-client) drives the models over HTTP/1.1 binary tensors and over gRPC, as bench/throughput.py
does: ``plain`` and ``routed`` at ``--concurrency`` (64), as fast as they answer; ``plain`` and ``shadowed``
at an offered rate (``--shadow-rate`` requests per second from ``--shadow-concurrency`` clients, h2load
--rps), as production traffic arrives. The shadow doubles the model's work, so a closed loop that saturates
the CPUs measures only the longer queue every request then waits in; the issue's "the client's response
does not wait for it" is measured where the server has room for the copies. A round measures every point once, in a
different order each round, so that the machine's noise falls on all of them. The server's outcome
counters (``serve_requests_total``) count the failures h2load cannot see (gRPC errors travel in trailers)
and the shadow's runs.

Per protocol it prints req/s, server CPU per request and the routed : plain ratio of both (the mean of
the rounds, and each round's own), and the shadowed : plain ratio of the client p99.

    python -m bench.rollout_routing [--duration 5] [--rounds 3] [--protocols grpc,http] [--workers 1]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from bench._harness import HOST, ServerProcess, start_server
from bench.throughput import MODELS, run_point, wait_for_workers
from serve.cpus import resolve_workers
from serve.modelgen import mlp, save

DIMS = MODELS["small"]
PLAIN, ROUTED, SHADOWED = "plain", "routed", "shadowed"
TARGETS = (PLAIN, ROUTED, SHADOWED)
CONFIG = """name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: 64
dynamic_batching {{ }}
version_policy: {{ all: {{}} }}
instance_group [{{ count: 1 kind: KIND_CPU }}]
"""
# No run reaches the sample minimum, and no gate is on: the analyser evaluates and always says inconclusive.
QUIET_GATES = """gates:
  min_requests: 1000000000
  max_error_rate_increase: null
  max_p99_ratio: null
  max_disagreement: null
"""
ROLLOUTS = {
    PLAIN: None,
    ROUTED: "primary: 1\ncandidates:\n  - {version: 2, percent: 100}\n" + QUIET_GATES,
    SHADOWED: "primary: 1\nshadow: {version: 2, percent: 100}\n" + QUIET_GATES,
}
NOT_FAILED = ("success", "cancelled")  # h2load resets the streams still open when it stops: cancelled


@dataclass(frozen=True)
class Outcomes:
    """serve_requests_total of one model, summed over versions and protocols."""

    answered: int = 0  # client requests (every role but shadow), any outcome
    failed: int = 0  # of those, answered with an error (any outcome but success and cancelled)
    shadow: int = 0  # mirrored copies the shadow ran (role="shadow"), any outcome

    def __add__(self, other: Outcomes) -> Outcomes:
        return Outcomes(self.answered + other.answered, self.failed + other.failed, self.shadow + other.shadow)

    def __sub__(self, other: Outcomes) -> Outcomes:
        return Outcomes(self.answered - other.answered, self.failed - other.failed, self.shadow - other.shadow)


@dataclass(frozen=True)
class RoutingPoint:
    round: int
    protocol: str
    target: str  # plain, routed or shadowed
    concurrency: int
    requests_per_s: float
    p99_ms: float
    cpu_us_per_request: float  # server CPU (all its processes) per successful request
    failed: int  # h2load's failures plus the server's error outcomes
    answered: int  # client requests the server counted over the point, warm-up included
    shadow_runs: int  # mirrored copies run over the same window


def write_repository(root: Path) -> None:
    versions = {v: mlp(DIMS, seed=v) for v in (1, 2)}
    for name, rollout in ROLLOUTS.items():
        (root / name).mkdir(parents=True)
        (root / name / "config.pbtxt").write_text(CONFIG.format(name=name))
        for version, model in versions.items():
            save(model, root / name / str(version) / "model.onnx")
        if rollout is not None:
            (root / name / "rollout.yaml").write_text(rollout)


def outcomes_by_model(exposition: str) -> dict[str, Outcomes]:
    """Client requests, failures and shadow runs per model from a /metrics page."""
    counts: dict[str, Outcomes] = {}
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name != "serve_requests_total":
                continue
            model, count = sample.labels.get("model", ""), int(sample.value)
            if sample.labels.get("role") == "shadow":
                one = Outcomes(shadow=count)
            else:
                one = Outcomes(answered=count, failed=0 if sample.labels.get("outcome") in NOT_FAILED else count)
            counts[model] = counts.get(model, Outcomes()) + one
    return counts


def scrape(server: ServerProcess) -> dict[str, Outcomes]:
    with urllib.request.urlopen(f"http://{HOST}:{server.http_port}/metrics", timeout=10) as r:
        return outcomes_by_model(r.read().decode())


def round_plan(round_index: int, concurrency: int, shadow_concurrency: int) -> list[tuple[str, int]]:
    """The (target, concurrency) points of a round, rotated by the round so that each is measured first,
    in the middle and last in turn; plain is measured once where both concurrencies are the same."""
    points = list(
        dict.fromkeys(
            [(PLAIN, concurrency), (ROUTED, concurrency), (PLAIN, shadow_concurrency), (SHADOWED, shadow_concurrency)]
        )
    )
    shift = round_index % len(points)
    return points[shift:] + points[:shift]


def measure(
    server: ServerProcess,
    round_index: int,
    protocol: str,
    target: str,
    concurrency: int,
    args: argparse.Namespace,
    tmp: Path,
) -> RoutingPoint:
    before = scrape(server).get(target, Outcomes())
    rate = args.shadow_rate if concurrency == args.shadow_concurrency else None
    point = run_point(server, target, DIMS, protocol, concurrency, 1, args.duration, tmp, args.workers, rate)
    moved = scrape(server).get(target, Outcomes()) - before
    done = point.requests_per_s
    return RoutingPoint(
        round=round_index,
        protocol=protocol,
        target=target,
        concurrency=concurrency,
        requests_per_s=done,
        p99_ms=point.p99_ms,
        # Cores busy over the point / requests per second: the server's CPU seconds per request.
        cpu_us_per_request=point.server_cpu / done * 1e6 if done else float("nan"),
        failed=point.failed + moved.failed,
        answered=moved.answered,
        shadow_runs=moved.shadow,
    )


def _mean(points: Iterable[RoutingPoint], field: str) -> float:
    values = [float(getattr(p, field)) for p in points]
    return statistics.mean(values) if values else float("nan")


def _pick(
    points: Sequence[RoutingPoint], protocol: str, target: str, concurrency: int | None = None
) -> list[RoutingPoint]:
    """The points of ``target`` (at ``concurrency``, else any) in round order."""
    chosen = (
        p for p in points if p.protocol == protocol and p.target == target and concurrency in (None, p.concurrency)
    )
    return sorted(chosen, key=lambda p: p.round)


def _per_round(base: list[RoutingPoint], other: list[RoutingPoint], field: str) -> str:
    ratios = [getattr(o, field) / getattr(b, field) for b, o in zip(base, other, strict=True)]
    return " ".join(f"{r:.0%}" for r in ratios)


def summary(points: Sequence[RoutingPoint]) -> str:
    """Per protocol: routed : plain (req/s and CPU per request) at the routed points' concurrency and
    shadowed : plain (p99) at the shadowed points', means of the rounds' values, then each round's own ratio."""
    lines = [
        f"{'proto':5s} {'plain req/s':>11s} {'routed req/s':>12s} {'routed/plain':>12s} {'per round':>16s} "
        f"{'plain us/req':>12s} {'routed us/req':>13s} {'cpu ratio':>9s} "
        f"{'plain p99':>9s} {'shadow p99':>10s} {'p99 ratio':>9s} {'per round':>16s} {'shadow ran':>10s} {'failed':>6s}"
    ]
    for protocol in sorted({p.protocol for p in points}):
        routed, shadowed = _pick(points, protocol, ROUTED), _pick(points, protocol, SHADOWED)
        plain = _pick(points, protocol, PLAIN, routed[0].concurrency)
        unshadowed = _pick(points, protocol, PLAIN, shadowed[0].concurrency)
        rate_plain, rate_routed = _mean(plain, "requests_per_s"), _mean(routed, "requests_per_s")
        cpu_plain, cpu_routed = _mean(plain, "cpu_us_per_request"), _mean(routed, "cpu_us_per_request")
        p99_plain, p99_shadow = _mean(unshadowed, "p99_ms"), _mean(shadowed, "p99_ms")
        # The share of the shadowed model's requests that its shadow ran: ≥ 99 % unless copies were shed.
        answered = sum(p.answered for p in shadowed)
        ran = f"{sum(p.shadow_runs for p in shadowed) / answered:.1%}" if answered else "-"
        failed = sum(p.failed for p in points if p.protocol == protocol)
        lines.append(
            f"{protocol:5s} {rate_plain:11,.0f} {rate_routed:12,.0f} {rate_routed / rate_plain:12.1%} "
            f"{_per_round(plain, routed, 'requests_per_s'):>16s} {cpu_plain:12.0f} {cpu_routed:13.0f} "
            f"{cpu_routed / cpu_plain:9.1%} {p99_plain:9.2f} {p99_shadow:10.2f} {p99_shadow / p99_plain:8.2f}x "
            f"{_per_round(unshadowed, shadowed, 'p99_ms'):>16s} {ran:>10s} {failed:6d}"
        )
    routed_at = sorted({p.concurrency for p in points if p.target == ROUTED})
    shadowed_at = sorted({p.concurrency for p in points if p.target == SHADOWED})
    lines.append(f"req/s and CPU at concurrency {routed_at}, p99 at concurrency {shadowed_at}")
    return "\n".join(lines)


def format_point(p: RoutingPoint) -> str:
    return (
        f"round {p.round} {p.protocol:5s} {p.target:9s} c={p.concurrency:<3d} {p.requests_per_s:9,.0f} req/s  "
        f"p99 {p.p99_ms:7.2f} ms  {p.cpu_us_per_request:6.0f} us/req  failed {p.failed}  shadow ran {p.shadow_runs}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=5, help="seconds measured per point")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--protocols", default="grpc,http")
    parser.add_argument("--concurrency", type=int, default=64, help="of the plain and routed points")
    parser.add_argument("--shadow-concurrency", type=int, default=8, help="clients of the plain and shadowed points")
    parser.add_argument(
        "--shadow-rate", type=float, default=400, help="requests per second offered at the plain and shadowed points"
    )
    parser.add_argument("--workers", default="1", help="serve run --workers")
    parser.add_argument("--server-arg", action="append", default=[], help="extra `serve run` argument")
    parser.add_argument("--json", type=Path, help="also write the points as JSON here")
    args = parser.parse_args()
    if shutil.which("h2load") is None:
        raise SystemExit("h2load not found: apt-get install nghttp2-client")
    points: list[RoutingPoint] = []
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        write_repository(tmp / "models")
        server = start_server(tmp / "models", "--workers", args.workers, *args.server_arg, log=tmp / "server.log")
        try:
            wait_for_workers(server, resolve_workers(args.workers))
            for round_index in range(args.rounds):
                for protocol in args.protocols.split(","):
                    for target, concurrency in round_plan(round_index, args.concurrency, args.shadow_concurrency):
                        point = measure(server, round_index, protocol, target, concurrency, args, tmp)
                        points.append(point)
                        print(format_point(point), flush=True)
        finally:
            server.stop()
    print()
    print(summary(points))
    if args.json:
        args.json.write_text(json.dumps([asdict(p) for p in points], indent=2))


if __name__ == "__main__":
    main()
