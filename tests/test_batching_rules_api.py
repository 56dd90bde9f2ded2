"""Triton's "send now" rules over a real server: with a 5 s queue delay, requests that Triton would
not hold are answered in well under the delay, and the one case that waits does wait.

Each request runs in a thread; the next is sent only once the server reports the first as queued,
so the order the server sees is the order written here.
"""

from __future__ import annotations

import re
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.http as httpclient
from onnx import helper

from serve.modelgen import build, save, tensor
from tests.fixtures.local_servers import ThreadServer, serving_in_thread

DELAY_S = 5.0
# "Well under the delay": a third of it, with the client's own overhead included.
NO_WAIT_S = DELAY_S / 3
CONFIG = f"""
name: "echo"
max_batch_size: 8
dynamic_batching {{ preferred_batch_size: [2, 6] max_queue_delay_microseconds: {int(DELAY_S * 1e6)} }}
instance_group [{{ count: 1 kind: KIND_CPU }}]
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadServer]:
    root = tmp_path_factory.mktemp("batching-rules-repo")
    # A variable second dimension, so that requests of different shapes can be sent (rule c).
    model = build(
        "echo",
        [helper.make_node("Identity", ["x"], ["y"])],
        [tensor("x", "FP32", ["batch", "width"])],
        [tensor("y", "FP32", ["batch", "width"])],
    )
    save(model, root / "echo" / "1" / "model.onnx")
    (root / "echo" / "config.pbtxt").write_text(CONFIG)
    with serving_in_thread(root, tmp_path_factory.mktemp("batching-rules-server")) as running:
        yield running


def infer(server: ThreadServer, rows: int, width: int = 4) -> float:
    """Send one request; return the seconds until its answer."""
    client = httpclient.InferenceServerClient(server.http_url, network_timeout=60)
    x = np.full((rows, width), rows, dtype=np.float32)
    inp = httpclient.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    started = time.monotonic()
    result = client.infer("echo", [inp]).as_numpy("y")
    elapsed = time.monotonic() - started
    np.testing.assert_array_equal(result, x)
    return elapsed


def queue_depth(server: ThreadServer) -> int:
    with urllib.request.urlopen(f"{server.base}/metrics", timeout=5) as response:
        text = response.read().decode()
    match = re.search(r'^serve_queue_depth\{[^}]*model="echo"[^}]*\} (\S+)$', text, re.MULTILINE)
    return int(float(match.group(1))) if match else 0


def send_after_queued(pool: ThreadPoolExecutor, server: ThreadServer, rows: int, width: int = 4) -> Future[float]:
    """Send a request in the background and return once the server holds it in its queue."""
    future = pool.submit(infer, server, rows, width)
    deadline = time.monotonic() + 10
    while queue_depth(server) < 1:
        assert not future.done(), "the request was answered before it could be seen waiting"
        assert time.monotonic() < deadline, "the request never showed up in the queue"
        time.sleep(0.02)
    return future


def test_rule_a_request_above_the_largest_preferred_size_is_answered_at_once(server: ThreadServer) -> None:
    assert infer(server, 7) < NO_WAIT_S


def test_rule_b_request_that_would_pass_the_largest_preferred_size_releases_the_held_one(
    server: ThreadServer,
) -> None:
    with ThreadPoolExecutor(2) as pool:
        held = send_after_queued(pool, server, 3)
        big = pool.submit(infer, server, 7)  # 3 + 7 > 6: the 3 go now, then the 7 (rule a)

        assert held.result(timeout=30) < NO_WAIT_S
        assert big.result(timeout=30) < NO_WAIT_S


def test_rule_c_request_of_another_shape_releases_the_held_one(server: ThreadServer) -> None:
    with ThreadPoolExecutor(2) as pool:
        held = send_after_queued(pool, server, 1, width=4)
        other = send_after_queued(pool, server, 1, width=5)

        assert held.result(timeout=30) < NO_WAIT_S
        # Release the other one too, by completing a preferred size (1 + 1 = 2) of its shape.
        assert infer(server, 1, width=5) < NO_WAIT_S
        assert other.result(timeout=30) < NO_WAIT_S


def test_batch_below_every_preferred_size_waits_for_the_delay(server: ThreadServer) -> None:
    # The server holds on a monotonic clock from the moment the request arrived, which is after
    # the client started timing: this lower bound cannot flake.
    assert infer(server, 3) >= DELAY_S


def test_preferred_size_is_answered_at_once(server: ThreadServer) -> None:
    assert infer(server, 2) < NO_WAIT_S
