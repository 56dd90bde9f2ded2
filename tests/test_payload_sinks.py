"""Payload log queue and sinks: a bounded queue that never blocks the loop, a file shared by processes, HTTP."""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pytest

try:  # cloudevents 1.x, which kserve pins (<2); 2.x keeps the same API under cloudevents.v1
    from cloudevents.http import from_dict, from_http
except ImportError:  # pragma: no cover
    from cloudevents.v1.http import from_dict, from_http  # type: ignore[no-redef]

from serve.payload_log.file_sink import WRITE_CHUNK, FileSink
from serve.payload_log.http_sink import BATCH_CONTENT_TYPE, HttpSink
from serve.payload_log.queue import EventQueue, QueueCounters, SinkWriteError
from tests.fixtures.inprocess import in_process


def wait_until(predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.005)


def balanced(c: QueueCounters) -> bool:
    return c.offered == c.written + c.dropped + c.queued


def event(i: int, **extensions: object) -> bytes:
    doc = {
        "specversion": "1.0",
        "id": f"id-{i}",
        "type": "org.kubeflow.serving.inference.request",
        "source": "http://serve/v2/models/m/infer",
        "time": "2026-12-07T12:00:00.123456Z",
        "datacontenttype": "application/json",
        "inferenceservicename": "m",
        "modelversion": "3",
        **extensions,
        "data": {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1.5, i]}]},
    }
    return orjson.dumps(doc) + b"\n"


@dataclass
class FakeSink:
    """Records batches; ``gate`` holds each write until set; ``fail`` decides a batch's fate."""

    batches: list[list[bytes]] = field(default_factory=list)
    gate: threading.Event | None = None
    fail: Callable[[list[bytes]], None] | None = None
    closed: threading.Event = field(default_factory=threading.Event)

    def write_batch(self, lines: list[bytes]) -> None:
        if self.gate is not None:
            while not self.gate.wait(0.01):
                if self.closed.is_set():
                    raise OSError("closed while writing")
        if self.fail is not None:
            self.fail(lines)
        self.batches.append(lines)

    def close(self) -> None:
        self.closed.set()


# ---------------------------------------------------------------- queue


def test_batches_reach_the_sink_in_order_and_no_larger_than_batch() -> None:
    sink = FakeSink(gate=threading.Event())
    queue = EventQueue(sink, batch=4)
    lines = [event(i) for i in range(10)]
    for line in lines:
        assert queue.offer(line)
    sink.gate.set()
    assert queue.close(5.0)
    assert [line for batch in sink.batches for line in batch] == lines
    assert max(len(batch) for batch in sink.batches) <= 4
    assert queue.counters() == QueueCounters(10, 10, 0, 0, 0, 0, 0, 0, 0)


def test_a_full_queue_drops_the_new_event_and_reports_it() -> None:
    drops: list[tuple[str, int]] = []
    sink = FakeSink(gate=threading.Event())
    queue = EventQueue(sink, max_events=3, on_drop=lambda reason, n: drops.append((reason, n)))
    lines = [event(i) for i in range(5)]
    accepted = [queue.offer(line) for line in lines]
    assert accepted == [True, True, True, False, False]
    c = queue.counters()
    assert (c.queued, c.dropped_full, c.dropped_bytes) == (3, 2, len(lines[3]) + len(lines[4]))
    assert drops == [("full", 1), ("full", 1)]
    sink.gate.set()
    queue.close(5.0)
    assert [line for batch in sink.batches for line in batch] == lines[:3]  # the oldest are kept


def test_the_byte_ceiling_counts_the_batch_the_sink_holds() -> None:
    sink = FakeSink(gate=threading.Event())
    queue = EventQueue(sink, max_bytes=100)
    assert queue.offer(b"a" * 39 + b"\n")
    wait_until(lambda: queue.counters().queued == 1 and not queue._lines)  # in the sink's hands now
    assert queue.offer(b"b" * 59 + b"\n")
    assert not queue.offer(b"c\n")
    assert (queue.queued_bytes, queue.dropped_bytes, queue.dropped_by_reason()["full"]) == (100, 2, 1)
    sink.gate.set()
    queue.close(5.0)


