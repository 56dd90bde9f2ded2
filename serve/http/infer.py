"""POST /v2/models/{m}[/versions/{v}]/infer as plain ASGI, in front of the Starlette router.

Inference is the one hot route: answering it here skips routing through every pattern and
Starlette's Request/Response objects, which cost more than the rest of a small model's
request. Everything else goes to the router.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
import zlib

from starlette.types import ASGIApp, Receive, Scope, Send

from serve.codecs import http_codec
from serve.core import InferenceService
from serve.errors import InvalidInput, RequestCancelled, ServeError
from serve.http.body import ClientGone, read_body
from serve.types import InferRequest, InferResponse, TensorSpec

log = logging.getLogger(__name__)

_PREFIX = "/v2/models/"
_SUFFIX = "/infer"
_JSON = b"application/json"
_BINARY = b"application/octet-stream"


def parse_infer_path(path: str) -> tuple[str, str] | None:
    """(model, version) for an inference path, or None for any other path."""
    if not (path.startswith(_PREFIX) and path.endswith(_SUFFIX)):
        return None
    parts = path[len(_PREFIX) : -len(_SUFFIX)].split("/")
    if len(parts) == 1 and parts[0]:
        return parts[0], ""
    if len(parts) == 3 and parts[0] and parts[1] == "versions" and parts[2].isdigit():
        return parts[0], parts[2]
    return None


def _accepted_codings(accept_encoding: str) -> set[str]:
    accepted = set()
    for part in accept_encoding.split(","):
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
        try:
            body = await read_body(headers, receive, self._max)
            status, extra, payload = await self._answer(headers, body, receive, name, version)
        except ServeError as exc:
            status, extra, payload = exc.http_status, [(b"content-type", _JSON)], http_codec.encode_error(exc.message)
        except ClientGone:
            return  # nobody to answer
        except Exception as exc:  # a bug must still answer JSON, and the server goes on
            log.exception("inference request for model %r failed unexpectedly", name)
            status, extra = 500, [(b"content-type", _JSON)]
            payload = http_codec.encode_error(f"internal error: {type(exc).__name__}: {exc}")
        extra.append((b"content-length", str(len(payload)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": extra})
        await send({"type": "http.response.body", "body": payload})

    async def _answer(
        self, headers: dict[str, str], body: bytes, receive: Receive, name: str, version: str
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        encoding = headers.get("content-encoding")
        if encoding:
            body = http_codec.decompress_body(body, encoding, max_size=self._max)
        header_value = headers.get("inference-header-content-length")
        header_length: int | None = None
        if header_value is not None:
            try:
                header_length = int(header_value)
            except ValueError:
                raise InvalidInput(f"Inference-Header-Content-Length '{header_value}' is not an integer") from None
        model_inputs: list[TensorSpec] | None = None
        if header_length == 0:
            model = self._service.repository.get(name, version)
            batch = (1,) if model.max_batch_size > 0 else ()
            model_inputs = [TensorSpec(s.name, s.datatype, batch + s.dims) for s in model.inputs]
        request = http_codec.decode_infer_request(
            body, header_length=header_length, model_name=name, model_version=version, model_inputs=model_inputs
        )
        response = await self._run_watching_disconnect(request, receive)
        payload, json_length = http_codec.encode_infer_response(response, request)
        out: list[tuple[bytes, bytes]] = []
        accept = headers.get("accept-encoding")
        if accept:
            payload, applied = compress(payload, accept)
            if applied:
                out.append((b"content-encoding", applied))
        if json_length is None:
            out.append((b"content-type", _JSON))
        else:
            out.append((b"content-type", _BINARY))
            out.append((b"inference-header-content-length", str(json_length).encode()))
        return 200, out, payload

    async def _run_watching_disconnect(self, request: InferRequest, receive: Receive) -> InferResponse:
        # A client that goes away must not have its request run. uvicorn's request cycle keeps
        # a `disconnected` flag: the batcher reads it just before running the request, which
        # costs nothing per request. Under other ASGI servers, a watcher task cancels the call.
        cycle = getattr(receive, "__self__", None)
        if cycle is not None and isinstance(getattr(cycle, "disconnected", None), bool):
            request.client_gone = lambda: bool(cycle.disconnected)
            try:
                return await self._service.infer(request, "http")
            except RequestCancelled:
                raise ClientGone from None
        current = asyncio.current_task()
        assert current is not None
        gone = finished = False

        async def watch() -> None:
            nonlocal gone
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    if not finished:
                        gone = True
                        current.cancel()
                    return

        watcher = asyncio.ensure_future(watch())
        try:
            response = await self._service.infer(request, "http")
            finished = True
            return response
        except asyncio.CancelledError:
            if gone:
                raise ClientGone from None
            raise
        finally:
            watcher.cancel()
