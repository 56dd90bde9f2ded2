"""gRPC calls handed from one front end to worker processes: HTTP/2 is terminated once (in the supervisor), and
each ModelInfer call's bytes go to a worker over a Unix socket, so one client connection reaches every worker
(bench/README.md, "HTTP/2 terminated once, calls handed to workers").

``serve run --workers N --grpc-frontend native`` (N > 1, no TLS) runs it: the supervisor's front.py on the gRPC
port, and in each worker a worker.py listener plus a grpc.aio server for every other method, on the Unix sockets
that serve/roles.py's GrpcHandoff names (worker 0's grpc.aio server takes the other methods)."""

from __future__ import annotations


def hands_off(frontend: str, workers: int, tls: bool) -> bool:
    """Whether the supervisor runs the front end: the native front end, several workers, and no TLS (the Rust
    front end has none yet; each worker then serves gRPC itself on grpc.aio, sharing the port)."""
    return frontend == "native" and workers > 1 and not tls