def test_a_failing_sink_drops_its_batches_as_sink_and_logs_each_message_once(caplog) -> None:
    drops: list[tuple[str, int]] = []

    def disk_full(lines: list[bytes]) -> None:
        raise OSError(28, "No space left on device")

    queue = EventQueue(FakeSink(fail=disk_full), batch=2, on_drop=lambda reason, n: drops.append((reason, n)))
    with caplog.at_level(logging.ERROR, logger="serve.payload_log.queue"):
        for i in range(6):
            queue.offer(event(i))
            wait_until(lambda: queue.queued == 0)
        assert queue.close(5.0)
    c = queue.counters()
    assert (c.offered, c.written, c.dropped_sink, c.queued) == (6, 0, 6, 0)
    assert sum(n for reason, n in drops if reason == "sink") == 6
    assert [r.getMessage().count("No space left") for r in caplog.records] == [1]


def test_a_partial_sink_failure_counts_only_the_lost_events() -> None:
    def lose_one(lines: list[bytes]) -> None:
        raise SinkWriteError("one rejected", failed=1)

    sink = FakeSink(gate=threading.Event(), fail=lose_one)
    queue = EventQueue(sink, batch=3)
    for i in range(3):
        queue.offer(event(i))
    sink.gate.set()
    assert queue.close(5.0)
    c = queue.counters()
    assert (c.written, c.dropped_sink, c.queued) == (2, 1, 0)


def test_the_queue_recovers_when_the_sink_does(caplog) -> None:
    broken = threading.Event()
    broken.set()

    def maybe_fail(lines: list[bytes]) -> None:
        if broken.is_set():
            raise ConnectionRefusedError("refused")

    sink = FakeSink(fail=maybe_fail)
    queue = EventQueue(sink)
    with caplog.at_level(logging.WARNING, logger="serve.payload_log.queue"):
        queue.offer(event(0))
        wait_until(lambda: queue.dropped == 1)
        broken.clear()
        queue.offer(event(1))
        wait_until(lambda: queue.written == 1)
    assert sink.batches == [[event(1)]]
    assert any("writes again" in r.getMessage() for r in caplog.records)
    queue.close(1.0)


def test_close_writes_everything_queued_and_closes_the_sink() -> None:
    sink = FakeSink(gate=threading.Event())
    queue = EventQueue(sink, batch=16)
    for i in range(1000):
        queue.offer(event(i))
    sink.gate.set()
    assert queue.close(5.0)
    assert (queue.written, queue.queued) == (1000, 0)
    assert sink.closed.is_set()


def test_close_past_its_timeout_drops_the_waiting_events_as_closed_and_the_counts_still_add_up() -> None:
    sink = FakeSink(gate=threading.Event())  # never opened: the sink hangs until closed
    queue = EventQueue(sink, batch=10)
    for i in range(25):
        queue.offer(event(i))
    wait_until(lambda: len(queue._lines) == 15)  # one batch in the sink's hands
    started = time.monotonic()
    assert not queue.close(0.2)
    assert time.monotonic() - started < 1.0
    assert queue.dropped_by_reason()["closed"] == 15
    wait_until(lambda: queue.queued == 0)  # closing the sink made the hung write give up
    c = queue.counters()
    assert (c.written, c.dropped_closed, c.dropped_sink) == (0, 15, 10)
    assert balanced(c)


def test_offers_after_close_are_dropped_as_closed() -> None:
    drops: list[tuple[str, int]] = []
    queue = EventQueue(FakeSink(), on_drop=lambda reason, n: drops.append((reason, n)))
    queue.close(1.0)
    assert not queue.offer(event(0))
    assert drops == [("closed", 1)]


def test_offer_does_not_raise_when_the_drop_hook_does() -> None:
    def broken_hook(reason: str, n: int) -> None:
        raise RuntimeError("metrics registry gone")

    queue = EventQueue(FakeSink(gate=threading.Event()), max_events=1, on_drop=broken_hook)
    queue.offer(event(0))
    assert not queue.offer(event(1))
    assert queue.dropped == 1
    queue.close(0.1)


