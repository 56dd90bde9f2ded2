"""Locust load test for a `serve` (or any Open Inference Protocol) server over HTTP and gRPC.

    locust -f bench/locustfile.py --host http://127.0.0.1:8000 --model tabular --protocol grpc \\
        --headless -u 16 -r 16 -t 30s --csv out/tabular
    locust -f bench/locustfile.py --host http://127.0.0.1:8000 --shape spike --shape-users 8

Inputs come from the model's metadata (right datatypes and shapes, BYTES included) or from
``--input-file``, and are encoded once per user before its first request. Server errors (HTTP 4xx/5xx,
gRPC status codes) and connection errors are locust failures; they never stop a user.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, replace
from itertools import cycle
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import gevent
import grpc
import grpc.experimental.gevent as grpc_gevent
import orjson
from locust import FastHttpUser, LoadTestShape, User, events, task
from locust.env import Environment
from locust.exception import StopUser

# locust imports this file as a plain module; make `bench` and `serve` importable from a checkout.
if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import load_shapes, payloads  # noqa: E402
from serve.protocol import grpc_service_pb2 as pb  # noqa: E402
from serve.protocol import grpc_service_pb2_grpc as pb_grpc  # noqa: E402

# grpcio blocks the whole gevent hub unless told to cooperate; this must run before any channel exists.
grpc_gevent.init_gevent()

log = logging.getLogger("serve.locust")

DEFAULT_HOST = "http://127.0.0.1:8000"
PREPARE_RETRY_S = 1.0  # pause after a failed metadata request, so that a missing model is not hammered
GRPC_TIMEOUT_S = 60.0  # same as FastHttpUser's network timeout
RANDOM_BODIES = 16  # distinct pre-encoded random requests per user


@events.init_command_line_parser.add_listener
def _add_options(parser: Any) -> None:
    def option(name: str, /, **kwargs: Any) -> None:
        env = "LOCUST_" + name.lstrip("-").replace("-", "_").upper()
        parser.add_argument(name, env_var=env, **kwargs)

    option("--model", default="tabular", help="model to load-test (default: tabular)")
    # The user class is picked once, at start: changing the protocol in the web UI could not take effect.
    option("--protocol", default="http", choices=list(payloads.PROTOCOLS), include_in_web_ui=False,
           help="http (binary tensors), http-json or grpc (default: http)")  # fmt: skip
    option("--grpc-port", type=int, default=8001, help="gRPC port on the --host's address (default: 8001)")
    option("--rows-per-request", type=int, default=1, help="batch dimension of each request (default: 1)")
    option("--input-file", default="", help=".npy/.csv rows for the first input, or .npz by input name")
    option("--think-time", type=float, default=0.0, help="seconds a user waits between requests (default: 0)")
    shape = {"include_in_web_ui": False}  # a shape is chosen at start, like the protocol
    option("--shape", default="none", choices=list(load_shapes.SHAPES), **shape,
           help="step or spike traffic; replaces -u/-r/-t (default: none)")  # fmt: skip
    option("--shape-users", type=int, default=10, **shape, help="step: top users; spike: base users")
    option("--shape-steps", type=int, default=5, **shape, help="step: number of steps (default: 5)")
    option("--shape-step-time", type=float, default=30.0, **shape, help="seconds per step or stage")
    option("--shape-spike-users", type=int, default=0, **shape, help="spike: peak users (default: 3x)")
    option("--shape-spike-time", type=float, default=0.0, **shape, help="spike: seconds (default: step/2)")


@dataclass(frozen=True)
class Settings:
    model: str = "tabular"
    grpc_port: int = 8001
    rows_per_request: int = 1
    input_file: str = ""
    think_time: float = 0.0

    @classmethod
    def of(cls, environment: Environment) -> Settings:
        options = environment.parsed_options
        defaults = cls()
        return cls(**{f: getattr(options, f, getattr(defaults, f)) for f in cls.__dataclass_fields__})


class StagedShape(LoadTestShape):
    """A ``load_shapes.LoadPlan`` as a locust shape; abstract so that locust does not pick it by itself."""

    abstract = True

    def __init__(self, plan: load_shapes.LoadPlan) -> None:
        super().__init__()
        self.plan = plan

    def tick(self) -> tuple[int, float] | None:
        return self.plan.tick(self.get_run_time())


class ServerError(Exception):
    """A failed response; its text is what locust groups failures by."""


def _think_time(user: User) -> float:
    settings = getattr(user, "settings", None) or Settings.of(user.environment)
    return settings.think_time


class _InferUser:
    """What HTTP and gRPC users share: build the requests once, then cycle through them."""

    environment: Environment
    protocol: str  # what the class speaks, whatever --protocol says after the start
    settings: Settings
    infer_path: str
    requests: Any = None  # cycle over EncodedRequest once prepared

    def _metadata(self) -> tuple[dict[str, Any], dict[str, Any] | None] | None:
        raise NotImplementedError

    def _prepare(self) -> bool:
        self.settings = Settings.of(self.environment)
        fetched = self._metadata()
        if fetched is None:
            gevent.sleep(PREPARE_RETRY_S)
            return False
        spec = payloads.model_spec(*fetched)
        input_file = Path(self.settings.input_file) if self.settings.input_file else None
        try:
            built = payloads.build_requests(
                spec, self.protocol, self.settings.rows_per_request,
                count=RANDOM_BODIES, seed=id(self) & 0xFFFF, input_file=input_file,
            )  # fmt: skip
        except (OSError, ValueError) as exc:
            # A configuration that cannot work (FP16 over JSON, an unreadable file): stop the whole test.
            log.error("cannot build requests for model '%s': %s", spec.name, exc)
            self.environment.process_exit_code = 2
            if self.environment.runner is not None:
                # From its own greenlet: quitting stops every user, this one included, half-way otherwise.
                gevent.spawn(self.environment.runner.quit)
            raise StopUser() from exc
        self.infer_path = f"/v2/models/{spec.name}/infer"
        self.requests = cycle([self._finish(r) for r in built])
        return True

    def _finish(self, request: payloads.EncodedRequest) -> payloads.EncodedRequest:
        return request


class _HttpInferUser(_InferUser, FastHttpUser):
    abstract = True
    host = DEFAULT_HOST
    wait_time = _think_time

    def _get_json(self, path: str, *, optional: bool = False) -> dict[str, Any] | None:
        with self.client.get(path, name=path, catch_response=True) as response:
            if optional and response.status_code == 404:
                response.success()
                return None
            if response.status_code >= 400:
                response.failure(ServerError(_http_error(response.status_code, response.content)))
            if response.status_code != 200:
                return None  # failure recorded (connection errors by locust itself)
            body: dict[str, Any] = orjson.loads(response.content)
            return body

    def _metadata(self) -> tuple[dict[str, Any], dict[str, Any] | None] | None:
        path = f"/v2/models/{self.settings.model}"
        metadata = self._get_json(path)
        if metadata is None:
            return None
        return metadata, self._get_json(f"{path}/config", optional=True)

    def _finish(self, request: payloads.EncodedRequest) -> payloads.EncodedRequest:
        # identity: a load test measures inference, not the server compressing answers for locust.
        return replace(request, headers={**request.headers, "Accept-Encoding": "identity"})

    @task
    def infer(self) -> None:
        if self.requests is None and not self._prepare():
            return
        request = next(self.requests)
        path = self.infer_path
        post = self.client.post(path, data=request.body, headers=request.headers, name=path, catch_response=True)
        with post as response:
            if response.status_code >= 400:
                response.failure(ServerError(_http_error(response.status_code, response.content)))


class HttpBinaryUser(_HttpInferUser):
    """HTTP with Triton's binary tensor extension (``--protocol http``)."""

    protocol = "http"


