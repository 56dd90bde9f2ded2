"""The grpc.aio server: inference service, standard health checking and server reflection."""

from __future__ import annotations

import errno
import socket
from collections.abc import Sequence

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from serve.core import InferenceService
from serve.grpc.decoding import add_decoding_safely
from serve.grpc.frontends import Frontend, choose_frontend
from serve.grpc.health import ServiceHealth
from serve.grpc.input_stats_service import SERVICE_NAME as MONITORING_SERVICE_NAME
from serve.grpc.input_stats_service import add_monitoring_servicer
from serve.grpc.rollout_service import SERVICE_NAME as ROLLOUT_SERVICE_NAME
from serve.grpc.rollout_service import add_rollout_servicer
from serve.grpc.service import InferenceServicer
from serve.input_stats.served_baseline import BaselineLookup
from serve.input_stats.wiring import StatsDocuments
from serve.listening import bind_error_reason
from serve.protocol import grpc_service_pb2 as pb
from serve.protocol import grpc_service_pb2_grpc as pb_grpc
from serve.protocol._pool import POOL
from serve.security.tls import TlsFiles

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
# The calls that carry traffic: registered methods, which grpc.aio matches without a generic lookup.
HOT_METHODS = frozenset({"ModelInfer", "ModelStreamInfer"})
ALL_INFERENCE_METHODS = frozenset(m.name for m in pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods)
HEALTH_METHODS = frozenset(m.name for m in health_pb2.DESCRIPTOR.services_by_name["Health"].methods)


def _add_to_pool(module: object) -> None:
    """Make a default-pool proto file (health) describable by reflection from our private pool."""
    descriptor = module.DESCRIPTOR  # type: ignore[attr-defined]
    try:
        POOL.FindFileByName(descriptor.name)
    except KeyError:
        POOL.AddSerializedFile(descriptor.serialized_pb)


def create_grpc_server(
    service: InferenceService,
    *,
    address: str,
    max_message_bytes: int,
    stats_lookup: StatsDocuments | None = None,
    baseline_lookup: BaselineLookup | None = None,
    reuse_port: bool = False,
    tls: TlsFiles | None = None,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    frontend: Frontend | None = None,
) -> tuple[grpc.aio.Server, ServiceHealth, int]:
    """Build and bind the server (over TLS with ``tls``) on ``frontend`` (grpc.aio unless given); returns it, its
    health servicer and the bound port."""
    frontend = frontend or choose_frontend("aio", tls=tls is not None)
    server = frontend.server(
        interceptors=list(interceptors) or None,
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            # A second server on a taken port must fail, not silently share it; worker processes
            # share theirs on purpose (serve/workers).
            ("grpc.so_reuseport", 1 if reuse_port else 0),
            # tritonclient pings rarely; accept its keepalives without GOAWAY storms.
            ("grpc.http2.min_ping_interval_without_data_ms", 5000),
            ("grpc.keepalive_permit_without_calls", 1),
        ],
    )
    # Registered so that bytes that are not the request message answer INVALID_ARGUMENT (decoding.py).
    inference_methods = ALL_INFERENCE_METHODS if frontend.register_every_method else HOT_METHODS
    add_decoding_safely(
        pb_grpc.add_GRPCInferenceServiceServicer_to_server,
        InferenceServicer(service),
        server,
        registered=inference_methods,
    )
    health_servicer = ServiceHealth(service, [SERVICE_NAME])
    add_decoding_safely(
        health_pb2_grpc.add_HealthServicer_to_server,
        health_servicer,
        server,
        registered=HEALTH_METHODS if frontend.register_every_method else (),
    )
    add_rollout_servicer(server, service, register_methods=frontend.register_every_method)
    services = [SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME, ROLLOUT_SERVICE_NAME]
    if stats_lookup is not None and baseline_lookup is not None:
        add_monitoring_servicer(
            server, stats_lookup, baseline_lookup, service, register_methods=frontend.register_every_method
        )
        services.append(MONITORING_SERVICE_NAME)
    _add_to_pool(health_pb2)
    reflection.enable_server_reflection(services, server, pool=POOL)
    try:
        port = server.add_secure_port(address, _credentials(tls)) if tls else server.add_insecure_port(address)
    except RuntimeError:  # grpcio raises this, with no reason, when the bind fails
        port = 0
    if port == 0:
        raise OSError(errno.EADDRNOTAVAIL, f"cannot listen for gRPC on {address}: {_why_not(address)}")
    return server, health_servicer, port


def _credentials(tls: TlsFiles) -> grpc.ServerCredentials:
    # With a client CA, a client must present a certificate it signed (mutual TLS).
    return grpc.ssl_server_credentials(
        [(tls.key, tls.cert)], root_certificates=tls.client_ca, require_client_auth=tls.mutual
    )


def _why_not(address: str) -> str:
    # grpcio does not say why a bind failed; trying the same bind on a plain socket does.
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.create_server((host, int(port)), family=family):
            return "the address could not be bound"
    except (OSError, ValueError) as exc:
        return bind_error_reason(exc) if isinstance(exc, OSError) else str(exc)


async def set_serving(health_servicer: ServiceHealth, serving: bool) -> None:
    """True: every transport is up, the health service may say what the service's readiness says.
    False: the server is stopping; told to the InferenceService, so that every readiness answer (HTTP,
    ServerReady, gRPC health) turns at once and stays turned."""
    if not serving:
        health_servicer.service.shutting_down = True
    health_servicer.set_started(serving)