# ---------------------------------------------------------------- file sink


def read_lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def test_the_file_sink_appends_each_batch_as_json_lines(tmp_path: Path) -> None:
    sink = FileSink(tmp_path / "payloads.jsonl")
    sink.write_batch([event(0), event(1)])
    sink.write_batch([event(2)])
    sink.close()
    assert read_lines(tmp_path / "payloads.jsonl") == [event(0), event(1), event(2)]


def test_a_batch_is_written_in_whole_lines_of_at_most_the_write_chunk(tmp_path: Path, monkeypatch) -> None:
    writes: list[bytes] = []
    real_write = os.write

    def spy(fd: int, data: bytes) -> int:
        writes.append(bytes(data))
        return real_write(fd, data)

    lines = [b'"' + b"x" * (n % 3000) + b'"\n' for n in range(0, 200_000, 997)]
    lines.append(b'"' + b"y" * (2 * WRITE_CHUNK) + b'"\n')  # one line longer than a chunk: alone, unsplit
    sink = FileSink(tmp_path / "payloads.jsonl")
    monkeypatch.setattr(os, "write", spy)
    sink.write_batch(lines)
    monkeypatch.undo()
    sink.close()
    assert b"".join(writes) == b"".join(lines)
    assert all(w.endswith(b"\n") for w in writes)
    assert all(len(w) <= WRITE_CHUNK for w in writes[:-1]) and writes[-1] == lines[-1]


def test_a_failed_write_loses_only_the_lines_not_yet_written(tmp_path: Path, monkeypatch) -> None:
    real_write = os.write
    calls = 0

    def full_disk_on_second_write(fd: int, data: bytes) -> int:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise OSError(28, "No space left on device")
        return real_write(fd, data)

    lines = [b'"' + b"x" * 1000 + b'"\n'] * 100
    first_chunk = WRITE_CHUNK // len(lines[0])
    sink = FileSink(tmp_path / "payloads.jsonl")
    monkeypatch.setattr(os, "write", full_disk_on_second_write)
    with pytest.raises(SinkWriteError, match="No space left") as raised:
        sink.write_batch(lines)
    monkeypatch.undo()
    sink.close()
    assert len(read_lines(tmp_path / "payloads.jsonl")) == first_chunk
    assert raised.value.failed == 100 - first_chunk


def test_rotation_renames_to_numbered_backups_and_drops_the_oldest(tmp_path: Path) -> None:
    path = tmp_path / "payloads.jsonl"
    sink = FileSink(path, max_bytes=100, backups=2)
    lines = [b'"' + str(i).encode() * 47 + b'"\n' for i in range(1, 8)]  # 50 bytes each: two per file
    for line in lines:
        sink.write_batch([line])
    sink.close()
    assert read_lines(Path(f"{path}.2")) == lines[2:4]
    assert read_lines(Path(f"{path}.1")) == lines[4:6]
    assert read_lines(path) == lines[6:]
    assert not Path(f"{path}.3").exists()


def test_a_writer_notices_another_writers_rotation_and_reopens(tmp_path: Path) -> None:
    path = tmp_path / "payloads.jsonl"
    rotating, other = FileSink(path, max_bytes=100), FileSink(path)
    rotating.write_batch([b"1" * 119 + b"\n"])  # over max_bytes: rotated away
    other.write_batch([event(7)])
    assert read_lines(path) == [event(7)]
    assert read_lines(Path(f"{path}.1")) == [b"1" * 119 + b"\n"]
    rotating.close()
    other.close()


def _pad_length(worker: int, i: int) -> int:
    return 70_000 if i % 1000 == 999 else (worker * 7919 + i * 104_729) % 400


def _append_from_a_process(path: str, worker: int, count: int, start: Any) -> None:
    sink = FileSink(path, max_bytes=256 * 1024, backups=100)
    start.wait()  # all four write at once, not one after another as they finish starting
    i = 0
    while i < count:
        n = min(1 + (i * 31 + worker) % 40, count - i)
        sink.write_batch(
            [orjson.dumps({"w": worker, "i": j, "pad": "x" * _pad_length(worker, j)}) + b"\n" for j in range(i, i + n)]
        )
        i += n
    sink.close()


