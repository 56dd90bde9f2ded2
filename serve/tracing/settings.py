"""Triton's trace settings (its trace extension), in OpenTelemetry mode: global, and per model on top.

A model's settings are the global ones with whatever was set for that model on top; setting a key to null (HTTP)
or to no value (gRPC) clears the model's own value, so that it follows the global one again (Triton's rule).
What each key means here (README: Tracing):

- ``trace_level``: ``["TIMESTAMPS"]`` traces, ``["OFF"]`` does not. ``TENSORS`` is refused: tensors go to the
  payload log, which redacts them (--payload-log-file).
- ``trace_rate``: N traces one request in every N that arrives without a sampled parent, counted per process: per
  model for a model with settings of its own, else over every model that follows the global ones. Until a client
  sets it, the ``OTEL_TRACES_SAMPLER`` decides, and the value shown is that sampler's 1/ratio (0: none).
- ``trace_count``: how many more requests may be traced, -1 for no limit; counted down per process.
- ``trace_mode``: always ``opentelemetry``; ``trace_file`` and ``log_frequency`` belong to Triton's own trace files
  and are refused when set: spans leave through the OTLP exporter (``OTEL_EXPORTER_OTLP_ENDPOINT``).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Literal, TypeAlias, TypedDict

import orjson

from serve.errors import InvalidInput

Level = Literal["OFF", "TIMESTAMPS"]
# What a client may send for one key: a string, a list of strings (trace_level), or None (HTTP null) to clear it.
SettingValue: TypeAlias = "str | Sequence[str] | None"

LEVEL: Final = "trace_level"
RATE: Final = "trace_rate"
COUNT: Final = "trace_count"
MODE: Final = "trace_mode"
FILE: Final = "trace_file"
LOG_FREQUENCY: Final = "log_frequency"
KEYS: Final = (LEVEL, RATE, COUNT, LOG_FREQUENCY, FILE, MODE)
_SETTABLE: Final = (LEVEL, RATE, COUNT)

UNLIMITED: Final = -1


class TraceSettingsDocument(TypedDict):
    """Triton's trace setting response: every value a string, or a list of strings for the level."""

    trace_level: list[str]
    trace_rate: str
    trace_count: str
    log_frequency: str
    trace_file: str
    trace_mode: str


@dataclass(frozen=True, slots=True)
class Overrides:
    """The keys set through the API, None where not set (follow the level below: the global settings, or the
    sampler and the server's start-up state)."""

    level: Level | None = None
    rate: int | None = None
    count: int | None = None

    def over(self, base: Overrides) -> Overrides:
        return Overrides(
            self.level if self.level is not None else base.level,
            self.rate if self.rate is not None else base.rate,
            self.count if self.count is not None else base.count,
        )


@dataclass(slots=True)
class Effective:
    """One model's settings as they apply to its next request, with its arrivals counter."""

    traced: bool  # trace_level is not OFF
    rate: int | None  # one in N; None = the sampler decides
    own_count: bool  # the model has its own trace_count (else it shares the global one)
    arrivals: int = 0  # requests seen under ``rate`` (without a sampled parent)


