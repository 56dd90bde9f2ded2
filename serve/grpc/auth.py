"""Bearer-token auth for every gRPC call (with --auth-tokens-file), as for HTTP (serve/http/auth.py).

The token comes in the ``authorization`` metadata (``Bearer <token>``; tritonclient sends it with
``headers={"Authorization": "Bearer ..."}``). What each method needs:
- the standard health service, server reflection, ServerLive and ServerReady: nothing;
- RepositoryModelLoad, RepositoryModelUnload and every method of ``serve.rollout.Rollouts``: scope ``admin``,
  always; RepositoryIndex (read-only) ``inference``;
- TraceSetting, one method for reading and changing: decided per request, once it is decoded: with settings (a
  change) ``admin``, always; without (a read) ``inference``, like metadata;
- everything else (inference, metadata, config, statistics, the monitoring service): scope
  ``inference`` (or admin), unless --no-auth-inference.

A missing or unknown token is UNAUTHENTICATED, a known one without the scope PERMISSION_DENIED;
neither message echoes the token. An admin call's identity reaches the servicer through
``current_actor()`` (a context variable set around that call only).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import grpc

from serve.repository.repository import ANONYMOUS
from serve.security.audit import DENIED, UNAUTHENTICATED, AuditLog
from serve.security.tokens import ADMIN, INFERENCE, Scope, TokenStore, bearer_token

_INFERENCE_SERVICE = "/inference.GRPCInferenceService/"
_ROLLOUT_SERVICE = "/serve.rollout.Rollouts/"
OPEN_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)
OPEN_METHODS = frozenset({_INFERENCE_SERVICE + "ServerLive", _INFERENCE_SERVICE + "ServerReady"})
ADMIN_METHODS = {
    _INFERENCE_SERVICE + "RepositoryIndex": "index",
    _INFERENCE_SERVICE + "RepositoryModelLoad": "load",
    _INFERENCE_SERVICE + "RepositoryModelUnload": "unload",
    _ROLLOUT_SERVICE + "GetRollout": "rollout_status",
    _ROLLOUT_SERVICE + "SetRollout": "rollout_set",
    _ROLLOUT_SERVICE + "PromoteRollout": "rollout_promote",
    _ROLLOUT_SERVICE + "AbortRollout": "rollout_abort",
}

TRACE_SETTING = "trace_setting"  # the audit log's action, as over HTTP
_TRACE_SETTING_METHOD = _INFERENCE_SERVICE + "TraceSetting"

_actor: ContextVar[str] = ContextVar("serve_grpc_actor", default=ANONYMOUS)

Behavior = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]


def current_actor() -> str:
    """Who made the admin call being served: its token's identity, or ``anonymous``."""
    return _actor.get()


def required_scope(method: str) -> Scope | None:
    if method in OPEN_METHODS or method.startswith(OPEN_PREFIXES):
        return None
    if method in ADMIN_METHODS and ADMIN_METHODS[method] != "index":  # the index is read-only: inference
        return ADMIN
    return INFERENCE


@dataclass(frozen=True, slots=True)
class _Refused:
    code: grpc.StatusCode
    message: str
    actor: str  # for the audit log: the token's identity, or ``unauthenticated``
    reason: str


def _token(metadata: Sequence[tuple[str, str | bytes]] | None) -> str | None:
    for key, value in metadata or ():
        if key.lower() == "authorization" and isinstance(value, str):
            return bearer_token(value)
    return None


