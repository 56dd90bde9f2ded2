"""A payload-log sink that hangs or fails (issue 22): inference p99 within 5 % of no logging, RSS growth under
50 MiB, a drop counter equal to the events lost, and logging that resumes once the sink answers.

Two `serve run` processes over the small model (bench/throughput.py's 32-256-256-8 MLP): one without a
payload log, one logging every request and response (`--payload-log-sample 1`, the worst case) to an HTTP sink
that this script runs on loopback. Both get the same offered load (h2load `--rps` over HTTP binary tensors), in
alternating points of `--point` seconds, while the sink:

1. hangs (`--fault hang`: every POST waits past the sink's 5 s timeout) or answers 503 (`--fault 503`) for as long
   as the logging server has had `--duration` seconds of load;
2. then answers 200 again, and a short second point checks that events arrive again.

It prints both servers' median p99 over their points and the ratio (and each round's), the logged server's RSS
before and after the fault, and the events sent against those received plus those counted as dropped
(``serve_payload_events_dropped_total``).

    python -m bench.payload_log [--fault hang|503] [--duration 60] [--rate 400] [--sample 1]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psutil

from bench._harness import HOST, ServerProcess, metric_sum, start_server
from bench.throughput import MODELS, run_point, write_repository


class Sink:
    """An HTTP payload consumer on loopback that counts the events it takes, or hangs, or fails."""

    def __init__(self) -> None:
        self.fault: str | None = None
        self.received = 0
        self.released = threading.Event()
        lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                return

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if sink.fault == "hang":
                    sink.released.wait(30)  # past the sink's timeout: the server gives the batch up
                if sink.fault == "503":
                    self.send_response(503)
                    self.end_headers()
                    return
                with lock:
                    sink.received += len(json.loads(body))
                self.send_response(200)
                self.end_headers()

        self.server = ThreadingHTTPServer((HOST, 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.server.server_address[1]}/"

    def close(self) -> None:
        self.released.set()
        self.server.shutdown()


def dropped(server: ServerProcess) -> float:
    return metric_sum(server, "serve_payload_events_dropped_total")


def answered(server: ServerProcess) -> int:
    return int(metric_sum(server, "serve_requests_total", lambda labels: labels.get("model") == "small"))


def rss_mib(server: ServerProcess) -> float:
    return float(psutil.Process(server.process.pid).memory_info().rss) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fault", choices=["hang", "503"], default="hang")
    parser.add_argument("--duration", type=float, default=60, help="seconds the sink is faulty (and measured)")
    parser.add_argument("--rate", type=float, default=400, help="requests per second offered to each server")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--point", type=float, default=5, help="seconds of each alternating point")
    parser.add_argument("--sample", type=float, default=1.0, help="--payload-log-sample of the logging server")
    args = parser.parse_args()
    if shutil.which("h2load") is None:
        raise SystemExit("h2load not found: apt-get install nghttp2-client")
    dims = MODELS["small"]
    sink = Sink()
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        write_repository(tmp / "models", ["small"], 1)
        plain = start_server(tmp / "models", log=tmp / "plain.log")
        logged = start_server(
            tmp / "models",
            "--payload-log-url",
            sink.url,
            "--payload-log-sample",
            str(args.sample),
            log=tmp / "logged.log",
        )
        try:
            for server in (plain, logged):  # warm both, the sink healthy
                run_point(server, "small", dims, "http", args.concurrency, 1, 3, tmp, rate=args.rate)
            time.sleep(2)
            rss_before, plain_before = rss_mib(logged), rss_mib(plain)
            sent_before, dropped_before, received_before = answered(logged), dropped(logged), sink.received
            sink.fault = args.fault
            # Points of --point seconds, alternating between the two servers (which goes first alternates too), so
            # that both see the same moments of this shared machine: the logging server's points add up to
            # --duration seconds of load on a faulty sink.
            base_p99: list[float] = []
            faulty_p99: list[float] = []
            rounds = max(1, round(args.duration / args.point))
            for round_ in range(rounds):
                pair = ((plain, base_p99), (logged, faulty_p99))
                for server, p99s in pair if round_ % 2 == 0 else pair[::-1]:
                    point = run_point(
                        server, "small", dims, "http", args.concurrency, 1, args.point, tmp, rate=args.rate
                    )
                    p99s.append(point.p99_ms)
            plain_after = rss_mib(plain)
            rss_after = rss_mib(logged)
            sink.fault = None
            sink.released.set()
            time.sleep(12)  # the hung batches time out and their retries give up
            received_mid = sink.received
            run_point(logged, "small", dims, "http", args.concurrency, 1, 5, tmp, rate=args.rate)
            time.sleep(3)
            events = 2 * (answered(logged) - sent_before)  # every request's two events when all are sampled
            received = sink.received - received_before
            lost = dropped(logged) - dropped_before
        finally:
            plain.stop()
            logged.stop()
            sink.close()
    print(f"fault {args.fault} for {args.duration:g} s at {args.rate:g} req/s, {args.sample:.0%} of requests logged")
    base, faulty = statistics.median(base_p99), statistics.median(faulty_p99)
    print(f"p99, median of {len(base_p99)} alternating {args.point:g} s points: no logging {base:.2f} ms, logging to "
          f"a faulty sink {faulty:.2f} ms: {faulty / base:.2f}x")  # fmt: skip
    ratios = sorted(f / b for f, b in zip(faulty_p99, base_p99, strict=True))
    print(f"  per round: {', '.join(f'{r:.2f}' for r in ratios)}")
    print(f"RSS of the logging server {rss_before:.0f} MiB before, {rss_after:.0f} MiB at the fault's end: "
          f"+{rss_after - rss_before:.1f} MiB; the server without logging over the same load "
          f"+{plain_after - plain_before:.1f} MiB")  # fmt: skip
    print(f"events {events if args.sample == 1 else 'sampled'}: received {received} + dropped {lost:.0f} = "
          f"{received + lost:.0f}; "
          f"after the fault the sink received {sink.received - received_mid} more")  # fmt: skip


if __name__ == "__main__":
    main()
