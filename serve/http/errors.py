"""Every failure of an HTTP request becomes one response, here and nowhere else.

``ErrorBoundary`` wraps the whole HTTP app (the inference endpoint and the router): a ServeError
answers with its status and ``{"error": message}``; a routing miss with 404/405; a client that
went away gets nothing (there is nobody to answer); anything else is a bug and answers 500 with
a short message and a reference that also appears in the log line carrying the traceback, never
the exception's text, which may name files or internals.
"""

from __future__ import annotations

import logging
import secrets

import orjson
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve.errors import RequestCancelled, ServeError

log = logging.getLogger("serve.http")

JSON = b"application/json"
# Where a route leaves the id of the request that failed, for its error answer's x-request-id header. The body
# stays {"error": message}: the Open Inference Protocol's error document has that one field (tritonclient reads it).
REQUEST_ID = "serve.request_id"


class ClientGone(Exception):
    """The client disconnected: there is nobody left to answer."""


def error_body(message: str) -> bytes:
    return orjson.dumps({"error": message})


def new_reference() -> str:
    return secrets.token_hex(6)


def describe(exc: BaseException, scope: Scope) -> tuple[int, str] | None:
    """The status and message for a failed request; None when nobody is left to answer."""
    if isinstance(exc, ClientGone | RequestCancelled):
        return None
    if isinstance(exc, ServeError):
        return exc.http_status, exc.message
    if isinstance(exc, HTTPException):
        if exc.status_code == 404:
            return 404, f"no route for {scope.get('method')} {scope.get('path')}"
        if exc.status_code == 405:
            return 405, f"method {scope.get('method')} is not allowed on {scope.get('path')}"
        return exc.status_code, str(exc.detail)
    reference = new_reference()
    log.error("%s %s failed (reference %s)", scope.get("method"), scope.get("path"), reference, exc_info=exc)
    return 500, f"internal error (reference {reference}; the server log has the details)"


class ErrorBoundary:
    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        # Starlette's router raises HTTPException for 404/405 only where it finds an "app".
        scope.setdefault("app", self)
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self._app(scope, receive, tracked)
        except Exception as exc:
            answer = describe(exc, scope)
            if answer is None:
                return
            if started:  # too late for a status line: all we can do is log it
                log.error("%s %s failed after the response started", scope["method"], scope["path"], exc_info=exc)
                return
            status, message = answer
            body = error_body(message)
            headers = [(b"content-type", JSON), (b"content-length", str(len(body)).encode())]
            if status == 405 and isinstance(exc, HTTPException) and exc.headers:
                headers += [(k.lower().encode(), v.encode()) for k, v in exc.headers.items()]
            request_id = scope.get(REQUEST_ID)
            if request_id:
                headers.append((b"x-request-id", request_id.encode()))
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
