"""serve's gRPC ModelInfer against a bare grpc.aio echo server, in the same run.

Two server processes, pinned to the same CPUs: (a) ``bench._grpc_echo``, a grpc.aio server whose
ModelInfer returns the request bytes (no protobuf parsed or built), and (b) ``serve run`` on the
small 32-256-256-8 MLP of bench/throughput.py. h2load (nghttp2-client) posts the same pre-encoded
ModelInferRequest to both, pinned to other CPUs, at each concurrency, alternating echo and
servicer point by point (A B A B ...) so that the machine's noise falls on both. It prints each
point (req/s, p50/p99 from h2load's per-request log, server CPU per request) and, per concurrency,
the ratio servicer : echo of the mean req/s.

h2load does not read gRPC trailers, so the servicer's answers are checked separately: one real
call decodes before the run, and its serve_requests_total must count no outcome other than
success during a point (h2load resets the streams still open when it stops: those count as
cancelled, not failed).

    python -m bench.grpc_servicer [--duration 5] [--rounds 3] [--concurrency 1,8,64]
    python -m bench.grpc_servicer --frontends aio,native   # serve on each gRPC front end, side by side
    python -m bench.grpc_servicer --profile out/   # then py-spy both servers at the highest concurrency
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import psutil
from prometheus_client.parser import text_string_to_metric_families

from bench._harness import HOST, free_port, grpc_request_bytes
from bench._pyspy import summarize
from serve.modelgen import mlp, save

MODEL = "small"
DIMS = [32, 256, 256, 8]
CONFIG = """name: "{model}"
platform: "onnxruntime_onnx"
max_batch_size: 64
dynamic_batching {{ {batching} }}
instance_group [{{ count: 1 kind: KIND_CPU }}]
"""
METHOD = "/inference.GRPCInferenceService/ModelInfer"
# serve run --grpc-frontend X is the target named so (grpc.aio's keeps the name older runs used)
TARGET_OF_FRONTEND = {"aio": "servicer", "native": "native"}


@dataclass
class Point:
    target: str  # "echo" or "servicer"
    concurrency: int
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    failed: int
    server_cpu_us: float  # server CPU time per answered request
    avg_batch: float  # rows per model execution (the servicer's /stats); 0 for the echo server


@dataclass
class Target:
    name: str
    process: subprocess.Popen[bytes]
    grpc_port: int
    http_port: int | None = None  # the servicer's, for /stats

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def parse_cpus(text: str) -> set[int] | None:
    return {int(c) for c in text.split(",")} if text else None


def pinned(cpus: set[int] | None) -> Callable[[], None] | None:
    """A Popen preexec_fn that pins the child, and every thread it starts, to ``cpus``."""
    if cpus is None:
        return None
    return lambda: os.sched_setaffinity(0, cpus)


def wait_for_grpc(port: int, process: subprocess.Popen[bytes], body: bytes) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("server exited during start")
        with grpc.insecure_channel(f"{HOST}:{port}") as channel:
            call = channel.unary_unary(METHOD, request_serializer=None, response_deserializer=None)
            try:
                call(body, timeout=2)
                return
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE:
                    raise RuntimeError(f"the first ModelInfer failed: {exc}") from None
        time.sleep(0.2)
    raise RuntimeError("server did not answer gRPC")


def start_echo(cpus: set[int] | None, body: bytes) -> Target:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "bench._grpc_echo", "--host", HOST, "--port", str(port)], preexec_fn=pinned(cpus)
    )
    target = Target("echo", process, port)
    try:
        wait_for_grpc(port, process, body)
    except BaseException:
        target.stop()
        raise
    return target


def start_servicer(
    repo: Path, cpus: set[int] | None, body: bytes, extra: Sequence[str], log: Path, frontend: str = "aio"
) -> Target:
    grpc_port, http_port = free_port(), free_port()
    # The bench's log lives as long as the process.
    out = open(log, "wb")  # noqa: SIM115
    args = [
        *("--model-repository", str(repo), "--host", HOST),
        *("--http-port", str(http_port), "--grpc-port", str(grpc_port), "--log-level", "warning"),
    ]
    process = subprocess.Popen(
        [sys.executable, "-m", "serve", "run", *args, "--grpc-frontend", frontend, *extra],
        stdout=out,
        stderr=subprocess.STDOUT,
        preexec_fn=pinned(cpus),
    )
    target = Target(TARGET_OF_FRONTEND[frontend], process, grpc_port, http_port)
    try:
        wait_for_grpc(grpc_port, process, body)
        check_answer(grpc_port)
    except BaseException:
        target.stop()
        raise
    return target


def check_answer(port: int) -> None:
    """One real ModelInfer through grpcio's stubs: the servicer answers what h2load will send."""
    from serve.protocol import grpc_service_pb2 as pb
    from serve.protocol import grpc_service_pb2_grpc as pb_grpc

    x = np.ones((1, DIMS[0]), dtype=np.float32)
    request = pb.ModelInferRequest(model_name=MODEL)
    request.inputs.add(name="input", datatype="FP32", shape=[1, DIMS[0]])
    request.raw_input_contents.append(x.tobytes())
    with grpc.insecure_channel(f"{HOST}:{port}") as channel:
        reply = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=5)  # type: ignore[no-untyped-call]
    out = np.frombuffer(reply.raw_output_contents[0], dtype=np.float32)
    if out.shape != (DIMS[-1],):
        raise RuntimeError(f"unexpected answer from the servicer: {reply}")


