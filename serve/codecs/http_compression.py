"""Request body Content-Encoding: gzip, deflate, identity, inflated under a hard size cap.

The body is inflated in bounded steps (``max_length``) so that a small "bomb" stops at
``max_size + 1`` bytes instead of filling memory.
"""

from __future__ import annotations

import zlib

from serve.errors import InvalidInput, PayloadTooLarge

_GZIP_WBITS = 16 + zlib.MAX_WBITS
_ZLIB_WBITS = zlib.MAX_WBITS
_RAW_WBITS = -zlib.MAX_WBITS


def decompress_body(body: bytes, content_encoding: str | None, *, max_size: int) -> bytes:
    encoding = (content_encoding or "").strip().lower()
    if encoding in ("", "identity"):
        if len(body) > max_size:
            raise PayloadTooLarge(f"request body of {len(body)} bytes exceeds the limit of {max_size} bytes")
        return body
    if encoding in ("gzip", "x-gzip"):
        return _inflate_gzip(body, max_size)
    if encoding == "deflate":
        return _inflate_deflate(body, max_size)
    raise InvalidInput(f"unsupported Content-Encoding '{content_encoding}' (supported: gzip, deflate, identity)")


def _inflate_gzip(body: bytes, max_size: int) -> bytes:
    # A gzip body may hold several members back to back (RFC 1952 §2.2); each is inflated in turn.
    parts: list[bytes] = []
    total = 0
    data = body
    while True:
        total, rest = _inflate_stream(data, _GZIP_WBITS, "gzip", parts, total, max_size)
        if not rest.strip(b"\x00"):  # some writers pad the last member with zero bytes
            return b"".join(parts)
        data = rest


def _inflate_deflate(body: bytes, max_size: int) -> bytes:
    # HTTP "deflate" is the zlib format (RFC 9110 §8.4.1.2) and that is what tritonclient sends,
    # but some clients send a bare deflate stream; the zlib header tells them apart.
    wbits = _ZLIB_WBITS if _looks_like_zlib(body) else _RAW_WBITS
    parts: list[bytes] = []
    try:
        _, rest = _inflate_stream(body, wbits, "deflate", parts, 0, max_size)
    except InvalidInput:
        if wbits == _RAW_WBITS:
            raise
        # A raw stream whose first two bytes happen to pass the zlib header check.
        parts.clear()
        _, rest = _inflate_stream(body, _RAW_WBITS, "deflate", parts, 0, max_size)
    if rest:
        raise InvalidInput(f"deflate request body has {len(rest)} bytes after the end of the compressed stream")
    return b"".join(parts)


def _looks_like_zlib(body: bytes) -> bool:
    if len(body) < 2:
        return False
    cmf, flg = body[0], body[1]
    return (cmf & 0x0F) == 8 and (cmf >> 4) <= 7 and ((cmf << 8) | flg) % 31 == 0


def _inflate_stream(
    data: bytes, wbits: int, name: str, parts: list[bytes], total: int, max_size: int
) -> tuple[int, bytes]:
    """Inflate one stream into ``parts``; returns the new total and the bytes after the stream."""
    inflater = zlib.decompressobj(wbits)
    try:
        while not inflater.eof:
            # max_length 0 would mean "unlimited", so the bound is always at least 1.
            chunk = inflater.decompress(data, max_size - total + 1)
            if chunk:
                total += len(chunk)
                if total > max_size:
                    raise PayloadTooLarge(f"decompressed request body exceeds the limit of {max_size} bytes")
                parts.append(chunk)
            data = inflater.unconsumed_tail
            if not chunk and not data:
                raise InvalidInput(f"{name} request body is truncated")
    except zlib.error as exc:
        raise InvalidInput(f"{name} request body could not be decompressed: {exc}") from None
    return total, inflater.unused_data
