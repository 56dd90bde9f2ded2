"""How a dataclass field becomes a setting: ``setting()`` declares it (help text, the commands that
take it, its flag and check), and ``setting_specs`` derives from the fields the command line flag
(``--http-port``), the environment variable (``SERVE_HTTP_PORT``) and the conversion of a raw value.
``Literal`` types are the allowed values of an enumeration. serve/settings.py declares the settings.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

ENV_PREFIX = "SERVE_"
RUN = ("run",)


class SettingsError(ValueError):
    """A flag or environment variable with a value the setting cannot take; names both."""


def setting(
    default: Any = dataclasses.MISSING,
    *,
    help: str,
    commands: Sequence[str] = RUN,
    flag: str | None = None,
    check: Callable[[Any], str | None] | None = None,
    default_factory: Callable[[], Any] | None = None,
) -> Any:
    """A settings field. ``flag`` overrides the derived flag name; ``check`` returns why a value is wrong."""
    metadata = {"help": help, "commands": tuple(commands), "flag": flag, "check": check}
    if default_factory is not None:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{raw!r} is not a boolean (true/false, yes/no, on/off, 1/0)")


def _int(raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise ValueError("expected an integer") from None


def _float(raw: str) -> float:
    try:
        return float(raw)
    except ValueError:
        raise ValueError("expected a number") from None


def _floats(raw: str) -> tuple[float, ...]:
    return tuple(_float(part) for part in raw.split(",") if part.strip())


@dataclass(frozen=True, slots=True)
class SettingSpec:
    name: str
    flag: str
    env: str
    help: str
    commands: tuple[str, ...]
    convert: Callable[[str], Any]
    choices: tuple[str, ...] | None
    is_bool: bool
    is_list: bool
    check: Callable[[Any], str | None] | None

    def problem(self, value: Any) -> str | None:
        if value is None:
            return None
        if self.choices is not None and value not in self.choices:
            return f"{value!r} is not one of {', '.join(self.choices)}"
        return self.check(value) if self.check is not None else None

    def parse(self, raw: str, source: str) -> Any:
        try:
            if self.is_list:
                return [part.strip() for part in raw.split(",") if part.strip()]
            value = self.convert(raw)
        except ValueError as exc:
            raise SettingsError(f"{source}={raw!r} is not valid: {exc}") from None
        problem = self.problem(value)
        if problem:
            raise SettingsError(f"{source}={raw!r}: {problem}")
        return value


def _optional_inner(hint: Any) -> Any:
    """``X | None`` -> X; anything else unchanged."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return hint


def _spec(f: dataclasses.Field[Any], hint: Any) -> SettingSpec:
    inner = _optional_inner(hint)
    origin = typing.get_origin(inner)
    choices = tuple(typing.get_args(inner)) if origin is Literal else None
    convert: Callable[[str], Any]
    if inner is bool:
        convert = _bool
    elif origin is tuple:
        convert = _floats
    elif choices is not None or inner is str or origin is list:
        convert = str
    elif inner is int:
        convert = _int
    elif inner is float:
        convert = _float
    elif inner is Path:
        convert = Path
    else:
        raise TypeError(f"setting {f.name}: no conversion for {hint!r}")
    flag = f.metadata["flag"] or "--" + f.name.replace("_", "-")
    return SettingSpec(
        name=f.name,
        flag=flag,
        env=ENV_PREFIX + flag.lstrip("-").upper().replace("-", "_"),
        help=f.metadata["help"],
        commands=f.metadata["commands"],
        convert=convert,
        choices=choices,
        is_bool=inner is bool,
        is_list=origin is list,
        check=f.metadata["check"],
    )


def setting_specs(settings_class: type[Any]) -> tuple[SettingSpec, ...]:
    """The spec of every field of ``settings_class`` (a dataclass of ``setting()`` fields), in order."""
    hints = typing.get_type_hints(settings_class)
    return tuple(_spec(f, hints[f.name]) for f in dataclasses.fields(settings_class))
