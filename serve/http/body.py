"""Reading a request body with the size limit enforced before and while it arrives."""

from __future__ import annotations

from collections.abc import Mapping

from starlette.types import Receive

from serve.errors import InvalidInput, PayloadTooLarge
from serve.http.errors import ClientGone


async def read_body(headers: Mapping[str, str], receive: Receive, max_bytes: int) -> bytes:
    declared = headers.get("content-length")
    if declared is not None:
        try:
            too_big = int(declared) > max_bytes
        except ValueError:
            raise InvalidInput("Content-Length is not an integer") from None
        if too_big:
            raise PayloadTooLarge(f"request body of {declared} bytes is over the {max_bytes}-byte limit")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > max_bytes:
                raise PayloadTooLarge(f"request body is over the {max_bytes}-byte limit")
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)