def _refusal(
    handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str, audit: Callable[[Any], None] | None
) -> grpc.RpcMethodHandler:
    """A handler of the same kind as ``handler`` that answers ``code`` without running it."""

    async def refuse(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        if audit is not None:
            audit(request)
        await context.abort(code, message)

    if handler.unary_unary is not None:
        # Admin calls are decoded to audit the model they name; others stay undecoded bytes.
        deserializer = handler.request_deserializer if audit is not None else None
        return grpc.unary_unary_rpc_method_handler(refuse, deserializer, handler.response_serializer)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(refuse, None, handler.response_serializer)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(refuse, None, handler.response_serializer)
    return grpc.stream_stream_rpc_method_handler(refuse, None, handler.response_serializer)


def with_variable(handler: grpc.RpcMethodHandler, variable: ContextVar[str], value: str) -> grpc.RpcMethodHandler:
    """``handler`` (unary) run with ``variable`` set to ``value``: the handler runs in a context of its own, not the
    interceptor's, so the variable is set there."""
    behavior: Behavior = handler.unary_unary

    async def run_with(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        token = variable.set(value)
        try:
            return await behavior(request, context)
        finally:
            variable.reset(token)

    return grpc.unary_unary_rpc_method_handler(run_with, handler.request_deserializer, handler.response_serializer)


class BearerAuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc.aio ships no stubs
    def __init__(self, tokens: TokenStore, *, protect_inference: bool, audit: AuditLog | None = None) -> None:
        self._tokens = tokens
        self._protect_inference = protect_inference
        self._audit = audit

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        method: str = details.method
        if handler is not None and method == _TRACE_SETTING_METHOD:
            return self._per_request(handler, details.invocation_metadata)
        needed = required_scope(method)
        if handler is None or needed is None or (needed == INFERENCE and not self._protect_inference):
            return handler
        checked = self._identify(needed, details.invocation_metadata)
        if isinstance(checked, _Refused):
            audit = self._auditor(method, checked.actor, checked.reason)
            return _refusal(handler, checked.code, checked.message, audit)
        return with_variable(handler, _actor, checked) if method in ADMIN_METHODS else handler

    def _identify(self, needed: Scope, metadata: Sequence[tuple[str, str | bytes]] | None) -> str | _Refused:
        """The identity of the call's token if it has scope ``needed``, else why it is refused."""
        presented = _token(metadata)
        identity = self._tokens.identify(presented)
        if identity is None:
            why = "no bearer token was sent" if presented is None else "the bearer token is not valid"
            return _Refused(
                grpc.StatusCode.UNAUTHENTICATED,
                f"{why}: this method needs 'authorization: Bearer <token>' metadata with a token of scope {needed}",
                UNAUTHENTICATED,
                why,
            )
        if not identity.allows(needed):
            return _Refused(
                grpc.StatusCode.PERMISSION_DENIED,
                f"the token of '{identity.name}' has scope {identity.scope}; this method needs scope {needed}",
                identity.name,
                f"the token's scope is {identity.scope}",
            )
        return identity.name

    def _per_request(
        self, handler: grpc.RpcMethodHandler, metadata: Sequence[tuple[str, str | bytes]] | None
    ) -> grpc.RpcMethodHandler:
        """TraceSetting reads and changes through one method: its scope depends on the request (settings or none),
        so it is decided once the request is decoded."""
        behavior: Behavior = handler.unary_unary

        async def guarded(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            needed = ADMIN if request.settings else INFERENCE
            if needed == INFERENCE and not self._protect_inference:
                return await behavior(request, context)
            checked = self._identify(needed, metadata)
            if isinstance(checked, _Refused):
                if needed == ADMIN and self._audit is not None:
                    self._audit.api_call(TRACE_SETTING, checked.actor, request.model_name, DENIED, checked.reason)
                await context.abort(checked.code, checked.message)
                raise AssertionError("unreachable: abort raises")
            token = _actor.set(checked)
            try:
                return await behavior(request, context)
            finally:
                _actor.reset(token)

        return grpc.unary_unary_rpc_method_handler(guarded, handler.request_deserializer, handler.response_serializer)

    def _auditor(self, method: str, actor: str, reason: str) -> Callable[[Any], None] | None:
        action = ADMIN_METHODS.get(method)
        audit = self._audit
        if audit is None or action is None:
            return None

        def record(request: Any) -> None:
            audit.api_call(action, actor, getattr(request, "model_name", ""), DENIED, reason)

        return record
