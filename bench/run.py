"""Benchmark matrix: models x protocols x concurrency, with the server's own view beside the client's.

    python -m bench.run                                    # demo repository, server started here
    python -m bench.run --model-repository models --models fraud --concurrency 1,8,32 --duration 30
    python -m bench.run --url http://10.0.0.5:8000 --grpc-port 8001 --models fraud

Each point runs a closed-loop client in this process (one connection per concurrent request, bodies
encoded beforehand, latencies to the nanosecond) for --duration seconds after a --warmup, and reads the
server's /v2/models/{m}/stats (and /metrics, when served) before and after. Writes report.md,
report.json and throughput_vs_p99.png into a timestamped directory under --results-dir.
See bench/README.md for why this client and not locust, and for what each number means.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import orjson

from bench import payloads
from bench._harness import start_server
from serve.demo import write_demo_repository
from serve.runtime.strings import to_ort_strings

DEMO_MODELS = "tabular"
CEILING_BATCHES = (1, 8, 64)
DRAIN_GRACE_S = 30.0  # a point whose requests are still unanswered this long after its end is abandoned


# ---------------------------------------------------------------------------------------------- the server


@dataclass(frozen=True)
class Target:
    http_host: str
    http_port: int
    grpc_port: int
    metrics_url: str
    server_pid: int | None  # known when this process started the server: its CPU time is then reported

    @property
    def base(self) -> str:
        return f"http://{self.http_host}:{self.http_port}"


def get_json(url: str, timeout_s: float = 10.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        return orjson.loads(response.read())


def fetch_model(target: Target, model: str) -> payloads.ModelSpec:
    metadata = get_json(f"{target.base}/v2/models/{model}")
    try:
        config = get_json(f"{target.base}/v2/models/{model}/config")
    except urllib.error.HTTPError:
        config = None
    return payloads.model_spec(metadata, config)


def ready_models(target: Target) -> list[str]:
    request = urllib.request.Request(f"{target.base}/v2/repository/index", data=b"{}", method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        index = orjson.loads(response.read())
    return sorted({m["name"] for m in index if m.get("state") == "READY"})


def model_stats(target: Target, model: str) -> dict[str, int]:
    """Triton statistics of every version of ``model``, summed: counts and nanoseconds."""
    totals: Counter[str] = Counter()
    for entry in get_json(f"{target.base}/v2/models/{model}/stats")["model_stats"]:
        totals["inference_count"] += int(entry.get("inference_count", 0))
        totals["execution_count"] += int(entry.get("execution_count", 0))
        for key, value in entry.get("inference_stats", {}).items():
            totals[f"{key}_count"] += int(value.get("count", 0))
            totals[f"{key}_ns"] += int(value.get("ns", 0))
    return dict(totals)


def metrics_samples(url: str) -> dict[str, float] | None:
    """Counters and histogram/summary sums and counts from Prometheus text; None without /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode("utf-8", "replace")
    except (urllib.error.URLError, OSError):
        return None
    samples: dict[str, float] = {}
    try:
        for family in text_string_to_metric_families(text):
            if family.type not in ("counter", "histogram", "summary"):
                continue
            for s in family.samples:
                if family.type == "counter" or s.name.endswith(("_sum", "_count")):
                    labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
                    samples[f"{s.name}{{{labels}}}" if labels else s.name] = float(s.value)
    except ValueError:
        return None
    return samples


def process_cpu_s(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        import psutil  # installed with locust (the bench extra); CPU time is optional
    except ImportError:
        return None
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return None
    return float(times.user + times.system)


@dataclass
class ServerSnapshot:
    stats: dict[str, int]
    metrics: dict[str, float] | None
    cpu_s: float | None

    @classmethod
    def take(cls, target: Target, model: str) -> ServerSnapshot:
        return cls(model_stats(target, model), metrics_samples(target.metrics_url), process_cpu_s(target.server_pid))


def server_deltas(before: ServerSnapshot, after: ServerSnapshot) -> dict[str, Any]:
    d = {k: after.stats.get(k, 0) - before.stats.get(k, 0) for k in after.stats}

    def ratio(num: float, den: float, scale: float = 1.0) -> float | None:
        return num / den * scale if den else None

    return {
        "inference_count": d.get("inference_count", 0),
        "execution_count": d.get("execution_count", 0),
        "success_count": d.get("success_count", 0),
        "fail_count": d.get("fail_count", 0),
        "avg_batch_size": ratio(d.get("inference_count", 0), d.get("execution_count", 0)),
        "avg_queue_us": ratio(d.get("queue_ns", 0), d.get("queue_count", 0), 1e-3),
        "avg_compute_infer_us": ratio(d.get("compute_infer_ns", 0), d.get("compute_infer_count", 0), 1e-3),
        "avg_request_us": ratio(d.get("success_ns", 0), d.get("success_count", 0), 1e-3),
    }


def metrics_deltas(before: ServerSnapshot, after: ServerSnapshot) -> dict[str, float] | None:
    if before.metrics is None or after.metrics is None:
        return None
    deltas = {k: v - before.metrics.get(k, 0.0) for k, v in after.metrics.items()}
    return {k: v for k, v in deltas.items() if v}


# ---------------------------------------------------------------------------------------------- the client


@dataclass
class Samples:
    latencies_ns: list[int] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)