class TraceSettings:
    """The global and per-model trace settings of one process, and their counters.

    Thread-safe: the API changes them on the event loop, and sampling reads them on the loop too, but a worker
    applies a change its supervisor relays from a thread of its own."""

    def __init__(self, *, enabled: bool, sampler_ratio: float | None) -> None:
        # ``enabled``: the server was started with tracing (--trace or OTEL_TRACES_EXPORTER); without it every level is
        # OFF and changing it is refused, since the SDK was never loaded. ``sampler_ratio``: the share of root requests
        # OTEL_TRACES_SAMPLER traces (None when it is not a ratio sampler), shown as trace_rate until one is set.
        self.enabled = enabled
        self._sampler_ratio = sampler_ratio
        self._global = Overrides()
        self._models: dict[str, Overrides] = {}
        self._effective: dict[str, Effective] = {}
        # trace_count left: the global one (shared by every model without its own) and each model's own.
        self._global_left = UNLIMITED
        self._model_left: dict[str, int] = {}
        self._lock = threading.Lock()

    # -- read on every request -------------------------------------------------------------------------------

    def effective(self, model: str) -> Effective:
        """The model's current settings (the same object until the settings change). A model with no settings of its
        own shares the global ones, counter included: the name is the client's, and only the names that settings were
        made for (served models, checked by the API) are kept."""
        if model not in self._models:
            model = ""
        found = self._effective.get(model)
        if found is None:
            with self._lock:
                found = self._effective.get(model)
                if found is None:
                    merged = self._merged(model)
                    own = model in self._model_left
                    found = self._effective[model] = Effective(self.enabled and merged.level != "OFF", merged.rate, own)
        return found

    def take_count(self, model: str, effective: Effective) -> bool:
        """One more trace of ``model`` if trace_count allows it (and counts it down)."""
        left = self._model_left.get(model, UNLIMITED) if effective.own_count else self._global_left
        if left == UNLIMITED:
            return True
        with self._lock:
            if effective.own_count:
                left = self._model_left.get(model, 0)
                if left == 0:
                    return False
                self._model_left[model] = left - 1
            else:
                if self._global_left == 0:
                    return False
                self._global_left -= 1
            return True

    # -- the trace extension ----------------------------------------------------------------------------------

    def document(self, model: str = "") -> TraceSettingsDocument:
        with self._lock:
            merged = self._merged(model)
            left = self._model_left.get(model, self._global_left) if model else self._global_left
        level: Level = "OFF" if not self.enabled else (merged.level or "TIMESTAMPS")
        return {
            "trace_level": [level],
            "trace_rate": str(merged.rate if merged.rate is not None else self._sampler_rate()),
            "trace_count": str(left),
            "log_frequency": "0",
            "trace_file": "",
            "trace_mode": "opentelemetry",
        }

    def update(self, model: str, changes: Mapping[str, SettingValue]) -> TraceSettingsDocument:
        """Applies ``changes`` (Triton's names) to the model's settings, or the global ones for model "", all or
        none: InvalidInput naming the first key that cannot be applied."""
        parsed = self.validate(changes)
        with self._lock:
            current = self._models.get(model, Overrides()) if model else self._global
            level = parsed.get(LEVEL, current.level)
            rate = parsed.get(RATE, current.rate)
            count = parsed.get(COUNT, current.count)
            assert level is None or level in ("OFF", "TIMESTAMPS")
            assert (rate is None or isinstance(rate, int)) and (count is None or isinstance(count, int))
            updated = Overrides(level, rate, count)
            if model:
                self._models[model] = updated
            else:
                self._global = updated
            if COUNT in parsed:  # a count set starts afresh; one cleared follows the global count again
                if model and count is None:
                    self._model_left.pop(model, None)
                elif model:
                    assert count is not None
                    self._model_left[model] = count
                else:
                    self._global_left = UNLIMITED if count is None else count
            self._effective.clear()
        return self.document(model)

    def validate(self, changes: Mapping[str, SettingValue]) -> dict[str, object]:
        """What ``update`` would apply, without applying it: InvalidInput naming the first key that cannot be."""
        parsed = _parse(changes)
        if not self.enabled and any(value is not None for value in parsed.values()):
            raise InvalidInput(
                "tracing is off on this server: start it with --trace (or OTEL_TRACES_EXPORTER=otlp) to change "
                "trace settings"
            )
        return parsed

    # -- helpers ---------------------------------------------------------------------------------------------

    def _merged(self, model: str) -> Overrides:
        own = self._models.get(model) if model else None
        return own.over(self._global) if own is not None else self._global

    def _sampler_rate(self) -> int:
        ratio = self._sampler_ratio
        if ratio is None:
            return 1
        return 0 if ratio <= 0 else max(1, round(1 / ratio))


