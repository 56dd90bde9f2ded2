"""Bearer-token auth in front of the whole HTTP app (with --auth-tokens-file).

What each path needs:
- ``/v2/health/live`` and ``/v2/health/ready``: nothing, so that probes need no secret;
- ``/v2/repository/.../load`` and ``.../unload``, ``/v2/models/{m}/rollout[/...]``, and a POST to
  ``/v2[/models/{m}]/trace/setting`` (a change of the trace settings): a token of scope ``admin``, always;
- ``/v2/repository/.../index`` (read-only: what metadata shows too): scope ``inference``, so that the
  drift monitor can find the models with an inference token;
- everything else (inference, metadata, config, statistics, input-stats, baseline, reading the trace settings,
  /metrics, and paths that do not exist, so that a scanner learns nothing): scope ``inference`` (or admin),
  unless --no-auth-inference.

A missing or unknown token is 401 with ``WWW-Authenticate: Bearer``; a known token without the
scope is 403. Both answer ``{"error": ...}`` like every other error and never echo the token.
The identity of an admin call reaches the handlers (``actor_of``) for the audit log; refused
repository calls are audited as ``denied``.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from serve.http.errors import JSON, error_body
from serve.repository.repository import ANONYMOUS
from serve.security.audit import DENIED, UNAUTHENTICATED, AuditLog
from serve.security.tokens import ADMIN, INFERENCE, TokenStore, bearer_token
from serve.security.tokens import Scope as TokenScope

OPEN_PATHS = frozenset({"/v2/health/live", "/v2/health/ready"})
REPOSITORY_PREFIX = "/v2/repository"
MODELS_PREFIX = "/v2/models/"
ROLLOUT = "rollout"
TRACE_SETTING = "trace_setting"  # the audit log's action for a change of the trace settings
_GLOBAL_TRACE_SETTING = "/v2/trace/setting"
_ACTOR = "serve.actor"  # the scope key carrying an admin call's identity
_AUTHORIZATION = b"authorization"


def required_scope(path: str, method: str) -> TokenScope | None:
    if path in OPEN_PATHS:
        return None
    if path.startswith(REPOSITORY_PREFIX):  # a prefix, not the routes: whatever lies below is admin's
        return INFERENCE if path.rstrip("/").endswith("/index") else ADMIN
    if rollout_call(path)[0] or trace_setting_call(path, method)[0]:
        return ADMIN
    return INFERENCE


def trace_setting_call(path: str, method: str) -> tuple[str, str]:
    """(action, model) of a change of the trace settings (a POST; model "" for the global ones); ("", "")
    otherwise: reading them is the inference scope's, like metadata."""
    if method != "POST":
        return "", ""
    if path == _GLOBAL_TRACE_SETTING:
        return TRACE_SETTING, ""
    if path.startswith(MODELS_PREFIX):
        parts = path[len(MODELS_PREFIX) :].split("/")
        if len(parts) == 3 and parts[1:] == ["trace", "setting"]:
            return TRACE_SETTING, parts[0]
    return "", ""


def rollout_call(path: str) -> tuple[str, str]:
    """(action, model) of a rollout API path (``/v2/models/{m}/rollout[/promote|/abort]``); ("", "") otherwise."""
    if not path.startswith(MODELS_PREFIX):
        return "", ""
    parts = path[len(MODELS_PREFIX) :].rstrip("/").split("/")
    if len(parts) >= 2 and parts[1] == ROLLOUT:
        # Anything below …/rollout is admin's, so that an unknown path there tells a reader nothing either.
        return ("rollout_" + parts[2] if len(parts) == 3 else "rollout"), parts[0]
    return "", ""


def actor_of(scope: Scope) -> str:
    """Who made this call: its token's identity, or ``anonymous`` without token auth."""
    actor = scope.get(_ACTOR, ANONYMOUS)
    return actor if isinstance(actor, str) else ANONYMOUS


def repository_call(path: str) -> tuple[str, str]:
    """(action, model) of a repository API path, for the audit log; ("", "") for another path."""
    parts = path[len(REPOSITORY_PREFIX) :].strip("/").split("/")
    if parts[-1] == "index":
        return "index", ""
    if len(parts) >= 3 and parts[-3] == "models" and parts[-1] in ("load", "unload"):
        return parts[-1], parts[-2]
    return "", ""


def _authorization(scope: Scope) -> str | None:
    for key, value in scope["headers"]:
        if key.lower() == _AUTHORIZATION:
            return bearer_token(value.decode("latin-1"))
    return None


class BearerAuth:
    def __init__(
        self, app: ASGIApp, tokens: TokenStore, *, protect_inference: bool, audit: AuditLog | None = None
    ) -> None:
        self._app = app
        self._tokens = tokens
        self._protect_inference = protect_inference
        self._audit = audit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        needed = required_scope(scope["path"], scope["method"])
        if needed is None or (needed == INFERENCE and not self._protect_inference):
            await self._app(scope, receive, send)
            return
        presented = _authorization(scope)
        identity = self._tokens.identify(presented)
        if identity is None:
            why = "no bearer token was sent" if presented is None else "the bearer token is not valid"
            self._denied(scope, UNAUTHENTICATED, why)
            await _refuse(
                send,
                401,
                f"{why}: this endpoint needs 'Authorization: Bearer <token>' with a token of scope {needed}",
                b'Bearer realm="serve"' if presented is None else b'Bearer realm="serve", error="invalid_token"',
            )
            return
        if not identity.allows(needed):
            self._denied(scope, identity.name, f"the token's scope is {identity.scope}")
            await _refuse(
                send,
                403,
                f"the token of '{identity.name}' has scope {identity.scope}; this endpoint needs scope {needed}",
                f'Bearer realm="serve", error="insufficient_scope", scope="{needed}"'.encode(),
            )
            return
        scope[_ACTOR] = identity.name
        await self._app(scope, receive, send)

    def _denied(self, scope: Scope, actor: str, reason: str) -> None:
        if self._audit is None:
            return
        action, model = repository_call(scope["path"])
        if not action:
            action, model = rollout_call(scope["path"])
        if not action:
            action, model = trace_setting_call(scope["path"], scope["method"])
        if action:
            self._audit.api_call(action, actor, model, DENIED, reason)


async def _refuse(send: Send, status: int, message: str, challenge: bytes) -> None:
    body = error_body(message)
    headers = [
        (b"content-type", JSON),
        (b"content-length", str(len(body)).encode()),
        (b"www-authenticate", challenge),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
