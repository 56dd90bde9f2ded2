"""The gate that holds gRPC calls while the server stops (serve/grpc/drain.py), on a grpc.aio
server in the test's loop with a method that echoes and the standard health service."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from serve.grpc.drain import DrainGate

ECHO = "/test.Echo/Say"


async def _say(request: bytes, _: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    return request


@contextlib.asynccontextmanager
async def _gated() -> AsyncIterator[tuple[DrainGate, grpc.aio.Channel]]:
    gate = DrainGate()
    server = grpc.aio.server(interceptors=[gate])
    echo = grpc.unary_unary_rpc_method_handler(_say)
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("test.Echo", {"Say": echo})])
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield gate, channel
    finally:
        gate.release()
        await server.stop(None)


async def _until_held(gate: DrainGate, timeout_s: float = 10) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while gate.held == 0:
        assert asyncio.get_running_loop().time() < deadline, "the call never reached the gate"
        await asyncio.sleep(0.01)


def _echo(channel: grpc.aio.Channel) -> grpc.aio.UnaryUnaryCall[bytes, bytes]:
    return channel.unary_unary(ECHO)(b"hi", timeout=10)


async def test_calls_pass_until_the_gate_closes() -> None:
    async with _gated() as (_, channel):
        assert await _echo(channel) == b"hi"


async def test_a_call_that_arrives_after_close_waits_for_release_then_runs() -> None:
    async with _gated() as (gate, channel):
        gate.close()
        call = asyncio.ensure_future(_echo(channel))
        await _until_held(gate)
        await asyncio.sleep(0.1)
        assert not call.done()
        gate.release()
        assert await call == b"hi"
        assert gate.held == 0


async def test_health_checks_are_answered_while_calls_are_held() -> None:
    async with _gated() as (gate, channel):
        gate.close()
        check = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert (await check).status == health_pb2.HealthCheckResponse.SERVING


async def test_quiet_is_reached_once_no_call_has_arrived_for_the_quiet_time() -> None:
    async with _gated() as (gate, channel):
        gate.close()
        held = asyncio.ensure_future(_echo(channel))
        await _until_held(gate)
        assert await gate.quiet(0.1, limit_s=5) is True
        gate.release()
        await held


async def test_quiet_gives_up_at_its_limit_while_calls_keep_arriving() -> None:
    async with _gated() as (gate, channel):
        gate.close()
        stub = health_pb2_grpc.HealthStub(channel)  # answered at once, so a client can keep calling

        async def keep_checking() -> None:
            while True:
                await stub.Check(health_pb2.HealthCheckRequest(), timeout=10)
                await asyncio.sleep(0.01)

        client = asyncio.ensure_future(keep_checking())
        try:
            assert await gate.quiet(0.2, limit_s=0.5) is False
        finally:
            client.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await client