def test_four_processes_appending_to_one_rotating_file_never_split_or_lose_a_line(tmp_path: Path) -> None:
    path = tmp_path / "payloads.jsonl"
    spawn = multiprocessing.get_context("spawn")
    start = spawn.Barrier(4)
    workers = [spawn.Process(target=_append_from_a_process, args=(str(path), w, 5000, start)) for w in range(4)]
    for p in workers:
        p.start()
    for p in workers:
        p.join(120)
        assert p.exitcode == 0
    files = sorted(tmp_path.glob("payloads.jsonl*"))
    assert len(files) > 3  # rotated several times (plus the .lock file)
    seen: list[tuple[int, int]] = []
    for f in files:
        if f.name.endswith(".lock"):
            continue
        for line in read_lines(f):
            doc = orjson.loads(line)
            assert line.endswith(b"\n") and len(doc["pad"]) == _pad_length(doc["w"], doc["i"])
            seen.append((doc["w"], doc["i"]))
    assert len(seen) == 20_000
    assert set(seen) == {(w, i) for w in range(4) for i in range(5000)}


# ---------------------------------------------------------------- HTTP sink


@dataclass
class Receiver:
    """A local sink: answers each POST with the next queued status (200 when none), or hangs while ``hang`` is set.

    ``delivered`` holds only the requests answered 2xx: what a sender may count as written.
    """

    statuses: deque[int] = field(default_factory=deque)
    delivered: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    attempts: int = 0
    hang: threading.Event = field(default_factory=threading.Event)
    released: threading.Event = field(default_factory=threading.Event)


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, str]]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            state.attempts += 1
            if state.hang.is_set():
                state.released.wait(30)
                self.close_connection = True  # the sender gave up on this one long ago
                return
            status = state.statuses.popleft() if state.statuses else 200
            if 200 <= status < 300:
                state.delivered.append(({k.lower(): v for k, v in self.headers.items()}, body))
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.block_on_close = False
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield state, f"http://127.0.0.1:{server.server_address[1]}/events"
    state.released.set()
    server.shutdown()
    server.server_close()


def test_structured_mode_posts_a_batch_as_one_cloudevents_array(receiver) -> None:
    state, url = receiver
    sink = HttpSink(url)
    lines = [event(i) for i in range(3)]
    sink.write_batch(lines)
    sink.close()
    [(headers, body)] = state.delivered
    assert headers["content-type"] == BATCH_CONTENT_TYPE
    events = [from_dict(doc) for doc in orjson.loads(body)]
    assert [e["id"] for e in events] == ["id-0", "id-1", "id-2"]
    assert events[2].data == orjson.loads(lines[2])["data"]


def test_binary_mode_posts_each_event_with_ce_headers_and_its_data_as_the_body(receiver) -> None:
    state, url = receiver
    sink = HttpSink(url, mode="binary", headers={"x-tenant": "t1"})
    line = event(5, endpoint="default", namespace="ns é", sampled=True, sampledrate=0.1)
    sink.write_batch([line, event(6)])
    sink.close()
    assert len(state.delivered) == 2
    headers, body = state.delivered[0]
    assert headers["x-tenant"] == "t1"
    assert headers["content-type"] == "application/json"
    assert headers["ce-specversion"] == "1.0" and headers["ce-id"] == "id-5"
    assert headers["ce-type"] == "org.kubeflow.serving.inference.request"
    assert headers["ce-time"] == "2026-12-07T12:00:00.123456Z"
    assert headers["ce-inferenceservicename"] == "m" and headers["ce-modelversion"] == "3"
    # Percent-encoded as the HTTP binding requires (3.1.3.2); the 2.x SDK decodes it, 1.x hands it over as is.
    assert (headers["ce-sampled"], headers["ce-sampledrate"], headers["ce-namespace"]) == ("true", "0.1", "ns%20%C3%A9")
    parsed = from_http(headers, body)
    assert (parsed["id"], parsed["source"]) == ("id-5", "http://serve/v2/models/m/infer")
    assert parsed.data == orjson.loads(line)["data"]