def setting_values(document: Mapping[str, object]) -> dict[str, SettingValue]:
    """A change of settings as a client (JSON) or a worker message sends it; InvalidInput naming the first key whose
    value is not a string, a list of strings, or null (which clears it)."""
    changes: dict[str, SettingValue] = {}
    for key, value in document.items():
        if value is None or isinstance(value, str):
            changes[key] = value
        elif isinstance(value, list) and all(isinstance(item, str) for item in value):
            changes[key] = [str(item) for item in value]
        else:
            raise BadSettingValue(key, value)
    return changes


class BadSettingValue(InvalidInput):
    """A setting whose value is not a string, a list of strings, or null."""

    def __init__(self, key: str, value: object) -> None:
        try:
            shown = orjson.dumps(value).decode()
        except TypeError:
            shown = type(value).__name__
        super().__init__(
            f"trace setting '{key}' must be a string, a list of strings or null (to clear it), not {shown}"
        )
        self.key = key


def _parse(changes: Mapping[str, SettingValue]) -> dict[str, object]:
    """Each key's new value (None = clear), or InvalidInput naming the key, its value and what is allowed."""
    parsed: dict[str, object] = {}
    for key, value in changes.items():
        if key in (FILE, LOG_FREQUENCY):
            text = "" if value is None or (not isinstance(value, str) and len(value) == 0) else _one(key, value)
            if text == "" or (key == LOG_FREQUENCY and text == "0"):
                continue  # what it already is: Triton's clients send the whole document back
            raise InvalidInput(
                f"trace setting '{key}' is Triton's trace file, which this server does not write: spans leave "
                "through the OpenTelemetry exporter (set OTEL_EXPORTER_OTLP_ENDPOINT)"
            )
        if key == MODE:
            if value is None or _one(key, value) == "opentelemetry":
                continue
            raise InvalidInput(
                f"trace_mode '{_one(key, value)}' is not supported: this server traces in 'opentelemetry' mode"
            )
        if key not in _SETTABLE:
            raise InvalidInput(f"unknown trace setting '{key}': the settings are {', '.join(KEYS)}")
        if value is None or (not isinstance(value, str) and len(value) == 0):
            parsed[key] = None
        elif key == LEVEL:
            parsed[key] = _level(value)
        else:
            parsed[key] = _integer(key, _one(key, value), minimum=0 if key == RATE else UNLIMITED)
    return parsed


def _one(key: str, value: str | Sequence[str]) -> str:
    if isinstance(value, str):
        return value
    if len(value) != 1 or not isinstance(value[0], str):
        raise InvalidInput(f"trace setting '{key}' takes one string value, not {list(value)!r}")
    return value[0]


def _level(value: str | Sequence[str]) -> Level:
    levels = [value] if isinstance(value, str) else list(value)
    for level in levels:
        if not isinstance(level, str) or level not in ("OFF", "TIMESTAMPS", "TENSORS"):
            raise InvalidInput(f"trace_level {level!r} is not one of OFF, TIMESTAMPS")
    if "TENSORS" in levels:
        raise InvalidInput(
            "trace_level TENSORS is not supported: tensors are recorded by the payload log, with redaction "
            "(--payload-log-file); use TIMESTAMPS"
        )
    if "OFF" in levels and len(levels) > 1:
        raise InvalidInput(f"trace_level {levels!r} mixes OFF with a level: send ['OFF'] or ['TIMESTAMPS']")
    return "OFF" if "OFF" in levels else "TIMESTAMPS"


def _integer(key: str, text: str, *, minimum: int) -> int:
    try:
        number = int(text)
    except ValueError:
        raise InvalidInput(f"trace setting '{key}' must be an integer as a string, not {text!r}") from None
    if number < minimum:
        raise InvalidInput(f"trace setting '{key}' must be at least {minimum}, not {number}")
    return number
