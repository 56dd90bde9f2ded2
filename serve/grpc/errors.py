"""Every failure of a gRPC call becomes one status, here and nowhere else.

A ServeError aborts with the status code it carries and its message. Anything else is a bug:
INTERNAL with a short message and a reference that also appears in the log line carrying the
traceback, never the exception's text, which may name files or internals. ``rpc`` applies this
to a unary method; the stream method answers each failed request with ``message_of``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from serve.errors import ServeError

log = logging.getLogger("serve.grpc")

S = TypeVar("S")
Req = TypeVar("Req")
Resp = TypeVar("Resp")

Method = Callable[[S, Req, grpc.aio.ServicerContext[Any, Any]], Awaitable[Resp]]


def status_of(exc: Exception, what: str) -> tuple[grpc.StatusCode, str]:
    if isinstance(exc, ServeError):
        return getattr(grpc.StatusCode, exc.grpc_code), exc.message
    reference = secrets.token_hex(6)
    log.error("gRPC %s failed (reference %s)", what, reference, exc_info=exc)
    return grpc.StatusCode.INTERNAL, f"internal error (reference {reference}; the server log has the details)"


def code_name_of(exc: BaseException) -> str:
    """The name of the status a call that raised ``exc`` ends with (for its span), without logging anything."""
    if isinstance(exc, ServeError):
        return exc.grpc_code
    if isinstance(exc, asyncio.CancelledError):
        return "CANCELLED"
    return "INTERNAL"


def message_of(exc: Exception, what: str) -> str:
    return status_of(exc, what)[1]


def rpc(method: Method[S, Req, Resp]) -> Method[S, Req, Resp]:
    @functools.wraps(method)
    async def guarded(self: S, request: Req, context: grpc.aio.ServicerContext[Any, Any]) -> Resp:
        try:
            return await method(self, request, context)
        except grpc.aio.AbortError:
            raise  # context.abort() was called: the status is already set
        except Exception as exc:
            code, message = status_of(exc, method.__name__)
            await context.abort(code, message)
            raise AssertionError("unreachable: abort raises") from None

    return guarded
