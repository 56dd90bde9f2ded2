"""The plain-ASGI infer endpoint: its paths, and how it learns that a client went away, under
uvicorn (a flag on its request cycle) and under any other ASGI server (a watcher on receive)."""

from __future__ import annotations

import asyncio
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import orjson

from serve.demo import TABULAR_CONFIG, tabular_model
from serve.http.app import create_app
from serve.http.disconnect import DisconnectProbe
from serve.http.infer import parse_infer_path
from serve.modelgen import save
from tests.fixtures.inprocess import in_process


def test_infer_paths_name_the_model_and_leave_the_version_to_the_repository() -> None:
    assert parse_infer_path("/v2/models/m/infer") == ("m", "")
    assert parse_infer_path("/v2/models/m/versions/3/infer") == ("m", "3")
    assert parse_infer_path("/v2/models/m/versions/x/infer") == ("m", "x")
    assert parse_infer_path("/v2/models/m/versions//infer") is None
    assert parse_infer_path("/v2/models/m/ready") is None


class UvicornLikeCycle:
    def __init__(self) -> None:
        self.disconnected = False

    async def receive(self) -> dict[str, Any]:
        raise AssertionError("the probe must read the flag, not receive()")


async def test_probe_reads_uvicorns_disconnected_flag() -> None:
    cycle = UvicornLikeCycle()
    probe = DisconnectProbe(cycle.receive)
    assert not probe()
    cycle.disconnected = True
    assert probe()
    probe.close()


async def test_probe_watches_receive_under_other_asgi_servers() -> None:
    messages: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def receive() -> dict[str, Any]:  # a plain function: no uvicorn cycle behind it
        return await messages.get()

    probe = DisconnectProbe(receive)
    await asyncio.sleep(0)
    assert not probe()
    await messages.put({"type": "http.disconnect"})
    for _ in range(10):
        await asyncio.sleep(0)
    assert probe()
    probe.close()


def _held_repository(root: Path) -> Path:
    # One request waits up to 0.3 s for a preferred batch of 4 that never comes, long enough for
    # its client to leave before it would run.
    config = TABULAR_CONFIG.replace(
        "max_queue_delay_microseconds: 0", "preferred_batch_size: [ 4 ]\n  max_queue_delay_microseconds: 300000"
    )
    (root / "tabular" / "1").mkdir(parents=True)
    (root / "tabular" / "config.pbtxt").write_text(config)
    save(tabular_model(), root / "tabular" / "1" / "model.onnx")
    return root


async def test_a_request_whose_client_left_before_it_ran_is_dropped_and_answered_with_nothing(
    tmp_path: Path,
) -> None:
    async with in_process(_held_repository(tmp_path)) as server:
        app = create_app(server.service, max_request_bytes=1 << 20)
        body = orjson.dumps({"inputs": [{"name": "features", "shape": [1, 8], "datatype": "FP32", "data": [0.5] * 8}]})
        messages: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        await messages.put({"type": "http.request", "body": body, "more_body": False})
        sent: list[MutableMapping[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return await messages.get()

        async def send(message: MutableMapping[str, Any]) -> None:
            sent.append(message)

        scope = {"type": "http", "method": "POST", "path": "/v2/models/tabular/infer", "headers": []}
        call = asyncio.ensure_future(app(scope, receive, send))
        await asyncio.sleep(0.05)  # queued, held for its preferred batch
        await messages.put({"type": "http.disconnect"})
        await asyncio.wait_for(call, 5)

        stats = (await server.service.model_statistics("tabular"))[0]
        assert sent == []
        assert stats["execution_count"] == 0
        assert stats["inference_stats"]["fail"]["count"] == 1
