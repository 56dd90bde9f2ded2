"""A prototype for bench/grpc_handoff.py: HTTP/2 and gRPC terminated once, in a front process, and each call
handed to a worker process over a Unix socket, so that one client connection reaches every worker.

``front``: pygrpc-native's NativeGrpcFront (Rust HTTP/2 + gRPC, outside the GIL) serves ModelInfer; each burst
of calls it hands over is split across the workers (each call to the worker with the fewest calls
outstanding) and written to each worker's socket in one write; a thread per worker reads the answers and
hands them back to the front. ``worker``: serve's InferenceService over the repository; each call is
decoded, run through the batcher and encoded exactly as serve's gRPC servicer does it.

Frames, both ways: u32 length of what follows, u64 call id, then the ModelInferRequest (to a worker) or a
status byte (0 OK, else a gRPC status code) and the ModelInferResponse or error text (back). Deadlines,
metadata, cancellation, TLS and streaming are not carried: this measures what the hand-off costs, nothing more.

    python -m bench._handoff front --port P --workers DIR/w0.sock,DIR/w1.sock
    python -m bench._handoff worker --socket DIR/w0.sock --repository REPO
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import struct
import threading
import time
from pathlib import Path

HEADER = struct.Struct("<IQ")  # length of what follows the length, call id
METHOD = "/inference.GRPCInferenceService/ModelInfer"


def run_front(port: int, worker_paths: list[str]) -> None:
    from pygrpc_native._native import NativeGrpcFront

    workers = []
    for path in worker_paths:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        deadline = time.monotonic() + 60
        while True:
            try:
                sock.connect(path)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        workers.append(sock)
    front = NativeGrpcFront(f"127.0.0.1:{port}", [(METHOD, False)], io_threads=1)
    outstanding = [0] * len(workers)
    lock = threading.Lock()

    def answers(index: int) -> None:
        sock, buffer = workers[index], bytearray()
        while chunk := sock.recv(1 << 20):
            buffer += chunk
            offset, done = 0, 0
            while len(buffer) - offset >= 4:
                (length,) = struct.unpack_from("<I", buffer, offset)
                if len(buffer) - offset - 4 < length:
                    break
                (call_id,) = struct.unpack_from("<Q", buffer, offset + 4)
                status = buffer[offset + 12]
                body = bytes(buffer[offset + 13 : offset + 4 + length])
                if status == 0:
                    front.respond(call_id, body)
                else:
                    front.fail(call_id, status, body.decode())
                offset += 4 + length
                done += 1
            del buffer[:offset]
            with lock:
                outstanding[index] -= done

    for index in range(len(workers)):
        threading.Thread(target=answers, args=(index,), daemon=True).start()
    front.start()
    print(f"front on {front.bound_port}", flush=True)
    while (events := front.recv_batch(256)) is not None:
        frames: list[list[bytes]] = [[] for _ in workers]
        with lock:
            for _kind, call_id, _method, payload, _key in events:
                if payload is None:  # a cancellation: not carried by this prototype
                    continue
                index = min(range(len(workers)), key=outstanding.__getitem__)
                outstanding[index] += 1
                frames[index].append(HEADER.pack(8 + len(payload), call_id) + payload)
        for sock, batch in zip(workers, frames, strict=True):
            if batch:
                sock.sendall(b"".join(batch))


async def run_worker(path: str, repository: Path) -> None:
    from serve.codecs import grpc_codec
    from serve.core import InferenceService
    from serve.grpc.errors import message_of
    from serve.protocol import grpc_service_pb2 as pb
    from serve.settings import ServerSettings

    settings = ServerSettings(ort_intra_op_threads=1, stats_enabled=False)
    service = InferenceService.create(repository, settings, [])
    await service.repository.load_all()

    async def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async def answer(call_id: int, payload: bytes) -> None:
            request = pb.ModelInferRequest.FromString(payload)
            try:
                response = await service.infer_decoding(
                    request.model_name,
                    request.model_version,
                    lambda _: grpc_codec.decode_infer_request(request),
                    "grpc",
                )
                body = b"\x00" + grpc_codec.encode_infer_response(response).SerializeToString()
            except Exception as exc:  # every call gets an answer
                body = b"\x0d" + message_of(exc, "ModelInfer").encode()
            writer.write(HEADER.pack(8 + len(body), call_id) + body)

        tasks: set[asyncio.Task[None]] = set()
        while True:
            try:
                length, call_id = HEADER.unpack(await reader.readexactly(HEADER.size))
                payload = await reader.readexactly(length - 8)
            except asyncio.IncompleteReadError:
                break
            task = asyncio.ensure_future(answer(call_id, payload))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        writer.close()

    server = await asyncio.start_unix_server(connected, path)
    print(f"worker on {path}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="role", required=True)
    front = sub.add_parser("front")
    front.add_argument("--port", type=int, required=True)
    front.add_argument("--workers", required=True, help="the workers' sockets, comma-separated")
    worker = sub.add_parser("worker")
    worker.add_argument("--socket", required=True)
    worker.add_argument("--repository", type=Path, required=True)
    args = parser.parse_args()
    if args.role == "front":
        run_front(args.port, args.workers.split(","))
    else:
        import uvloop

        uvloop.run(run_worker(args.socket, args.repository))


if __name__ == "__main__":
    main()