class HttpJsonUser(_HttpInferUser):
    """HTTP with JSON tensors (``--protocol http-json``)."""

    protocol = "http-json"


class GrpcUser(_InferUser, User):
    """gRPC ``ModelInfer`` with raw tensor contents (``--protocol grpc``); reports to locust's events."""

    host = DEFAULT_HOST
    protocol = "grpc"
    wait_time = _think_time

    def on_start(self) -> None:
        self.settings = Settings.of(self.environment)
        target = grpc_target(self.host or DEFAULT_HOST, self.settings.grpc_port)
        self.channel = grpc.insecure_channel(target)
        self.stub = pb_grpc.GRPCInferenceServiceStub(self.channel)
        # No serializers: the request is sent as pre-encoded bytes and the answer is not parsed.
        self.model_infer = self.channel.unary_unary(payloads.GRPC_INFER_METHOD)

    def on_stop(self) -> None:
        self.channel.close()

    def _call(self, name: str, method: Any, request: Any) -> Any | None:
        started = time.perf_counter()
        response, length, error = None, 0, None
        try:
            response = method(request, timeout=GRPC_TIMEOUT_S)
            length = len(response) if isinstance(response, bytes) else response.ByteSize()
        except grpc.RpcError as exc:
            error = ServerError(f"{exc.code().name}: {exc.details()}")
        self.environment.events.request.fire(
            request_type="grpc", name=name, response_time=(time.perf_counter() - started) * 1000,
            response_length=length, exception=error, context={},
        )  # fmt: skip
        return response

    def _metadata(self) -> tuple[dict[str, Any], dict[str, Any] | None] | None:
        model = self.settings.model
        request = pb.ModelMetadataRequest(name=model)
        metadata = self._call(f"ModelMetadata {model}", self.stub.ModelMetadata, request)
        if metadata is None:
            return None
        config = self._call(f"ModelConfig {model}", self.stub.ModelConfig, pb.ModelConfigRequest(name=model))
        return payloads.grpc_metadata_as_json(metadata, config)

    @task
    def infer(self) -> None:
        if self.requests is None and not self._prepare():
            return
        self._call(f"ModelInfer {self.settings.model}", self.model_infer, next(self.requests).body)


