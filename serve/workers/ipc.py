"""Requests between the supervisor and its workers over Unix sockets in the server's run directory.

One request per connection: a frame holds a JSON header and an optional binary body, each behind a
4-byte length; the answer is a frame of the same shape. codec.py decides what goes in them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Generic, TypeVar

import orjson

from serve.errors import ServeError
from serve.workers import codec
from serve.workers.codec import JsonObject, MalformedMessage
from serve.workers.messages import A, Answer, Request

log = logging.getLogger(__name__)

_LENGTH = struct.Struct(">I")
# What one frame may carry: input-statistics documents of many windows can be megabytes.
MAX_FRAME_BYTES = 256 * 1024 * 1024

R = TypeVar("R", bound=Request[Answer])


class PeerUnavailable(ServeError):
    """The other process did not answer (it is starting, stopping or gone)."""

    http_status = 503
    grpc_code = "UNAVAILABLE"


async def _write(writer: asyncio.StreamWriter, header: JsonObject, body: bytes) -> None:
    encoded = orjson.dumps(header)
    writer.write(_LENGTH.pack(len(encoded)) + encoded + _LENGTH.pack(len(body)))
    if body:
        writer.write(body)
    await writer.drain()


async def _read(reader: asyncio.StreamReader) -> tuple[Mapping[str, object], bytes]:
    """One frame; a frame too long or a header that is not a JSON object is a MalformedMessage."""
    (header_length,) = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))
    if header_length > MAX_FRAME_BYTES:
        raise MalformedMessage(f"frame header of {header_length} bytes")
    try:
        header = orjson.loads(await reader.readexactly(header_length))
    except orjson.JSONDecodeError as exc:
        raise MalformedMessage(f"frame header is not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise MalformedMessage(f"frame header is a JSON {type(header).__name__}, not an object")
    (body_length,) = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))
    if body_length > MAX_FRAME_BYTES:
        raise MalformedMessage(f"frame body of {body_length} bytes")
    body = await reader.readexactly(body_length) if body_length else b""
    return header, body


async def call(path: Path, request: Request[A], *, timeout_s: float = 60.0) -> A:
    """Send one request to the control socket at ``path`` and return its answer."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(path)), timeout_s)
    except (OSError, TimeoutError) as exc:
        raise PeerUnavailable(f"{path.name} is not answering ({type(exc).__name__})") from None
    try:
        await _write(writer, *codec.encode_request(request))
        header, body = await asyncio.wait_for(_read(reader), timeout_s)
    except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
        raise PeerUnavailable(f"{path.name} went away during {request.kind!r} ({type(exc).__name__})") from None
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    return codec.decode_answer(request, header, body)


class ControlServer(Generic[R]):
    """Answers the requests of ``kinds`` on a Unix socket with ``answer``.

    A ServeError becomes an error answer. A frame that is not one of ``kinds`` is logged once and
    answered with an error; it never stops the server.
    """

    def __init__(self, path: Path, kinds: Sequence[type[R]], answer: Callable[[R], Awaitable[Answer]]) -> None:
        self.path = path
        self._kinds = kinds
        self._answer = answer
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self.path.unlink(missing_ok=True)
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            header, body = await self._answer_frame(reader)
        except (asyncio.IncompleteReadError, OSError):
            writer.close()  # the asker went away
            return
        try:
            await _write(writer, header, body)
        except OSError:
            pass
        finally:
            writer.close()

    async def _answer_frame(self, reader: asyncio.StreamReader) -> tuple[JsonObject, bytes]:
        kind: object = None
        try:
            header, body = await _read(reader)
            kind = header.get("op")
            request = codec.decode_request(header, body, self._kinds)
            return codec.encode_answer(await self._answer(request))
        except MalformedMessage as exc:
            log.error("%s: malformed request: %s", self.path.name, exc.message)
            return codec.encode_error(exc), b""
        except ServeError as exc:
            return codec.encode_error(exc), b""
        except Exception:
            log.exception("control request %r failed", kind)
            return codec.encode_error(ServeError(f"{kind!r} failed (see the log)")), b""

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        self.path.unlink(missing_ok=True)
