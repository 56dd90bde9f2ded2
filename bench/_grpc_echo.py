"""A bare grpc.aio server whose ModelInfer returns the request bytes: grpc.aio's own floor.

Registered generically with no (de)serializers, so no protobuf is parsed or built; it runs on
uvloop with the same message-size options as ``serve``, so the difference between the two is
what ``serve`` does per call.

    python -m bench._grpc_echo --port 8001
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import grpc

SERVICE = "inference.GRPCInferenceService"
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


async def echo(request: bytes, context: Any) -> bytes:
    return request


async def serve(host: str, port: int) -> None:
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ]
    )
    handler = grpc.method_handlers_generic_handler(SERVICE, {"ModelInfer": grpc.unary_unary_rpc_method_handler(echo)})
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"{host}:{port}")
    await server.start()
    await server.wait_for_termination()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    loop: asyncio.AbstractEventLoop
    try:
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:  # as serve's own cli does
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(serve(args.host, args.port))
    except KeyboardInterrupt:
        pass
    finally:
        loop.close()


if __name__ == "__main__":
    main()