Send = Callable[[bytes], Awaitable[str | None]]  # sends one request; returns an error text or None


class HttpConnection:
    """One keep-alive HTTP/1.1 connection that sends pre-built requests: the cheapest honest client."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def send(self, request: bytes) -> str | None:
        try:
            if self.reader is None or self.writer is None:
                self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
            self.writer.write(request)
            status, body, close = await read_response(self.reader)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
            await self.close()
            return f"connection: {type(exc).__name__} {exc}".strip()
        if close:
            await self.close()
        return None if status == 200 else f"HTTP {status}: {error_message(body)}"

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()
        self.reader = self.writer = None


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length, chunked, close = None, False, False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name, value = name.strip().lower(), value.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value
        elif name == b"connection":
            close = value == b"close"
    if chunked:
        parts = []
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            parts.append(await reader.readexactly(size + 2))
        await reader.readuntil(b"\r\n")  # the blank line after the last chunk (no trailers expected)
        return status, b"".join(p[:-2] for p in parts), close
    if length is None:
        return status, await reader.read(), True
    return status, await reader.readexactly(length), close


def error_message(body: bytes) -> str:
    try:
        return str(orjson.loads(body)["error"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return body[:200].decode("utf-8", "replace")


def http_request_bytes(target: Target, model: str, request: payloads.EncodedRequest) -> bytes:
    lines = [
        f"POST /v2/models/{model}/infer HTTP/1.1",
        f"Host: {target.http_host}:{target.http_port}",
        f"Content-Length: {len(request.body)}",
        *(f"{k}: {v}" for k, v in request.headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + request.body


async def open_senders(
    target: Target, protocol: str, concurrency: int
) -> tuple[list[Send], Callable[[], Awaitable[None]]]:
    if protocol in ("http", "http-json"):
        connections = [HttpConnection(target.http_host, target.http_port) for _ in range(concurrency)]

        async def close_http() -> None:
            await asyncio.gather(*(c.close() for c in connections))

        return [c.send for c in connections], close_http
    import grpc

    # A local subchannel pool gives each channel its own TCP connection, like the HTTP connections above.
    channels = [
        grpc.aio.insecure_channel(
            f"{target.http_host}:{target.grpc_port}", options=[("grpc.use_local_subchannel_pool", 1)]
        )
        for _ in range(concurrency)
    ]

    def grpc_sender(channel: Any) -> Send:
        call = channel.unary_unary(payloads.GRPC_INFER_METHOD)  # bytes in, bytes out: nothing parsed

        async def send(body: bytes) -> str | None:
            try:
                await call(body, timeout=DRAIN_GRACE_S)
            except grpc.aio.AioRpcError as exc:
                return f"gRPC {exc.code().name}: {exc.details()}"
            return None

        return send

    async def close_grpc() -> None:
        await asyncio.gather(*(c.close() for c in channels))

    return [grpc_sender(c) for c in channels], close_grpc


async def closed_loop(senders: list[Send], bodies: list[bytes], duration_s: float) -> tuple[Samples, float]:
    """Every sender sends back to back until the deadline; returns the samples and the wall time."""
    samples = Samples()
    clock = time.perf_counter_ns
    deadline = clock() + int(duration_s * 1e9)

    async def worker(send: Send, offset: int) -> None:
        latencies, errors, n = samples.latencies_ns, samples.errors, len(bodies)
        i = offset
        while (start := clock()) < deadline:
            error = await send(bodies[i % n])
            i += 1
            if error is None:
                latencies.append(clock() - start)
            else:
                errors[error] += 1

    started = clock()
    tasks = [asyncio.create_task(worker(s, k)) for k, s in enumerate(senders)]
    done, pending = await asyncio.wait(tasks, timeout=duration_s + DRAIN_GRACE_S)
    for task in pending:
        task.cancel()
        samples.errors["no answer within the drain grace period"] += 1
    await asyncio.gather(*pending, return_exceptions=True)
    for task in done:
        if task.exception() is not None:
            samples.errors[f"client: {task.exception()!r}"] += 1
    return samples, (clock() - started) / 1e9


# ---------------------------------------------------------------------------------------------- one point


@dataclass(frozen=True)
class Point:
    model: str
    protocol: str
    concurrency: int


def summarize(point: Point, rows: int, samples: Samples, wall_s: float, client_cpu_s: float) -> dict[str, Any]:
    ok = len(samples.latencies_ns)
    failures = sum(samples.errors.values())
    lat = np.asarray(samples.latencies_ns, dtype=np.float64) / 1e6
    pct = dict(zip(("p50", "p90", "p99"), np.percentile(lat, [50, 90, 99]).tolist(), strict=True)) if ok else {}
    return {
        **asdict(point),
        "rows_per_request": rows,
        "duration_s": wall_s,
        "requests": ok,
        "failures": failures,
        "errors": dict(samples.errors.most_common(5)),
        "requests_per_s": ok / wall_s if wall_s else 0.0,
        "rows_per_s": ok * rows / wall_s if wall_s else 0.0,
        "latency_ms": {
            **pct,
            "mean": float(lat.mean()) if ok else None,
            "max": float(lat.max()) if ok else None,
        },
        "client_cpu_pct": 100 * client_cpu_s / wall_s if wall_s else None,
        "client_cpu_us_per_request": 1e6 * client_cpu_s / (ok + failures) if ok + failures else None,
    }


async def run_point(
    target: Target, point: Point, requests: list[payloads.EncodedRequest], duration_s: float, warmup_s: float
) -> dict[str, Any]:
    if point.protocol == "grpc":
        bodies = [r.body for r in requests]
    else:
        bodies = [http_request_bytes(target, point.model, r) for r in requests]
    senders, close = await open_senders(target, point.protocol, point.concurrency)
    try:
        if warmup_s > 0:
            await closed_loop(senders, bodies, warmup_s)
        # Snapshots between runs, with nothing in flight, so that the deltas cover exactly the run.
        before = await asyncio.to_thread(ServerSnapshot.take, target, point.model)
        cpu0 = time.process_time()
        samples, wall_s = await closed_loop(senders, bodies, duration_s)
        client_cpu_s = time.process_time() - cpu0
        after = await asyncio.to_thread(ServerSnapshot.take, target, point.model)
    finally:
        await close()
    result = summarize(point, requests[0].rows, samples, wall_s, client_cpu_s)
    result["server"] = server_deltas(before, after)
    if before.cpu_s is not None and after.cpu_s is not None:
        result["server_cpu_pct"] = 100 * (after.cpu_s - before.cpu_s) / wall_s
    result["metrics_delta"] = metrics_deltas(before, after)
    return result


def skipped(point: Point, reason: str) -> dict[str, Any]:
    result = summarize(point, 0, Samples(), 0.0, 0.0)
    keys = ("inference_count", "execution_count", "avg_batch_size", "avg_queue_us", "avg_compute_infer_us")
    return {**result, "skipped": reason, "server": dict.fromkeys(keys), "metrics_delta": None}


# ---------------------------------------------------------------------------------------------- the ceiling


def model_file(repository: Path, model: str) -> Path | None:
    versions = [p for p in (repository / model).glob("*/model.onnx") if p.parent.name.isdigit()]
    return max(versions, key=lambda p: int(p.parent.name)) if versions else None


def ort_ceiling(path: Path, spec: payloads.ModelSpec, seconds: float) -> dict[str, Any]:
    """Raw onnxruntime in this process, session options as the server's defaults: the most it could do."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = os.cpu_count() or 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    largest = min(spec.max_batch_size, CEILING_BATCHES[-1])
    batches = sorted({b for b in CEILING_BATCHES if b <= largest} | {largest}) if spec.batches else [1]
    rng = np.random.default_rng(0)
    results: dict[int, dict[str, float]] = {}
    for batch in batches:
        feeds = {n: to_ort_strings(n, a) for n, a in payloads.random_inputs(spec, batch, rng).items()}
        session.run(None, feeds)
        times: list[int] = []
        end = time.perf_counter() + seconds / len(batches)
        while time.perf_counter() < end or len(times) < 10:
            t0 = time.perf_counter_ns()
            session.run(None, feeds)
            times.append(time.perf_counter_ns() - t0)
        rows = batch if spec.batches else 1
        results[batch] = {
            "rows_per_s": rows * len(times) / (sum(times) / 1e9),
            "runs_per_s": len(times) / (sum(times) / 1e9),
            "p50_us": float(np.percentile(times, 50) / 1e3),
        }
    best = max(results, key=lambda b: results[b]["rows_per_s"])
    return {
        "batches": {str(b): r for b, r in results.items()},
        "best_rows_per_s": results[best]["rows_per_s"],
        "best_batch": best,
        "batch1_p50_us": results[batches[0]]["p50_us"],
    }