def model_stats(target: Target) -> tuple[Counter[str], int, int]:
    """(failed requests by outcome, rows run, executions) so far; nothing for the echo server."""
    failed: Counter[str] = Counter()
    if target.http_port is None:
        return failed, 0, 0
    base = f"http://{HOST}:{target.http_port}"
    with urllib.request.urlopen(f"{base}/v2/models/{MODEL}/stats") as r:
        stats = json.load(r)["model_stats"][0]
    with urllib.request.urlopen(f"{base}/metrics") as r:
        for family in text_string_to_metric_families(r.read().decode()):
            for sample in family.samples:
                outcome = sample.labels.get("outcome", "")
                if sample.name == "serve_requests_total" and outcome not in ("success", "cancelled"):
                    failed[outcome] += int(sample.value)
    return failed, int(stats["inference_count"]), int(stats["execution_count"])


def h2load(target: Target, body: Path, concurrency: int, duration: float, cpus: set[int] | None, log: Path) -> Point:
    # A handful of connections carrying many streams each, as grpc clients (and perf_analyzer) do.
    clients = min(concurrency, 4)
    args = [
        *("h2load", "-c", str(clients), "-m", str(max(1, concurrency // clients)), "-t", "1"),
        *("-D", f"{duration:g}", "--warm-up-time", "1", "-d", str(body), "--log-file", str(log)),
        *("-H", "content-type: application/grpc", "-H", "te: trailers"),
        f"http://{HOST}:{target.grpc_port}{METHOD}",
    ]
    server = psutil.Process(target.process.pid)
    stats_before = model_stats(target)
    log.unlink(missing_ok=True)
    h2 = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, preexec_fn=pinned(cpus))
    # Server CPU over h2load's measured window only: it starts after the one-second warm-up.
    time.sleep(1.0)
    cpu_before = sum(server.cpu_times()[:2])
    out, _ = h2.communicate()
    cpu = sum(server.cpu_times()[:2]) - cpu_before
    text = out.decode()
    succeeded = failed = 0
    for line in text.splitlines():
        if line.startswith("requests:"):
            words = line.replace(",", "").split()
            succeeded = int(words[words.index("succeeded") - 1])
            failed = int(words[words.index("failed") - 1]) + int(words[words.index("errored") - 1])
    stats_after = model_stats(target)
    outcomes = stats_after[0] - stats_before[0]
    if failed or outcomes:
        print(f"  {target.name} c={concurrency}: h2load failed {failed}, server outcomes {dict(outcomes)}", flush=True)
    failed += sum(outcomes.values())
    executions = stats_after[2] - stats_before[2]
    latencies_ms = [
        int(cols[2]) / 1000.0
        for cols in (line.split("\t") for line in log.read_text().splitlines())
        if len(cols) >= 3 and cols[1] == "200"
    ]
    if not latencies_ms:
        raise RuntimeError(f"h2load recorded no successful request:\n{text}")
    lat = np.asarray(latencies_ms)
    return Point(
        target=target.name,
        concurrency=concurrency,
        requests_per_s=succeeded / duration,
        p50_ms=float(np.percentile(lat, 50)),
        p99_ms=float(np.percentile(lat, 99)),
        failed=failed,
        server_cpu_us=cpu / max(1, succeeded) * 1e6,
        avg_batch=(stats_after[1] - stats_before[1]) / executions if executions else 0.0,
    )


def profile(target: Target, body: Path, concurrency: int, duration: float, args: argparse.Namespace) -> None:
    """py-spy a server (every thread) while h2load loads it; keeps the raw stacks, prints a summary."""
    py_spy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if py_spy is None:
        raise SystemExit("py-spy not found: pip install py-spy")
    args.profile.mkdir(parents=True, exist_ok=True)
    out = args.profile / f"{target.name}-c{concurrency}.txt"
    record = [py_spy, "record", "--pid", str(target.process.pid), "--rate", "500", "--format", "raw", "--threads"]
    record += ["--duration", f"{int(duration) + 1}", "--output", str(out), "--nonblocking"]
    spy = subprocess.Popen(record, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        point = h2load(target, body, concurrency, duration, parse_cpus(args.client_cpus), args.profile / "h2.log")
    finally:
        spy.wait(60)
    print(f"profiled {format_point(point)} -> {out}", flush=True)
    print(summarize(out), flush=True)


HEADER = (
    f"{'target':9s} {'conc':>4s} {'req/s':>9s} {'p50 ms':>7s} {'p99 ms':>7s} {'cpu us/req':>10s} {'batch':>6s} "
    f"{'fail':>5s}"
)


def format_point(p: Point) -> str:
    return (
        f"{p.target:9s} {p.concurrency:4d} {p.requests_per_s:9,.0f} {p.p50_ms:7.3f} {p.p99_ms:7.3f} "
        f"{p.server_cpu_us:10.0f} {p.avg_batch:6.1f} {p.failed:5d}"
    )


def summary(points: list[Point], levels: list[int]) -> str:
    lines = [
        f"{'conc':>4s} {'echo req/s':>11s} {'servicer req/s':>15s} {'ratio':>7s} {'per round':>24s} "
        f"{'echo p50':>9s} {'serv p50':>9s} {'serv p99':>9s}"
    ]
    for c in levels:
        echo = [p for p in points if p.target == "echo" and p.concurrency == c]
        serv = [p for p in points if p.target == "servicer" and p.concurrency == c]
        e_rate = statistics.mean(p.requests_per_s for p in echo)
        s_rate = statistics.mean(p.requests_per_s for p in serv)
        rounds = " ".join(f"{s.requests_per_s / e.requests_per_s:.0%}" for e, s in zip(echo, serv, strict=True))
        lines.append(
            f"{c:4d} {e_rate:11,.0f} {s_rate:15,.0f} {s_rate / e_rate:7.1%} {rounds:>24s} "
            f"{statistics.median(p.p50_ms for p in echo):9.3f} {statistics.median(p.p50_ms for p in serv):9.3f} "
            f"{statistics.median(p.p99_ms for p in serv):9.3f}"
        )
    return "\n".join(lines)


def frontend_summary(points: list[Point], levels: list[int], frontends: list[str]) -> str:
    """serve's servicer on each gRPC front end, side by side: means over rounds, and native : aio."""
    lines = [
        f"{'conc':>4s} {'front end':10s} {'req/s':>9s} {'x echo':>7s} {'cpu us/req':>10s} {'batch':>6s} "
        f"{'p50 ms':>7s} {'p99 ms':>7s}"
    ]
    for c in levels:
        echo = statistics.mean(p.requests_per_s for p in points if p.target == "echo" and p.concurrency == c)
        rates: dict[str, float] = {}
        for frontend in frontends:
            mine = [p for p in points if p.target == TARGET_OF_FRONTEND[frontend] and p.concurrency == c]
            rates[frontend] = statistics.mean(p.requests_per_s for p in mine)
            lines.append(
                f"{c:4d} {frontend:10s} {rates[frontend]:9,.0f} {rates[frontend] / echo:7.2f} "
                f"{statistics.median(p.server_cpu_us for p in mine):10.0f} "
                f"{statistics.mean(p.avg_batch for p in mine):6.1f} {statistics.median(p.p50_ms for p in mine):7.3f} "
                f"{statistics.median(p.p99_ms for p in mine):7.3f}"
            )
        if "aio" in rates and "native" in rates:
            lines.append(f"{c:4d} {'native:aio':10s} {rates['native'] / rates['aio']:9.2f}x")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=5, help="seconds measured per point")
    parser.add_argument("--rounds", type=int, default=3, help="echo/servicer pairs per concurrency")
    parser.add_argument("--concurrency", default="1,8,64")
    default_server, default_client = ("0", "1") if len(os.sched_getaffinity(0)) >= 2 else ("", "")
    parser.add_argument("--server-cpus", default=default_server, help="CPUs of both servers ('' = unpinned)")
    parser.add_argument("--client-cpus", default=default_client, help="CPUs of h2load ('' = unpinned)")
    parser.add_argument("--server-arg", action="append", default=[], help="extra `serve run` argument")
    parser.add_argument("--frontends", default="aio", help="gRPC front ends to run serve on, side by side (aio,native)")
    parser.add_argument(
        "--queue-delay-us",
        type=int,
        default=0,
        help="max_queue_delay_microseconds of the bench model (0 = none, as Triton's default)",
    )
    parser.add_argument("--profile", type=Path, help="then py-spy both servers at the highest concurrency, into here")
    parser.add_argument("--json", type=Path, help="also write the points as JSON here")
    args = parser.parse_args()
    if shutil.which("h2load") is None:
        raise SystemExit("h2load not found: apt-get install nghttp2-client")
    levels = [int(c) for c in args.concurrency.split(",")]
    server_cpus, client_cpus = parse_cpus(args.server_cpus), parse_cpus(args.client_cpus)
    extra = list(args.server_arg)
    if server_cpus and not any(a.startswith("--ort-intra-op-threads") for a in extra):
        # onnxruntime sizes its pool by os.cpu_count(), which ignores the pinning: two threads
        # taking turns on one CPU make every run several times slower than it is.
        extra.append(f"--ort-intra-op-threads={len(server_cpus)}")
    print(
        f"servers on CPUs {args.server_cpus or 'any'}, h2load on CPUs {args.client_cpus or 'any'}; "
        f"serve run {' '.join(extra)}",
        flush=True,
    )
    points: list[Point] = []
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        repo = tmp / "models"
        save(mlp(DIMS, seed=1), repo / MODEL / "1" / "model.onnx")
        delay = f"max_queue_delay_microseconds: {args.queue_delay_us}" if args.queue_delay_us else ""
        (repo / MODEL / "config.pbtxt").write_text(CONFIG.format(model=MODEL, batching=delay))
        x = np.random.default_rng(0).standard_normal((1, DIMS[0])).astype(np.float32)
        message = grpc_request_bytes(MODEL, "input", x, "FP32")
        body = tmp / "body.bin"
        body.write_bytes(b"\x00" + len(message).to_bytes(4, "big") + message)
        frontends = args.frontends.split(",")
        targets = [start_echo(server_cpus, message)]
        try:
            for frontend in frontends:
                log = tmp / f"server-{frontend}.log"
                targets.append(start_servicer(repo, server_cpus, message, extra, log, frontend))
            print(HEADER, flush=True)
            for _ in range(args.rounds):
                for c in levels:
                    for target in targets:
                        point = h2load(target, body, c, args.duration, client_cpus, tmp / "h2.log")
                        points.append(point)
                        print(format_point(point), flush=True)
            if args.profile:
                for target in targets:
                    profile(target, body, max(levels), args.duration, args)
        finally:
            for target in targets:
                target.stop()
    print()
    if "aio" in frontends:
        print(summary(points, levels))
        print()
    print(frontend_summary(points, levels, frontends))
    if args.json:
        args.json.write_text(json.dumps([p.__dict__ for p in points], indent=2))


if __name__ == "__main__":
    main()
