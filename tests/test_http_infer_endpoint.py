"""The plain-ASGI infer endpoint under an ASGI server other than uvicorn (no per-request
disconnect flag): a watcher cancels the call when the client goes away."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from serve.http.infer import InferEndpoint, parse_infer_path


class NeverAnswers:
    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.cancelled = False

    async def infer(self, request: Any, protocol: str) -> Any:
        self.started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise


async def test_a_client_that_disconnects_cancels_its_call_and_gets_no_response() -> None:
    service = NeverAnswers()
    endpoint = InferEndpoint(app=None, service=service, max_request_bytes=1 << 20)  # type: ignore[arg-type]
    body = orjson.dumps({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}]})
    messages: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    await messages.put({"type": "http.request", "body": body, "more_body": False})
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:  # a plain function: no uvicorn cycle behind it
        return await messages.get()

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/v2/models/m/infer", "headers": []}
    call = asyncio.ensure_future(endpoint(scope, receive, send))
    await asyncio.wait_for(service.started.wait(), 5)
    await messages.put({"type": "http.disconnect"})
    await asyncio.wait_for(call, 5)

    assert service.cancelled
    assert sent == []


def test_infer_paths_name_the_model_and_numeric_version() -> None:
    assert parse_infer_path("/v2/models/m/infer") == ("m", "")
    assert parse_infer_path("/v2/models/m/versions/3/infer") == ("m", "3")
    assert parse_infer_path("/v2/models/m/versions/x/infer") is None
    assert parse_infer_path("/v2/models/m/ready") is None
