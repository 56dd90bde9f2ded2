"""What a server is to the processes around it: the whole server, or one worker of several.

The composition root (serve/server.py) asks its role, never ``role is not None``, how to listen,
where server-wide answers come from and who serves --metrics-port."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Protocol

from serve.core.cluster import Cluster
from serve.input_stats.wiring import StatsDocuments
from serve.listening import bind_http_socket
from serve.metrics.multiprocess import multiprocess_dir


class WorkersCluster(Cluster, Protocol):
    """The Cluster a worker asks (serve/workers' SupervisorLink), which also merges input statistics."""

    async def input_stats(self, name: str, version: str, since: int) -> bytes:
        """The model version's statistics document, merged over the workers."""
        ...


@dataclass(frozen=True)
class SingleProcess:
    """The whole server is this process: it binds its ports alone and serves --metrics-port itself."""

    cluster: ClassVar[None] = None  # the core answers from this process (serve/core/cluster.py LocalCluster)
    grpc_handoff: ClassVar[None] = None  # it serves gRPC on its port itself
    reuse_port: ClassVar[bool] = False
    serves_metrics_port: ClassVar[bool] = True
    decides_rollouts: ClassVar[bool] = True  # runs the rollout analyser (one process decides)

    def metrics_dir(self) -> Path | None:
        return None

    def listen_http(self, host: str, port: int) -> socket.socket:
        return bind_http_socket(host, port)

    def input_stats(self, local: StatsDocuments) -> StatsDocuments:
        return local


@dataclass(frozen=True)
class GrpcHandoff:
    """Where a worker takes the gRPC calls that the supervisor's front end hands over (serve/grpc/handoff)."""

    calls: Path  # ModelInfer calls, as hand-off frames
    fallback: Path  # every other method, on the worker's grpc.aio server

    @classmethod
    def of_worker(cls, run_dir: Path, index: int) -> GrpcHandoff:
        return cls(run_dir / f"grpc-handoff-{index}.sock", run_dir / f"grpc-{index}.sock")


@dataclass(frozen=True)
class WorkerRole:
    """What makes a Server one worker of several (serve/workers)."""

    index: int
    cluster: WorkersCluster
    http_socket: socket.socket | None  # listening, shared by every worker; None = bind with SO_REUSEPORT
    grpc_handoff: GrpcHandoff | None = None  # None = serve gRPC on the port itself, with SO_REUSEPORT
    reuse_port: ClassVar[bool] = True
    serves_metrics_port: ClassVar[bool] = False  # the supervisor serves it, merged over the workers

    @property
    def decides_rollouts(self) -> bool:
        """Only worker 0 runs the rollout analyser, on the evidence merged over every worker."""
        return self.index == 0

    def metrics_dir(self) -> Path | None:
        return multiprocess_dir()

    def listen_http(self, host: str, port: int) -> socket.socket:
        if self.http_socket is not None:
            return self.http_socket
        return bind_http_socket(host, port, reuse_port=True)

    def input_stats(self, local: StatsDocuments) -> StatsDocuments:
        return self.cluster.input_stats


Role = SingleProcess | WorkerRole
SINGLE_PROCESS = SingleProcess()
