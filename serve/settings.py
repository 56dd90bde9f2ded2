"""Server settings: one typed object, built at the edge and passed down. Nothing else reads the
environment.

Each setting is declared once, as a field here: its type, default, help text and the commands
that take it. The command line flag (``--http-port``) and the environment variable
(``SERVE_HTTP_PORT``) are derived from the field, and a value from either is converted and
checked the same way; a flag on the command line wins over the environment, which wins over the
default. ``Literal`` types are the allowed values of an enumeration (setting_specs.py derives all this).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from serve.extras import missing_modules

# ENV_PREFIX and SettingsError are re-exported: the CLI, the supervisor and the tests import them from here.
from serve.setting_specs import ENV_PREFIX as ENV_PREFIX
from serve.setting_specs import RUN, SettingSpec, setting, setting_specs
from serve.setting_specs import SettingsError as SettingsError

MODEL_LOADING = ("run", "validate")

ModelControlMode = Literal["none", "poll", "explicit"]
RolloutDecider = Literal["server", "monitor"]
ModelLoadCheck = Literal["auto", "child", "off"]
LogLevel = Literal["debug", "info", "warning", "error"]
WorkerHttpSocket = Literal["shared", "reuseport"]
GrpcFrontend = Literal["aio", "native"]
PayloadLogMode = Literal["requests", "responses", "all"]
PayloadLogHttpMode = Literal["structured", "binary"]
# CloudEvents' dataclassification extension: its four values.
DataClassification = Literal["public", "internal", "confidential", "restricted"]


def _positive(value: float) -> str | None:
    return None if value > 0 else "must be positive"


def _not_negative(value: float) -> str | None:
    return None if value >= 0 else "must not be negative"


def _port(value: int) -> str | None:
    return None if 0 <= value <= 65535 else "must be a port number, 0..65535"


def _share(value: float) -> str | None:
    return None if 0 < value <= 1 else "must be in (0, 1]"


def _share_or_zero(value: float) -> str | None:
    return None if 0.0 <= value <= 1.0 else "must be between 0 and 1"


def _workers(value: str) -> str | None:
    ok = value == "auto" or (value.isascii() and value.isdigit() and int(value) >= 1)
    return None if ok else "must be a positive integer or 'auto'"


def _frontend_installed(value: str) -> str | None:
    if value == "native" and missing_modules("grpc-native"):
        return "needs pygrpc-native: pip install 'serve[grpc-native]'"
    return None


def _existing_file(value: Path) -> str | None:
    return None if value.is_file() else f"{value} is not a file"


def _directory_exists(value: Path) -> str | None:
    return None if value.parent.is_dir() else f"the directory of {value} does not exist"


def _ascending(values: tuple[float, ...]) -> str | None:
    ok = bool(values) and all(v > 0 for v in values) and list(values) == sorted(set(values))
    return None if ok else "must be positive and strictly increasing"


@dataclass(slots=True)
class ServerSettings:
    model_repository: Path | None = setting(
        None,
        help="Triton-layout model repository; omitted = the bundled demo repository",
        commands=MODEL_LOADING,
    )
    model_name: str | None = setting(
        None,
        help="serve only this model; --model-repository may then be a bare model directory (model.onnx, optional "
        "config.pbtxt and baseline.json, as KServe leaves /mnt/models), served as version 1",
    )
    # Loopback by default so that a fresh `serve run` exposes nothing; containers set 0.0.0.0.
    host: str = setting("127.0.0.1", help="address to listen on (0.0.0.0 for all interfaces)")
    http_port: int = setting(8000, help="HTTP/REST port", check=_port)
    grpc_port: int = setting(8001, help="gRPC port", check=_port)
    grpc_frontend: GrpcFrontend = setting(
        "aio",
        help="what serves gRPC: 'aio' = grpcio's grpc.aio (everything, TLS included); 'native' = pygrpc-native, "
        "HTTP/2 in Rust threads outside the GIL, several times cheaper per call so batches form (extra "
        "serve[grpc-native]; no TLS: with TLS files grpc.aio serves; no deflate requests); see README",
        check=_frontend_installed,
    )
    metrics_port: int | None = setting(None, help="extra port serving only /metrics", check=_port)
    log_level: LogLevel = setting("info", help="log level", commands=MODEL_LOADING)
    model_control_mode: ModelControlMode = setting(
        "none",
        help="'none': every model found at start is loaded and load/unload requests are refused; "
        "'poll': the repository is read again every --repository-poll-secs and changes are loaded (new versions "
        "warmed before traffic moves to them); 'explicit': load/unload requests are answered and only "
        "--load-model models load at start",
    )
    repository_poll_secs: float = setting(
        15.0, help="with --model-control-mode poll: seconds between looks at the repository", check=_positive
    )
    model_load_check: ModelLoadCheck = setting(
        "auto",
        help="'child': load every model file once in a child process first, so that one crashing onnxruntime "
        "natively fails its load instead of the server; 'auto' = child with --model-control-mode poll or "
        "explicit (files that arrive while serving), off with none",
        commands=MODEL_LOADING,
    )
    load_models: list[str] = setting(
        help="with --model-control-mode explicit: a model to load at start (repeatable; comma-separated in the "
        "environment)",
        flag="--load-model",
        default_factory=list,
    )
    workers: str = setting(
        "1",
        help="worker processes serving the same HTTP and gRPC ports; 'auto' = the CPUs this process may use "
        "(its CPU affinity and cgroup CPU quota, whichever is smaller)",
        check=_workers,
    )
    worker_http_socket: WorkerHttpSocket = setting(
        "shared",
        help="with several workers: 'shared' = one listening socket inherited by every worker (one accept queue; "
        "a free worker takes the next connection), 'reuseport' = a socket per worker with SO_REUSEPORT (the "
        "kernel hashes connections to them)",
    )
    max_request_bytes: int = setting(
        64 * 1024 * 1024,
        help="largest accepted request body (after decompression) and gRPC message, bytes",
        check=_positive,
    )
    max_header_bytes: int = setting(
        64 * 1024,
        help="largest HTTP request line plus headers, bytes; a request over it is answered 431 and its connection "
        "closed",
        check=_positive,
    )
    max_headers: int = setting(
        100, help="most header fields in an HTTP request; one with more is answered 431", check=_positive
    )
    header_timeout_s: float = setting(
        10.0,
        help="seconds an HTTP connection has to send a request's line and headers, from connecting (or from the "
        "request's first byte on a kept-alive connection); then it is answered 408 and closed",
        check=_positive,
    )
    return_freed_memory: bool = setting(
        True,
        help="fix glibc malloc's thresholds (blocks of 128 KiB or more mapped on their own, heaps trimmed past 4 MiB "
        "free, trimmed within a second when RSS grows past 4 MiB) so that memory freed after large or refused "
        "requests goes back to the OS (serve/memory.py)",
    )
    default_max_batch_size: int = setting(
        64,
        help="max_batch_size for batchable models without a config.pbtxt",
        commands=MODEL_LOADING,
        check=_positive,
    )
    rollout_decider: RolloutDecider = setting(
        "server",
        help="who changes a rollout's plan on its evidence: 'server' = this server (worker 0 of --workers, on every "
        "worker's evidence); 'monitor' = `serve monitor --rollouts`, on the evidence of every replica (run several "
        "replicas so); the server still routes, mirrors and evaluates (README: Rollouts)",
    )
    shadow_max_in_flight: int = setting(
        64,
        help="mirrored copies running at once for all shadows together; past it (or past half a shadow's queue) "
        "a copy is shed and counted in serve_shadow_dropped_total",
        check=_positive,
    )
    shutdown_grace_s: float = setting(
        10.0, help="seconds shutdown waits for queued and running requests", check=_not_negative
    )
    ort_allow_spinning: bool = setting(
        False,
        help="let onnxruntime threads spin while idle (faster on idle big machines, starves small ones)",
        commands=MODEL_LOADING,
    )
    ort_intra_op_threads: int = setting(
        0,
        help="onnxruntime intra-op threads per instance when the config has none "
        "(0 = available CPUs / (workers x instances))",
        commands=MODEL_LOADING,
        check=_not_negative,
    )
    metrics_triton_compat: bool = setting(False, help="also export Triton's nv_* metric names")
    latency_buckets_s: tuple[float, ...] = setting(
        (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
        help="histogram buckets of the latency metrics, seconds (comma-separated)",
        check=_ascending,
    )
    server_name: str = setting("serve", help="name in the server metadata")
    stats_enabled: bool = setting(
        True, help="record input/output statistics per model (GET .../input-stats)", flag="--stats"
    )
    stats_window_s: float = setting(60.0, help="statistics window length, seconds", check=_positive)
    stats_horizon_s: float = setting(3600.0, help="how long statistics windows are kept, seconds", check=_positive)
    stats_sample_rate: float = setting(
        1.0, help="share of rows recorded in the statistics (Bernoulli sampling), in (0, 1]", check=_share
    )
    stats_queue_size: int = setting(
        256,
        help="batches waiting for the statistics worker; beyond it they are dropped and counted, never waited for",
        check=_positive,
    )
    feedback_retention_s: float = setting(
        86_400.0,
        help="how long a prediction can still be joined to its label (POST .../feedback), seconds; 0 = keep no "
        "predictions, feedback refused (README: Ground truth)",
        check=_not_negative,
    )
    feedback_max_rows: int = setting(
        1_000_000,
        help="predicted rows kept for joining, per model version and worker; the oldest go first past it (their "
        "labels are answered 'expired'); ~220 bytes a one-row prediction of a binary classifier, 8 more per class "
        "and row (bench/join_store.py)",
        check=_positive,
    )
    # Traces (README: Tracing): the OpenTelemetry SDK is imported only when they are on.
    trace: bool = setting(
        False,
        help="trace requests with OpenTelemetry (also on when OTEL_TRACES_EXPORTER is set): a span per request, one "
        "per batch linked to its requests; configured by the OTEL_* variables (sampler, OTLP endpoint and protocol, "
        "service name); needs serve[tracing]",
    )
    access_log: bool = setting(
        False,
        help="log one JSON line per inference request (logger serve.access, on stderr): model, version, outcome, "
        "duration, request id and trace id",
    )
    # Payload logs (README: Payload logs): off unless a sink is given.
    payload_log_file: Path | None = setting(
        None,
        help="log sampled inference requests and responses as CloudEvents, one JSON line each, to this file (every "
        "worker appends to it; rotated at 100 MiB, 5 kept)",
    )
    payload_log_url: str | None = setting(
        None,
        help="POST the payload events to this URL (a KServe logger's consumer: CloudEvents, batched, structured "
        "mode), retried with back-off; events that cannot be delivered are dropped and counted",
    )
    payload_log_sample: float = setting(
        1.0,
        help="share of requests whose events are logged, by a hash of the request id: a request's request, response "
        "and shadow events are all logged or none",
        check=_share_or_zero,
    )
    payload_log_mode: PayloadLogMode = setting("all", help="which events are logged: requests, responses or all")
    payload_log_redact: list[str] = setting(
        help="INPUT[=drop|hash|mask]: an input never logged as it is (repeatable; comma-separated in the "
        "environment); hash needs --payload-log-hash-key-file",
        default_factory=list,
    )
    payload_log_hash_key_file: Path | None = setting(
        None, help="the HMAC-SHA256 key of --payload-log-redact INPUT=hash", check=_existing_file
    )
    payload_log_namespace: str = setting(
        "", help="the events' namespace extension (KServe's ce-namespace) [default: $POD_NAMESPACE, else empty]"
    )
    payload_log_max_tensor_bytes: int = setting(
        1 << 20,
        help="a tensor larger than this is logged as {'truncated': true, 'bytes': N} instead of its data",
        check=_positive,
    )
    payload_log_headers: list[str] = setting(
        help="NAME,...: request headers (HTTP) / metadata (gRPC) logged with the request event, in its 'metadata' "
        "extension as KServe's logger writes it (repeatable; authorization, cookie, proxy-authorization and "
        "x-api-key are refused)",
        default_factory=list,
    )
    payload_log_data_classification: DataClassification | None = setting(
        None,
        help="the events' dataclassification extension (CloudEvents): public, internal, confidential or restricted "
        "[default: none set]; a model's payload_log_data_classification parameter overrides it",
    )
    payload_log_http_mode: PayloadLogHttpMode = setting(
        "structured",
        help="how --payload-log-url receives events: structured (a JSON array per batch) or binary (one POST per "
        "event, attributes in ce-* headers, as KServe's logger sends them)",
    )
    # Security (SECURITY.md): all off by default, as the loopback bind makes the server reachable only locally.
    auth_tokens_file: Path | None = setting(
        None,
        help="bearer tokens, one '<identity> <scope> <token>' a line (scope admin or inference; the token as is or "
        "sha256:<hex>), re-read when it changes; given, model control and the repository API need an admin token",
        check=_existing_file,
    )
    auth_inference: bool = setting(
        True,
        help="with --auth-tokens-file: inference, metadata, statistics and /metrics need a token too (scope "
        "inference or admin); health endpoints never do",
    )
    tls_cert_file: Path | None = setting(
        None, help="PEM certificate chain: HTTPS and gRPC over TLS (with --tls-key-file)", check=_existing_file
    )
    tls_key_file: Path | None = setting(
        None, help="PEM private key (unencrypted) of --tls-cert-file", check=_existing_file
    )
    tls_client_ca_file: Path | None = setting(
        None,
        help="PEM CA certificates: clients must present a certificate signed by one (mutual TLS)",
        check=_existing_file,
    )
    audit_log_file: Path | None = setting(
        None,
        help="append-only JSON-lines log of model loads, unloads, version switches, failed loads, config changes "
        "and repository API calls, with actor and hashes; rotate by moving it away",
        commands=RUN,
        check=_directory_exists,
    )

    def __post_init__(self) -> None:
        for spec in SPECS:
            problem = spec.problem(getattr(self, spec.name))
            if problem:
                raise SettingsError(f"{spec.flag}: {problem}")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise SettingsError("--tls-cert-file and --tls-key-file: give both or neither")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise SettingsError("--tls-client-ca-file: mutual TLS needs --tls-cert-file and --tls-key-file")


SPECS = setting_specs(ServerSettings)


def _default(spec: SettingSpec) -> Any:
    f = next(f for f in dataclasses.fields(ServerSettings) if f.name == spec.name)
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def _shown(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    if isinstance(value, list):
        return ",".join(value) or "none"
    return str(value)


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    """The flags of every setting ``command`` takes, with their variables and defaults in the help."""
    for spec in SPECS:
        if command not in spec.commands:
            continue
        allowed = f" (one of: {', '.join(spec.choices)})" if spec.choices else ""
        help_text = f"{spec.help}{allowed} [env {spec.env}; default {_shown(_default(spec))}]"
        if spec.is_bool:
            parser.add_argument(spec.flag, dest=spec.name, action=argparse.BooleanOptionalAction, help=help_text)
        elif spec.is_list:
            parser.add_argument(spec.flag, dest=spec.name, metavar="NAME", action="append", help=help_text)
        else:
            metavar = "{" + ",".join(spec.choices) + "}" if spec.choices else spec.name.upper()
            parser.add_argument(spec.flag, dest=spec.name, metavar=metavar, help=help_text)
        parser.set_defaults(**{spec.name: None})


def from_arguments(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> ServerSettings:
    """Settings from parsed flags over SERVE_* variables over defaults, each value checked."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for spec in SPECS:
        given = getattr(args, spec.name, None)
        if given is not None:
            if isinstance(given, bool):
                values[spec.name] = given
            elif isinstance(given, list):
                values[spec.name] = [item for raw in given for item in spec.parse(raw, spec.flag)]
            else:
                values[spec.name] = spec.parse(given, spec.flag)
        elif spec.env in environ:
            values[spec.name] = spec.parse(environ[spec.env], f"environment variable {spec.env}")
    return ServerSettings(**values)


def _as_environment_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple | list):
        return ",".join(str(v) for v in value)
    return str(value)


def to_environment(settings: ServerSettings) -> dict[str, str]:
    """The SERVE_* variables that give ``settings`` back through ``from_arguments`` (how the
    supervisor hands its settings to worker processes). Unset optional settings are left out."""
    return {
        spec.env: _as_environment_value(value) for spec in SPECS if (value := getattr(settings, spec.name)) is not None
    }
