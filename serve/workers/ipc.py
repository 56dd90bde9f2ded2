"""Requests between the supervisor and its workers over Unix sockets in the server's run directory.

One request per connection: a frame holds a JSON object and an optional binary body (an
input-statistics document, a file sent with a load request), each behind a 4-byte length.
The answer is a frame of the same shape, ``{"ok": true, ...}`` or ``{"ok": false, "error":
..., "status": <ServeError class name>}``, so a failure on the other side is raised here as the
same kind of ServeError it was there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson

from serve import errors
from serve.errors import ServeError

log = logging.getLogger(__name__)

_LENGTH = struct.Struct(">I")
# What one frame may carry: input-statistics documents of many windows can be megabytes.
MAX_FRAME_BYTES = 256 * 1024 * 1024

Message = dict[str, Any]
Handler = Callable[[Message, bytes], Awaitable[tuple[Message, bytes]]]


class PeerUnavailable(ServeError):
    """The other process did not answer (it is starting, stopping or gone)."""

    http_status = 503
    grpc_code = "UNAVAILABLE"


async def _write(writer: asyncio.StreamWriter, message: Message, body: bytes) -> None:
    header = orjson.dumps(message)
    writer.write(_LENGTH.pack(len(header)) + header + _LENGTH.pack(len(body)))
    if body:
        writer.write(body)
    await writer.drain()


async def _read(reader: asyncio.StreamReader) -> tuple[Message, bytes]:
    (header_length,) = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))
    if header_length > MAX_FRAME_BYTES:
        raise ValueError(f"frame header of {header_length} bytes")
    message = orjson.loads(await reader.readexactly(header_length))
    (body_length,) = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))
    if body_length > MAX_FRAME_BYTES:
        raise ValueError(f"frame body of {body_length} bytes")
    body = await reader.readexactly(body_length) if body_length else b""
    return message, body


def _raise_for(reply: Message) -> None:
    if reply.get("ok"):
        return
    kind = getattr(errors, str(reply.get("status", "")), ServeError)
    if not (isinstance(kind, type) and issubclass(kind, ServeError)):
        kind = ServeError
    raise kind(str(reply.get("error", "the other process failed")))


async def call(path: Path, message: Message, body: bytes = b"", *, timeout_s: float = 60.0) -> tuple[Message, bytes]:
    """Send one request to the control socket at ``path`` and return its answer."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(path)), timeout_s)
    except (OSError, TimeoutError) as exc:
        raise PeerUnavailable(f"{path.name} is not answering ({type(exc).__name__})") from None
    try:
        await _write(writer, message, body)
        reply, reply_body = await asyncio.wait_for(_read(reader), timeout_s)
    except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as exc:
        raise PeerUnavailable(f"{path.name} went away during {message.get('op')!r} ({type(exc).__name__})") from None
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    _raise_for(reply)
    return reply, reply_body


class ControlServer:
    """Answers requests on a Unix socket with ``handler``; a ServeError becomes an error answer."""

    def __init__(self, path: Path, handler: Handler) -> None:
        self.path = path
        self._handler = handler
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self.path.unlink(missing_ok=True)
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            message, body = await _read(reader)
        except (asyncio.IncompleteReadError, ValueError, OSError):
            writer.close()
            return
        try:
            reply, reply_body = await self._handler(message, body)
            reply = {"ok": True, **reply}
        except ServeError as exc:
            reply, reply_body = {"ok": False, "error": exc.message, "status": type(exc).__name__}, b""
        except Exception:
            log.exception("control request %r failed", message.get("op"))
            reply, reply_body = {"ok": False, "error": f"{message.get('op')!r} failed (see the log)"}, b""
        try:
            await _write(writer, reply, reply_body)
        except OSError:
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        self.path.unlink(missing_ok=True)
