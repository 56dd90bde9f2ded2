"""Alerts: one per state change, always a log line, optionally a webhook (JSON POST) with retries.

The policy's persistence rule already turns a flapping measure into rare state changes;
on top of that a token bucket (``rate_per_minute``, burst of the same size) bounds how
many webhook calls a storm can cause. Alerts over the limit are logged, stored and
counted as suppressed, never queued for later (a late alert misleads more than a
missing one, and the report and gauges still show the state).

Delivery runs in a background task so a slow receiver never delays an evaluation:
each alert is tried ``retries + 1`` times with exponential backoff (``backoff_s``, ×2),
and a 2xx answer is success.
"""

from __future__ import annotations

import asyncio
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import NotRequired, TypedDict

import orjson

from serve.monitor.model_report_json import MeasureJson

log = logging.getLogger("serve.monitor.alerts")


class AlertJson(TypedDict):
    """An alert as logged, stored and POSTed: the condition's details, then its key, state, time and message."""

    # input_drift | output_drift | dataset_drift | slo_latency | slo_errors | accuracy_drop | performance_divergence
    kind: str
    model: str
    version: str
    feature: NotRequired[str]  # *_drift of one feature
    role: NotRequired[str]
    samples: NotRequired[int]
    measures: NotRequired[dict[str, MeasureJson]]
    value: NotRequired[float | None]  # slo_*, accuracy_drop (the value judged), performance_divergence
    source: NotRequired[str]  # accuracy_drop: realized | estimated
    reference: NotRequired[float | None]  # accuracy_drop: the held-out value; performance_divergence: the estimate
    drifted_share: NotRequired[float | None]  # dataset_drift
    threshold: NotRequired[float | None]  # slo_* and dataset_drift
    key: NotRequired[str]
    state: NotRequired[str]  # firing | resolved
    time: NotRequired[float]
    message: NotRequired[str]


@dataclass(slots=True)
class AlertCounters:
    emitted: int = 0
    delivered: int = 0
    failed: int = 0
    suppressed: int = 0


def post_json(url: str, payload: AlertJson, timeout_s: float) -> int:
    request = urllib.request.Request(
        url, data=orjson.dumps(payload), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        return int(response.status)


class Alerter:
    def __init__(
        self,
        webhook: str | None = None,
        *,
        rate_per_minute: float = 30.0,
        retries: int = 3,
        backoff_s: float = 0.5,
        timeout_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        on_result: Callable[[AlertJson, bool], None] | None = None,
    ) -> None:
        self.webhook = webhook
        self.rate_per_minute = rate_per_minute
        self.retries = retries
        self.backoff_s = backoff_s
        self.timeout_s = timeout_s
        self._clock = clock
        self._tokens = rate_per_minute
        self._refilled = clock()
        self._queue: asyncio.Queue[AlertJson] | None = None
        self._task: asyncio.Task[None] | None = None
        self._on_result = on_result
        self.counters = AlertCounters()

    def _take_token(self) -> bool:
        now = self._clock()
        self._tokens = min(self.rate_per_minute, self._tokens + (now - self._refilled) * self.rate_per_minute / 60)
        self._refilled = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False

    def emit(self, alert: AlertJson) -> bool:
        """Log the alert and queue it for the webhook; False when the rate limit suppressed the webhook call."""
        self.counters.emitted += 1
        level = logging.WARNING if alert.get("state") == "firing" else logging.INFO
        log.log(level, "ALERT %s: %s", alert.get("state", "").upper(), alert.get("message", ""))
        if self.webhook is None:
            return True
        if not self._take_token():
            self.counters.suppressed += 1
            log.warning(
                "alert rate limit (%s/min) reached: webhook not called for %s",
                self.rate_per_minute,
                alert.get("key"),
            )
            return False
        self._ensure_worker()
        assert self._queue is not None
        self._queue.put_nowait(alert)
        return True

    def _ensure_worker(self) -> None:
        if self._queue is None:
            self._queue = asyncio.Queue()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._deliver_forever(), name="alert-webhook")

    async def _deliver_forever(self) -> None:
        assert self._queue is not None
        while True:
            alert = await self._queue.get()
            try:
                ok = await self._deliver(alert)
                if self._on_result is not None:
                    self._on_result(alert, ok)
            except Exception:  # the worker must outlive any one alert
                log.exception("alert delivery failed")
            finally:
                self._queue.task_done()

    async def _deliver(self, alert: AlertJson) -> bool:
        assert self.webhook is not None
        delay = self.backoff_s
        for attempt in range(self.retries + 1):
            try:
                status = await asyncio.to_thread(post_json, self.webhook, alert, self.timeout_s)
                if 200 <= status < 300:
                    self.counters.delivered += 1
                    return True
                reason = f"HTTP {status}"
            except urllib.error.HTTPError as exc:
                reason = f"HTTP {exc.code}"
            except OSError as exc:
                reason = str(exc)
            if attempt < self.retries:
                log.info("webhook attempt %d failed (%s); retrying in %.1fs", attempt + 1, reason, delay)
                await asyncio.sleep(delay)
                delay *= 2
            else:
                log.error("webhook gave up after %d attempts: %s", attempt + 1, reason)
        self.counters.failed += 1
        return False

    async def drain(self) -> None:
        """Wait until every queued alert was delivered or given up (tests, --once, shutdown)."""
        if self._queue is not None:
            await self._queue.join()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
