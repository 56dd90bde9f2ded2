"""With tracing on: the caller's W3C trace id, read from ``traceparent``, for whatever the call logs (the audit log's
``trace_id``). Inference starts spans of its own (serve/tracing); this covers every other route."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from serve.trace_context import CALLER_TRACE_ID, trace_id_of

_TRACEPARENT = b"traceparent"


class CallerTrace:
    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for name, value in scope["headers"]:
                if name == _TRACEPARENT:
                    CALLER_TRACE_ID.set(trace_id_of(value.decode("latin-1")))
                    break
        await self._app(scope, receive, send)
