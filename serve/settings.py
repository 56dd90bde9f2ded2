"""Server settings: one typed object, built at the edge (CLI flags over SERVE_* environment
variables over defaults) and passed down. Nothing else reads the environment."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(slots=True)
class ServerSettings:
    # Directory of the Triton-layout model repository; None serves the bundled demo repository.
    model_repository: Path | None = None
    # Serve only this model; the repository may then also be one model's directory or a bare
    # model directory (model.onnx at its top, as KServe leaves /mnt/models): serve/repository/layout.py.
    model_name: str | None = None
    # Loopback by default so that a fresh `serve run` exposes nothing; containers set 0.0.0.0.
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    # Separate Prometheus port; None = /metrics only on the HTTP port.
    metrics_port: int | None = None
    log_level: str = "info"
    # "none": every model found at start is loaded and load/unload calls are refused.
    # "explicit": repository load/unload calls are answered; --load-model chooses the start set.
    model_control_mode: str = "none"
    load_models: list[str] = field(default_factory=list)
    # Largest accepted request body (after decompression) and gRPC message, in bytes.
    max_request_bytes: int = 64 * 1024 * 1024
    # max_batch_size given to models that batch but have no config.pbtxt saying otherwise.
    default_max_batch_size: int = 64
    # Seconds that shutdown waits for queued and running requests.
    shutdown_grace_s: float = 10.0
    # Whether onnxruntime's intra-op threads spin while idle (they burn the cores the front end needs).
    ort_allow_spinning: bool = False
    # Intra-op threads per model instance when the config does not say; 0 = cores / instances.
    ort_intra_op_threads: int = 0
    # Triton metric names (nv_*) beside ours on /metrics.
    metrics_triton_compat: bool = False
    # Histogram buckets for latency metrics, seconds.
    latency_buckets_s: tuple[float, ...] = (
        0.0001,
        0.00025,
        0.0005,
        0.001,
        0.0025,
        0.005,
        0.01,
        0.025,
        0.05,
        0.1,
        0.25,
        0.5,
        1.0,
        2.5,
        5.0,
        10.0,
    )
    server_name: str = "serve"
    # Input/output statistics (GET .../input-stats): on by default; windows and horizon in seconds.
    stats_enabled: bool = True
    stats_window_s: float = 60.0
    stats_horizon_s: float = 3600.0
    # Share of rows recorded (Bernoulli sampling); statistics then describe an unbiased sample.
    stats_sample_rate: float = 1.0
    # Batches waiting for the statistics worker; beyond it they are dropped and counted, never waited for.
    stats_queue_size: int = 256
