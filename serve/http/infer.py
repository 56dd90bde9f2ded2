"""POST /v2/models/{m}[/versions/{v}]/infer as plain ASGI, in front of the Starlette router.

Inference is the one hot route: answering it here skips routing through every pattern and
Starlette's Request/Response objects, which cost more than the rest of a small model's
request. Everything else goes to the router. Failures propagate to the ErrorBoundary, which
answers them the same way as for every other route.
"""

from __future__ import annotations

import asyncio
import gzip
import time
import zlib

from starlette.types import ASGIApp, Receive, Scope, Send

from serve.codecs import http_codec
from serve.core import InferenceService
from serve.core.request_ids import HEADER, is_header_value
from serve.errors import InvalidInput, ServeError
from serve.http.body import read_body
from serve.http.disconnect import DisconnectProbe
from serve.http.errors import REQUEST_ID, ClientGone
from serve.repository.repository import ModelVersion
from serve.tracing.request import HttpTracedRequest
from serve.types import InferRequest, TensorSpec

_PREFIX = "/v2/models/"
_SUFFIX = "/infer"
_JSON = b"application/json"
_BINARY = b"application/octet-stream"
MODEL_VERSION_HEADER = b"x-model-version"
REQUEST_ID_HEADER = HEADER.encode()
# The span names (semantic conventions: "{method} {http.route}"): the route's template, never a model's name.
ROUTE = "/v2/models/{model_name}/infer"
VERSION_ROUTE = "/v2/models/{model_name}/versions/{model_version}/infer"


def parse_infer_path(path: str) -> tuple[str, str] | None:
    """(model, version) for an inference path, or None for any other path."""
    if not (path.startswith(_PREFIX) and path.endswith(_SUFFIX)):
        return None
    parts = path[len(_PREFIX) : -len(_SUFFIX)].split("/")
    if len(parts) == 1 and parts[0]:
        return parts[0], ""
    if len(parts) == 3 and parts[0] and parts[1] == "versions" and parts[2]:
        return parts[0], parts[2]  # the repository judges whether the version is one
    return None


_APPLIED = ("gzip", "deflate")  # the only codings a response is ever sent in


def _accepted_codings(accept_encoding: str) -> set[str]:
    """Which of gzip and deflate the header accepts. Linear in the header, and parts naming neither are
    skipped unparsed: the header's length is bounded only by --max-header-bytes."""
    accepted: set[str] = set()
    lowered = accept_encoding.lower()
    if not any(coding in lowered for coding in _APPLIED):
        return accepted
    for part in lowered.split(","):
        if "gzip" not in part and "deflate" not in part:
            continue
        coding, _, params = part.partition(";")
        q = 1.0
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if q > 0:
            accepted.add(coding.strip().lower())
    return accepted


def compress(body: bytes, accept_encoding: str) -> tuple[bytes, bytes | None]:
    accepted = _accepted_codings(accept_encoding)
    if "gzip" in accepted:
        return gzip.compress(body, compresslevel=1), b"gzip"
    if "deflate" in accepted:
        return zlib.compress(body, 1), b"deflate"
    return body, None


def _header_length(headers: dict[str, str]) -> int | None:
    value = headers.get("inference-header-content-length")
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise InvalidInput(f"Inference-Header-Content-Length '{value}' is not an integer") from None


def _keep_id_for_error(scope: Scope, decoded: list[InferRequest], headers: dict[str, str]) -> None:
    """The error answer (ErrorBoundary) carries the id too: the one the core resolved, else the header's."""
    request_id = decoded[0].id if decoded and decoded[0].id else headers.get(HEADER, "")
    if request_id and is_header_value(request_id):
        scope[REQUEST_ID] = request_id


class InferEndpoint:
    def __init__(self, app: ASGIApp, service: InferenceService, *, max_request_bytes: int) -> None:
        self._app = app
        self._service = service
        self._max = max_request_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            target = parse_infer_path(scope["path"])
            if target is not None:
                await self._infer(scope, receive, send, *target)
                return
        await self._app(scope, receive, send)

    async def _infer(self, scope: Scope, receive: Receive, send: Send, name: str, version: str) -> None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        tracer = self._service.tracer
        span = None
        if tracer is not None:
            span = tracer.http_request(
                name,
                VERSION_ROUTE if version else ROUTE,
                headers.get,
                time.perf_counter_ns(),
                path=scope["path"],
                scheme=scope.get("scheme", "http"),
                server=scope.get("server"),
                client=scope.get("client"),
                http_version=scope.get("http_version", "1.1"),
            )
        if span is None:
            await self._answer(scope, receive, send, name, version, headers, None)
            return
        try:
            await self._answer(scope, receive, send, name, version, headers, span)
        except BaseException as exc:
            span.end_http(_status_of(exc), exc)
            raise
        span.end_http(200)

    async def _answer(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        name: str,
        version: str,
        headers: dict[str, str],
        span: HttpTracedRequest | None,
    ) -> None:
        decoded: list[InferRequest] = []
        try:
            body = await read_body(headers, receive, self._max)
        except BaseException:
            _keep_id_for_error(scope, decoded, headers)
            raise
        probe = DisconnectProbe(receive)

        def decode(model: ModelVersion) -> InferRequest:
            raw = body
            encoding = headers.get("content-encoding")
            if encoding:
                raw = http_codec.decompress_body(raw, encoding, max_size=self._max)
            header_length = _header_length(headers)
            model_inputs: list[TensorSpec] | None = None
            if header_length == 0:
                batch = (1,) if model.max_batch_size > 0 else ()
                model_inputs = [TensorSpec(s.name, s.datatype, batch + s.dims) for s in model.inputs]
            request = http_codec.decode_infer_request(
                raw, header_length=header_length, model_name=name, model_version=version, model_inputs=model_inputs
            )
            request.client_gone = probe
            request.header = headers.get  # names are lower-cased above; a rollout's routing key may be one
            decoded.append(request)
            return request

        try:
            response = await self._service.infer_decoding(name, version, decode, "http", span)
        except BaseException:
            _keep_id_for_error(scope, decoded, headers)
            raise
        finally:
            probe.close()
        encoding = time.perf_counter_ns() if span is not None else 0
        payload, json_length = http_codec.encode_infer_response(response, decoded[0])
        out: list[tuple[bytes, bytes]] = []
        accept = headers.get("accept-encoding")
        if accept:
            payload, applied = compress(payload, accept)
            if applied:
                out.append((b"content-encoding", applied))
        if span is not None:
            span.phase("encode", encoding, time.perf_counter_ns())
        if json_length is None:
            out.append((b"content-type", _JSON))
        else:
            out.append((b"content-type", _BINARY))
            out.append((b"inference-header-content-length", str(json_length).encode()))
        out.append((b"content-length", str(len(payload)).encode()))
        # Who answered, for proxies and clients that do not read the body (a rollout may pick the version).
        out.append((MODEL_VERSION_HEADER, response.model_version.encode()))
        if is_header_value(response.id):  # a body id that cannot be a header value travels in the body only
            out.append((REQUEST_ID_HEADER, response.id.encode()))
        await send({"type": "http.response.start", "status": 200, "headers": out})
        await send({"type": "http.response.body", "body": payload})


def _status_of(exc: BaseException) -> int:
    """The status the ErrorBoundary answers ``exc`` with (499: the client went away, nginx's code, as
    RequestCancelled's)."""
    if isinstance(exc, ServeError):
        return exc.http_status
    if isinstance(exc, ClientGone | asyncio.CancelledError):
        return 499
    return 500