USER_CLASSES: dict[str, type[User]] = {"http": HttpBinaryUser, "http-json": HttpJsonUser, "grpc": GrpcUser}


def grpc_target(host: str, grpc_port: int) -> str:
    """``host:port`` for gRPC: the address of locust's --host, gRPC's own port."""
    hostname = urlsplit(host if "://" in host else f"http://{host}").hostname or "127.0.0.1"
    return f"[{hostname}]:{grpc_port}" if ":" in hostname else f"{hostname}:{grpc_port}"


def _http_error(status: int, content: bytes | None) -> str:
    try:
        message = orjson.loads(content or b"")["error"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        message = (content or b"").decode("utf-8", "replace")[:200]
    return f"HTTP {status}: {message}"


@events.init.add_listener
def _configure(environment: Environment, **_kwargs: Any) -> None:
    options = environment.parsed_options
    if options is None:
        return
    # Only the user class of --protocol runs, unless classes were named on the command line.
    if not getattr(options, "user_classes", None):
        environment.user_classes[:] = [USER_CLASSES[options.protocol]]
    if options.input_file and not Path(options.input_file).is_file():
        log.error("--input-file %s: no such file", options.input_file)
        sys.exit(2)  # a usage error, not a crash: no traceback
    plan = load_shapes.make_plan(
        options.shape, options.shape_users, options.shape_steps, options.shape_step_time,
        options.shape_spike_users or None, options.shape_spike_time,
    )  # fmt: skip
    if plan is not None:
        shape = StagedShape(plan)
        shape.runner = environment.runner
        environment.shape_class = shape
        log.info("shape %s (%gs): %s", options.shape, plan.total_s, plan.describe())
