"""The gRPC front end: what terminates HTTP/2 and gRPC and hands calls to serve's servicers. One selector, as
uvicorn selects its loop and HTTP implementation; the servicers, interceptors, health and reflection are the
same on each.

* ``aio``: grpcio's ``grpc.aio`` server, the default. Everything gRPC has: TLS and mutual TLS, gzip and
  deflate, every RPC. It accepts one call per registered method per turn of the event loop and hands each
  call's ~4 completion events from its poller thread to the loop, so batches stay near 1 row
  (shared/research/grpc-frontends.md). Only the hot methods are registered methods (serve/grpc/server.py).
* ``native``: pygrpc-native (the ``serve[grpc-native]`` extra): HTTP/2 and gRPC framing, flow control,
  deadlines and cancellation run on Rust threads outside the GIL and calls reach the loop in bursts, so the
  batcher forms batches. Unary and server-streaming methods are served natively; ``ModelStreamInfer`` and
  server reflection go to a grpc.aio server behind it on a Unix socket (as fast as ``aio``). What it lacks:
  TLS (serve then uses ``aio`` and says why at start), deflate-compressed requests (UNIMPLEMENTED; gzip
  works), and a 10 MB metadata flood is refused with GOAWAY (UNAVAILABLE) rather than RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc

from serve.settings import GrpcFrontend

ServerFactory = Callable[..., grpc.aio.Server]


@dataclass(frozen=True, slots=True)
class Frontend:
    name: GrpcFrontend
    server: ServerFactory  # takes grpc.aio.server's arguments
    # Register every method as a registered method, not only the hot ones: the native front routes by path in
    # Rust (no per-method cost in Python), and serves a method only through a registration.
    register_every_method: bool
    fallback_reason: str | None = None  # why this is not the front end that was asked for


def choose_frontend(requested: GrpcFrontend, *, tls: bool) -> Frontend:
    if requested == "native" and tls:
        reason = "--grpc-frontend native has no TLS (pygrpc-native 0.5); gRPC is served by grpc.aio"
        return Frontend("aio", grpc.aio.server, False, reason)
    if requested == "native":
        return Frontend("native", _native_server(), True)
    return Frontend("aio", grpc.aio.server, False)


def _native_server() -> ServerFactory:
    import pygrpc_native.aio  # the extra is checked when the setting is read (settings.py)

    def server(**kwargs: Any) -> grpc.aio.Server:
        return pygrpc_native.aio.server(**kwargs)

    return server
