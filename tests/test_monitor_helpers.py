"""Shared pieces of the drift tests (no tests here): a model with known inputs, training data with known
distributions and their shifts, and a loopback replica that serves a StatsRecorder's statistics."""

from __future__ import annotations

import threading
import urllib.parse
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from onnx import helper

from serve.modelgen import build, constant, save, tensor
from serve.stats.baseline import Baseline
from serve.stats.recorder import StatsOptions, StatsRecorder
from serve.stats.windows import ServerInstance
from serve.types import TensorSpec

MODEL = "churn"
FEATURES = ["age", "income", "country", "score"]
COUNTRIES = np.array([0.0, 1.0, 2.0, 3.0])
COUNTRY_P = np.array([0.4, 0.3, 0.2, 0.1])
INPUTS = [TensorSpec("x", "FP32", (4,))]
OUTPUTS = [TensorSpec("probabilities", "FP32", (3,))]


def write_model(root: Path, name: str = MODEL, seed: int = 0) -> Path:
    """``x`` FP32 [batch, 4] → ``probabilities`` FP32 [batch, 3] = softmax(x W + b); returns the model dir."""
    rng = np.random.default_rng(seed)
    # Rows scaled to each feature's spread, so the probabilities vary instead of saturating at 0 and 1.
    scale = np.array([[0.05], [2e-5], [0.3], [1.0]])
    w = (rng.standard_normal((4, 3)) * scale).astype(np.float32)
    b = np.zeros(3, dtype=np.float32)
    model = build(
        name,
        [
            helper.make_node("MatMul", ["x", "w"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1),
        ],
        [tensor("x", "FP32", ["batch", 4])],
        [tensor("probabilities", "FP32", ["batch", 3])],
        [constant("w", w), constant("b", b)],
    )
    save(model, root / name / "1" / "model.onnx")
    return root / name


def sample(rng: np.random.Generator, n: int, shift: str = "none") -> np.ndarray:
    """Rows of (age ~ N(40, 10), income ~ lognormal(10, 0.5), country ∈ {0..3}, score ~ U(0, 1)).

    ``shift``: ``mean`` moves age by +1σ, ``scale`` widens income's log-sd ×2.5, ``category`` sends 30 % of
    countries to an unseen code 7, ``missing`` blanks 30 % of scores (NaN).
    """
    age = rng.normal(40.0, 10.0, n) + (10.0 if shift == "mean" else 0.0)
    income = rng.lognormal(10.0, 0.5 * (2.5 if shift == "scale" else 1.0), n)
    country = rng.choice(COUNTRIES, n, p=COUNTRY_P)
    if shift == "category":
        country[rng.random(n) < 0.3] = 7.0
    score = rng.random(n)
    if shift == "missing":
        score[rng.random(n) < 0.3] = np.nan
    return np.stack([age, income, country, score], axis=1).astype(np.float32)


class Clock:
    """A settable clock shared by recorders and the monitor."""

    def __init__(self, t: float = 1_800_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def recorder(baseline: Baseline, clock: Clock, replica: str = "r1", window_s: float = 60.0) -> StatsRecorder:
    return StatsRecorder(
        MODEL, 1, INPUTS, OUTPUTS,
        instance=ServerInstance.create(replica, clock=clock), baseline=baseline,
        options=StatsOptions(window_s=window_s, horizon_s=3600.0), clock=clock,
    )  # fmt: skip


class Predictor:
    """The model's outputs for a batch, as the server would compute them."""

    def __init__(self, model_dir: Path) -> None:
        import onnxruntime as ort

        self.session = ort.InferenceSession(str(model_dir / "1" / "model.onnx"), providers=["CPUExecutionProvider"])

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(["probabilities"], {"x": np.nan_to_num(x).astype(np.float32)})[0]


def feed(rec: StatsRecorder, x: np.ndarray, predict: Callable[[np.ndarray], np.ndarray]) -> None:
    """Record one batch (inputs and the model's outputs) and wait until the recorder's worker applied it."""
    rec.submit({"x": x}, {"probabilities": predict(x)})
    assert rec.flush(10.0)


class FakeReplica:
    """A loopback HTTP server answering what the monitor asks a replica: the repository index,
    ``/input-stats`` from a StatsRecorder, and ``/metrics`` text."""

    def __init__(self, rec: StatsRecorder, metrics: Callable[[], str] = lambda: "") -> None:
        self.rec = rec
        self.metrics = metrics
        self.requests: list[str] = []
        self.fail = False  # answer 503 to everything, like a replica that is shutting down
        replica = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                replica.requests.append(self.path)
                if replica.fail:
                    self._send(503, b"{}")
                elif self.path == "/v2/repository/index":
                    r = replica.rec
                    self._send(200, orjson.dumps([{"name": r.model_name, "version": r.version, "state": "READY"}]))
                else:
                    self._send(404, b"{}")

            def do_GET(self) -> None:
                replica.requests.append(self.path)
                url = urllib.parse.urlsplit(self.path)
                if replica.fail:
                    self._send(503, b"{}")
                elif url.path.endswith("/input-stats"):
                    since = int(urllib.parse.parse_qs(url.query).get("since", ["0"])[0])
                    self._send(200, replica.rec.export_json(since))
                elif url.path == "/metrics":
                    self._send(200, replica.metrics().encode(), "text/plain; version=0.0.4")
                else:
                    self._send(404, b"{}")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class WebhookReceiver:
    """A loopback endpoint that records every JSON body POSTed to it."""

    def __init__(self, status: int = 200) -> None:
        self.alerts: list[dict[str, Any]] = []
        self.status = status
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if receiver.status == 200:
                    receiver.alerts.append(orjson.loads(body))
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/alerts"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


async def monitor_with_history(root: Path, windows: int = 8) -> tuple[Any, FakeReplica]:
    """A Monitor (from serve.monitor.service) that has evaluated ``windows`` windows of the churn model:
    clean traffic first, then age shifted and unseen countries, so the report has drift to show."""
    from serve.baseline.builder import BaselineOptions, build_baseline
    from serve.baseline.model import load_model_info
    from serve.baseline.sources import open_source
    from serve.monitor.config import MonitorSettings
    from serve.monitor.service import Monitor
    from serve.stats.baseline import write_baseline

    model_dir = write_model(root)
    rng = np.random.default_rng(0)
    np.save(root / "train.npy", sample(rng, 20_000))
    info = load_model_info(root, MODEL)
    options = BaselineOptions(categorical=["x[2]"], feature_names={"x": FEATURES}, progress=False, holdout=0.3)
    write_baseline(
        build_baseline(info, [open_source(str(root / "train.npy"), info.inputs)], options),
        model_dir / "baseline.json",
    )
    clock = Clock(1_800_000_000.0)
    rep = FakeReplica(recorder(Baseline.load(model_dir / "baseline.json"), clock))
    predict = Predictor(model_dir)
    settings = MonitorSettings(
        servers=[rep.url],
        model_repository=root,
        db_path=str(root / "monitor.db"),
        horizon_s=180.0,
        timeout_s=5.0,
    )
    monitor = Monitor(settings, clock=clock)
    for i in range(windows):
        x = sample(rng, 900, "mean" if i >= windows // 2 else "none")
        if i >= windows // 2:
            x[rng.random(len(x)) < 0.2, 2] = 7.0
        feed(rep.rec, x, predict)
        clock.t += 60.0
        await monitor.cycle()
    return monitor, rep


class AppServer:
    """Serve an ASGI app with uvicorn on a free loopback port from a background thread."""

    def __init__(self, app: Any) -> None:
        import socket

        import uvicorn

        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self._server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True)
        self._thread.start()
        import time

        deadline = time.monotonic() + 10
        while not self._server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        self.url = f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._server.should_exit = True
        self._thread.join(10)