# ---------------------------------------------------------------------------------------------- the report


def _fmt(value: float | None, spec: str = ".2f") -> str:
    return "n/a" if value is None else format(value, spec)


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f}%"


POINT_COLUMNS = (
    "model | protocol | conc | req/s | rows/s | p50 ms | p90 ms | p99 ms | fail | avg batch | queue µs "
    "| compute µs | client CPU | server CPU"
)


def point_row(p: dict[str, Any]) -> str:
    lat, srv = p["latency_ms"], p["server"]
    cells = [
        p["model"], p["protocol"], str(p["concurrency"]),
        _fmt(p["requests_per_s"], ".0f"), _fmt(p["rows_per_s"], ".0f"),
        _fmt(lat.get("p50"), ".3f"), _fmt(lat.get("p90"), ".3f"), _fmt(lat.get("p99"), ".3f"),
        str(p["failures"]), _fmt(srv["avg_batch_size"]),
        _fmt(srv["avg_queue_us"], ".0f"), _fmt(srv["avg_compute_infer_us"], ".0f"),
        _pct(p["client_cpu_pct"]), _pct(p.get("server_cpu_pct")),
    ]  # fmt: skip
    return "| " + " | ".join(cells) + " |"


def progress_line(p: dict[str, Any]) -> str:
    lat, batch = p["latency_ms"], p["server"]["avg_batch_size"]
    return (
        f"{p['requests_per_s']:8.0f} req/s {p['rows_per_s']:9.0f} rows/s  "
        f"p50 {_fmt(lat.get('p50'), '.3f')} ms  p99 {_fmt(lat.get('p99'), '.3f')} ms  "
        f"fail {p['failures']}  batch {_fmt(batch)}"
    )