def test_a_sink_answering_503_then_200_gets_the_batch_after_a_retry(receiver) -> None:
    state, url = receiver
    state.statuses.extend([503, 429])
    sink = HttpSink(url, backoff_s=0.01)
    sink.write_batch([event(1)])
    sink.close()
    assert state.attempts == 3
    assert len(state.delivered) == 1


def test_a_4xx_other_than_429_is_not_retried_and_loses_the_batch(receiver) -> None:
    state, url = receiver
    state.statuses.append(400)
    sink = HttpSink(url, backoff_s=0.01)
    with pytest.raises(SinkWriteError, match="HTTP 400") as raised:
        sink.write_batch([event(1), event(2)])
    sink.close()
    assert (raised.value.failed, state.attempts, state.delivered) == (2, 1, [])


def test_binary_mode_gives_up_on_the_rest_of_a_batch_when_the_sink_is_down(receiver) -> None:
    state, url = receiver
    state.statuses.extend([500] * 3)
    sink = HttpSink(url, mode="binary", retries=2, backoff_s=0.01)
    with pytest.raises(SinkWriteError) as raised:
        sink.write_batch([event(i) for i in range(5)])
    sink.close()
    assert (raised.value.failed, state.attempts) == (5, 3)


def test_a_hanging_sink_never_blocks_offer_drops_are_exact_and_logging_resumes(receiver, caplog) -> None:
    state, url = receiver
    state.hang.set()
    sink = HttpSink(url, timeout_s=0.2, retries=1, backoff_s=0.05)
    queue = EventQueue(sink, max_events=1000, batch=100)
    lines = [event(i) for i in range(10_000)]
    with caplog.at_level(logging.ERROR, logger="serve.payload_log.queue"):
        rounds: list[float] = []
        # The bound is for offer's own work; the best of a few rounds keeps a busy shared machine's preemption
        # out of it. An offer that waited on the sink would cost its 0.2 s timeout, in every round.
        while len(rounds) < 5 and min(rounds, default=1.0) >= 0.05:
            started = time.perf_counter()
            for line in lines:
                queue.offer(line)
            rounds.append(time.perf_counter() - started)
        assert min(rounds) < 0.05 and max(rounds) < 0.5
        wait_until(lambda: queue.counters().dropped_sink >= 200)  # several batches given up on
        state.hang.clear()
        state.released.set()
        wait_until(lambda: queue.queued == 0)
        for line in lines[:10]:
            queue.offer(line)
        assert queue.close(5.0)
    c = queue.counters()
    assert balanced(c) and c.offered == 10_000 * len(rounds) + 10 and c.queued == 0
    assert c.dropped_full >= 10_000 * len(rounds) - 1000
    delivered = sum(len(orjson.loads(body)) for _, body in state.delivered)
    assert c.written == delivered >= 10
    assert orjson.loads(state.delivered[-1][1])[-1]["id"] == "id-9"
    assert len([r for r in caplog.records if "TimeoutError" in r.getMessage()]) == 1


async def test_the_http_mode_flag_sends_each_event_in_binary_mode_with_ce_headers(
    receiver, demo_repository: Path
) -> None:
    state, url = receiver
    settings = {"payload_log_url": url, "payload_log_http_mode": "binary"}
    async with in_process(demo_repository, **settings) as server:
        tensor = {"name": "features", "shape": [1, 8], "datatype": "FP32", "data": [0.5] * 8}
        body = orjson.dumps({"id": "binary-flag", "inputs": [tensor]})
        assert (await server.http.post("/v2/models/tabular/infer", content=body)).status_code == 200
    assert len(state.delivered) == 2  # one POST per event, none a batch
    for headers, body in state.delivered:
        assert headers["content-type"] == "application/json"
        assert headers["ce-requestid"] == "binary-flag" and headers["ce-modelname"] == "tabular"
        assert from_http(headers, body)["requestid"] == "binary-flag"
    types = sorted(headers["ce-type"] for headers, _ in state.delivered)
    assert types == ["org.kubeflow.serving.inference.request", "org.kubeflow.serving.inference.response"]
