"""Observers: the fan-out of request and execution records to every observer."""

from __future__ import annotations

import pytest

from serve.events import Execution, Observer, Observers, RequestEvent, VersionKey

KEY = VersionKey("m", "1")


class Requests(Observer):
    def __init__(self) -> None:
        self.seen: list[RequestEvent] = []

    def on_request(self, event: RequestEvent) -> None:
        self.seen.append(event)


class Executions(Observer):
    def __init__(self) -> None:
        self.seen: list[Execution] = []

    def on_execution(self, execution: Execution) -> None:
        self.seen.append(execution)


def test_each_observer_hears_the_records_it_observes() -> None:
    requests, executions = Requests(), Executions()
    fan_out = Observers([requests, executions, Observer()])
    event = RequestEvent(KEY, "grpc", "success", 10)
    execution = Execution(KEY, 1, 1, 0, 0, 0)

    fan_out.on_request(event)
    fan_out.on_execution(execution)

    assert (requests.seen, executions.seen) == ([event], [execution])


def test_a_failing_observer_is_logged_and_the_rest_still_hear(caplog: pytest.LogCaptureFixture) -> None:
    class Broken(Observer):
        def on_request(self, event: RequestEvent) -> None:
            raise RuntimeError("bug")

    after = Requests()
    fan_out = Observers([Broken(), after])

    fan_out.on_request(RequestEvent(KEY, "http", "success", 10))

    assert len(after.seen) == 1
    assert "observer Broken failed on a request" in caplog.text