def metrics_summary(delta: dict[str, float], model: str, limit: int = 12) -> list[str]:
    """Readable /metrics deltas: histogram _sum/_count pairs as means, the point's model label dropped."""
    parts: list[str] = []
    for key, value in sorted(delta.items()):
        name, _, labels = key.partition("{")
        if name.startswith("python_") or name.endswith("_sum"):
            continue  # interpreter internals; sums are shown as means beside their counts
        labels = ",".join(x for x in labels.rstrip("}").split(",") if x and x != f'model="{model}"')
        shown = f"{name}{{{labels}}}" if labels else name
        total = delta.get(key.replace("_count", "_sum", 1)) if name.endswith("_count") else None
        if total is not None:
            mean = total / value
            unit = f"{mean * 1e3:.3f} ms" if "seconds" in name else f"{mean:.3g}"
            parts.append(f"`{shown.replace('_count', '', 1)}` mean {unit} (n={value:g})")
        else:
            parts.append(f"`{shown}` +{value:g}")
    return parts[:limit]


def markdown(report: dict[str, Any]) -> str:
    meta = report["meta"]
    out = [
        f"# Benchmark {meta['started']}",
        "",
        f"{meta['cpus']} CPUs, {meta['platform']}, Python {meta['python']}, "
        f"onnxruntime {meta['onnxruntime']}, "
        f"commit {meta['commit']}. Server: {meta['server']}. {meta['duration_s']:g} s per point after "
        f"{meta['warmup_s']:g} s warm-up, {meta['rows_per_request']} row(s) per request.",
        "",
        "## Raw onnxruntime ceiling (in-process, no server)",
        "",
        "| model | best rows/s | at batch | batch-1 p50 µs | rows/s by batch |",
        "|---|---|---|---|---|",
    ]
    for model, c in report["ceiling"].items():
        if c is None:
            out.append(f"| {model} | n/a | | | model file not available here |")
            continue
        by_batch = ", ".join(f"{b}: {r['rows_per_s']:.0f}" for b, r in c["batches"].items())
        out.append(
            f"| {model} | {c['best_rows_per_s']:.0f} | {c['best_batch']} | {c['batch1_p50_us']:.1f} | {by_batch} |"
        )
    out += ["", "## Served", "", f"| {POINT_COLUMNS} |", "|" + "---|" * len(POINT_COLUMNS.split("|"))]
    out += [point_row(p) for p in report["points"]]
    errors = [(p, f"{n} x {e}") for p in report["points"] for e, n in p["errors"].items()]
    errors += [(p, f"skipped: {p['skipped']}") for p in report["points"] if p.get("skipped")]
    if errors:
        out += ["", "## Errors", ""]
        out += [f"- {p['model']} {p['protocol']} c={p['concurrency']}: {text}" for p, text in errors]
    with_metrics = [p for p in report["points"] if p.get("metrics_delta")]
    if with_metrics:
        out += ["", "## /metrics over each point (counter increases; means of histograms)", ""]
        for p in with_metrics:
            lines = metrics_summary(p["metrics_delta"], p["model"])
            out.append(f"- {p['model']} {p['protocol']} c={p['concurrency']}: " + "; ".join(lines))
    elif report["points"]:
        out += ["", "The server did not serve /metrics; only /stats deltas are shown."]
    out += ["", "![throughput vs p99](throughput_vs_p99.png)", ""]
    return "\n".join(out)


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(p["model"] for p in report["points"]))
    fig, axes = plt.subplots(1, max(1, len(models)), figsize=(6.5 * max(1, len(models)), 4.5), squeeze=False)
    for ax, model in zip(axes[0], models, strict=False):
        for protocol in dict.fromkeys(p["protocol"] for p in report["points"]):
            points = [p for p in report["points"] if p["model"] == model and p["protocol"] == protocol]
            points = [p for p in points if p["latency_ms"].get("p99") is not None]
            if not points:
                continue
            xs = [p["rows_per_s"] for p in points]
            ys = [p["latency_ms"]["p99"] for p in points]
            ax.plot(xs, ys, "o-", label=protocol)
            for p, x, y in zip(points, xs, ys, strict=True):
                ax.annotate(f"c={p['concurrency']}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ceiling = report["ceiling"].get(model)
        title = model
        if ceiling is not None:
            best, batch = ceiling["best_rows_per_s"], ceiling["best_batch"]
            title = f"{model} (raw onnxruntime: {best:.0f} rows/s at batch {batch})"
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("throughput (rows/s)")
        ax.set_ylabel("p99 latency (ms)")
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------- main


def _csv(kind: Callable[[str], Any]) -> Callable[[str], list[Any]]:
    return lambda text: [kind(v.strip()) for v in text.split(",") if v.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", help="a running server's HTTP base URL (default: start one on free loopback ports)")
    parser.add_argument("--grpc-port", type=int, default=8001, help="gRPC port on --url's host (default 8001)")
    parser.add_argument("--metrics-url", help="Prometheus endpoint (default: <url>/metrics; skipped if absent)")
    parser.add_argument(
        "--model-repository",
        type=Path,
        help="repository to serve (default: the demo); with --url, used for the onnxruntime ceiling",
    )
    parser.add_argument("--models", type=_csv(str), help="default: tabular for the demo, else every ready model")
    parser.add_argument("--protocols", type=_csv(str), default=list(payloads.PROTOCOLS), help="http,http-json,grpc")
    parser.add_argument("--concurrency", type=_csv(int), default=[1, 4, 16], help="requests in flight (1,4,16)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds measured per point (10)")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds sent before each point, not measured (1)")
    parser.add_argument("--rows-per-request", type=int, default=1)
    parser.add_argument(
        "--ceiling-seconds", type=float, default=2.0, help="onnxruntime ceiling time per model; 0 skips"
    )
    parser.add_argument("--results-dir", type=Path, default=Path("results"))
    parser.add_argument("--server-arg", action="append", default=[], help="extra `serve run` argument (repeatable)")
    args = parser.parse_args(argv)
    unknown = set(args.protocols) - set(payloads.PROTOCOLS)
    if unknown:
        parser.error(f"unknown protocols {sorted(unknown)}; expected {', '.join(payloads.PROTOCOLS)}")
    if args.duration <= 0 or any(c < 1 for c in args.concurrency) or args.rows_per_request < 1:
        parser.error("--duration, --concurrency and --rows-per-request must be positive")
    return args


@contextlib.contextmanager
def serving(args: argparse.Namespace, out: Path) -> Iterator[tuple[Target, Path | None, str]]:
    """The target: the --url server, or one started here (and stopped at the end)."""
    if args.url:
        parts = urlsplit(args.url if "://" in args.url else f"http://{args.url}")
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        metrics = args.metrics_url or f"http://{host}:{port}/metrics"
        yield (
            Target(host, port, args.grpc_port, metrics, None),
            args.model_repository,
            f"running at {args.url}",
        )
        return
    with tempfile.TemporaryDirectory(prefix="serve-bench-") as tmp:
        repository = args.model_repository
        if repository is None:
            repository = Path(tmp)
            write_demo_repository(repository)
        server = start_server(repository, *args.server_arg, log=out / "server.log")
        try:
            _wait_port("127.0.0.1", server.grpc_port)
            target = Target(
                "127.0.0.1",
                server.http_port,
                server.grpc_port,
                args.metrics_url or f"http://127.0.0.1:{server.http_port}/metrics",
                server.process.pid,
            )
            extra = f" {' '.join(args.server_arg)}" if args.server_arg else ""
            yield target, repository, f"`serve run` started by bench/run.py on loopback{extra}"
        finally:
            server.stop()


def _wait_port(host: str, port: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex((host, port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {host}:{port}")


def _meta(args: argparse.Namespace, server: str) -> dict[str, Any]:
    import onnxruntime

    try:
        commit = (
            subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"],
                capture_output=True,
                text=True,
                cwd=Path(__file__).parent,
                timeout=5,
            ).stdout.strip()
            or "unknown"
        )
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"
    return {
        "started": dt.datetime.now().isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "platform": platform.platform(terse=True),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "commit": commit,
        "server": server,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "rows_per_request": args.rows_per_request,
        "argv": sys.argv[1:],
    }


def run(args: argparse.Namespace) -> Path:
    out: Path = args.results_dir / dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    while out.exists():  # two runs in the same second
        out = out.with_name(out.name + "-1")
    out.mkdir(parents=True)
    with serving(args, out) as (target, repository, server_text):
        models = args.models or ([DEMO_MODELS] if args.model_repository is None else ready_models(target))
        specs = {m: fetch_model(target, m) for m in models}
        report: dict[str, Any] = {"meta": _meta(args, server_text), "ceiling": {}, "points": []}
        for model, spec in specs.items():
            path = model_file(repository, model) if repository is not None else None
            if path is None or args.ceiling_seconds <= 0:
                report["ceiling"][model] = None
                continue
            ceiling = ort_ceiling(path, spec, args.ceiling_seconds)
            report["ceiling"][model] = ceiling
            print(
                f"raw onnxruntime {model}: {ceiling['best_rows_per_s']:.0f} rows/s at batch "
                f"{ceiling['best_batch']}, batch-1 p50 {ceiling['batch1_p50_us']:.1f} µs",
                flush=True,
            )
        points = [Point(m, p, c) for m in models for p in args.protocols for c in args.concurrency]
        runner = asyncio.Runner(loop_factory=_loop_factory())
        try:
            for i, point in enumerate(points, 1):
                head = f"[{i}/{len(points)}] {point.model} {point.protocol} c={point.concurrency}"
                print(f"{head:<40}", end="", flush=True)
                try:
                    requests = payloads.build_requests(specs[point.model], point.protocol, args.rows_per_request)
                except ValueError as exc:  # e.g. FP16 inputs cannot be sent as JSON
                    report["points"].append(skipped(point, str(exc)))
                    print(f"skipped: {exc}", flush=True)
                    continue
                result = runner.run(run_point(target, point, requests, args.duration, args.warmup))
                report["points"].append(result)
                print(progress_line(result), flush=True)
        finally:
            runner.close()
    (out / "report.json").write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    (out / "report.md").write_text(markdown(report))
    plot(report, out / "throughput_vs_p99.png")
    return out


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    out = run(args)
    report = json.loads((out / "report.json").read_text())
    print()
    print(f"| {POINT_COLUMNS} |")
    for p in report["points"]:
        print(point_row(p))
    print(f"\nreport: {out / 'report.md'}\n        {out / 'report.json'}\n        {out / 'throughput_vs_p99.png'}")


if __name__ == "__main__":
    main()
