"""A model's own payload log settings, from its config.pbtxt ``parameters`` (Triton's string_value map), over the
server's flags: ``payload_log_mode`` (requests|responses|all|none), ``payload_log_sample`` (0..1),
``payload_log_redact`` (``INPUT[=drop|hash|mask],...``) and ``payload_log_data_classification``.

A model's redaction rules are added to the server's, replacing a server rule only for the same input: a model
can redact more than the server asks, or redact an input another way, never log an input the server redacts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Final, Literal, TypeVar, get_args

from serve.payload_log.options import PayloadLogOptions
from serve.payload_log.redaction import RedactionPolicy, parse_redact_flag

ModelMode = Literal["requests", "responses", "all", "none"]
MODES: Final[tuple[ModelMode, ...]] = get_args(ModelMode)
CLASSIFICATIONS: Final[tuple[str, ...]] = ("public", "internal", "confidential", "restricted")

MODE: Final[str] = "payload_log_mode"
SAMPLE: Final[str] = "payload_log_sample"
REDACT: Final[str] = "payload_log_redact"
DATA_CLASSIFICATION: Final[str] = "payload_log_data_classification"
KEYS: Final[tuple[str, ...]] = (MODE, SAMPLE, REDACT, DATA_CLASSIFICATION)

_Choice = TypeVar("_Choice", bound=str)


@dataclass(frozen=True, slots=True)
class ModelLogOptions:
    """How one model version's requests are logged: the server's options with the model's parameters applied."""

    mode: ModelMode
    sample: float
    redaction: RedactionPolicy
    data_classification: str | None

    @property
    def logs(self) -> bool:
        return self.mode != "none" and self.sample > 0.0

    def event_count(self, has_inputs: bool) -> int:
        """How many events a request makes: a request refused before it was decoded has no request event."""
        return int(has_inputs and self.mode in ("requests", "all")) + int(self.mode in ("responses", "all"))


def asks_for_logging(parameters: Mapping[str, str]) -> bool:
    """Whether a model's parameters ask for payload logs (any payload_log_* key, unless mode is none)."""
    if parameters.get(MODE, "").strip().lower() == "none":
        return False
    return any(key in parameters for key in KEYS)


def model_log_options(
    parameters: Mapping[str, str], server: PayloadLogOptions, *, sink: bool = True
) -> ModelLogOptions:
    """``server``'s options with the model's ``parameters`` applied; ValueError naming the key, its value and
    what is allowed. Without a ``sink`` nothing is logged, so a hash rule needs no key there."""
    mode: ModelMode = server.mode
    if MODE in parameters:
        mode = _choice(MODE, parameters[MODE], MODES)
    sample = server.sample
    if SAMPLE in parameters:
        sample = _share(parameters[SAMPLE])
    redaction = server.redaction
    if REDACT in parameters:
        redaction = _redaction(parameters[REDACT], server.redaction, sink=sink)
    classification = server.data_classification
    if DATA_CLASSIFICATION in parameters:
        classification = _choice(DATA_CLASSIFICATION, parameters[DATA_CLASSIFICATION], CLASSIFICATIONS)
    return ModelLogOptions(mode, sample, redaction, classification)


def _choice(key: str, raw: str, allowed: tuple[_Choice, ...]) -> _Choice:
    value = raw.strip().lower()
    for choice in allowed:
        if value == choice:
            return choice
    raise ValueError(f"config parameter '{key}' is '{raw}'; allowed: {', '.join(allowed)}")


def _share(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:  # NaN too
        raise ValueError(f"config parameter '{SAMPLE}' is '{raw}'; allowed: a number from 0 to 1 (share logged)")
    return value


def _redaction(raw: str, server: RedactionPolicy, *, sink: bool) -> RedactionPolicy:
    rules = dict(server.rules)
    for item in raw.split(","):
        if not item.strip():
            continue
        try:
            name, redaction = parse_redact_flag(item.strip())
        except ValueError:
            raise ValueError(
                f"config parameter '{REDACT}' is '{raw}'; allowed: INPUT[=drop|hash|mask],... ({item.strip()!r} is not)"
            ) from None
        rules[name] = redaction
    if "hash" in rules.values() and server.key is None:
        if not sink:
            return server  # checked, never applied
        raise ValueError(
            f"config parameter '{REDACT}' is '{raw}': hashing needs the server's --payload-log-hash-key-file"
        )
    return replace(server, rules=rules)
