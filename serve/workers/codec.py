"""Messages (messages.py) to frames and back: the one encoder and the one decoder of worker IPC.

A frame is a JSON header and a binary body (ipc.py). A request's header is ``{"op": <kind>, ...}``,
an answer's ``{"ok": true, ...}`` or ``{"ok": false, "error": ..., "status": <ServeError class
name>}``, so a failure on the other side is raised here as the same kind of ServeError it was
there. A message's fields go in the header by their declared types; its one top-level ``bytes``
field, if any, is the body (documents can be megabytes: no base64 for them). Anything that does not
match the declared types is a MalformedMessage naming the field.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import types
from collections.abc import Iterable, Mapping
from typing import TypeVar, Union, cast, get_args, get_origin, get_type_hints

import orjson

from serve import errors
from serve.errors import ServeError
from serve.tracing.settings import BadSettingValue, SettingValue, setting_values
from serve.workers.messages import A, Answer, Request

JsonValue = str | int | float | bool | None | list["JsonValue"] | dict[str, "JsonValue"]
JsonObject = dict[str, JsonValue]
Message = Request[Answer] | Answer
T = TypeVar("T")
M = TypeVar("M")
R = TypeVar("R", bound=Request[Answer])


class MalformedMessage(ServeError):
    """A frame that is not one of the messages in messages.py (another version, or a bug)."""

    http_status = 500


_FIELDS: dict[type, tuple[tuple[str, object], ...]] = {}


def _fields(cls: type) -> tuple[tuple[str, object], ...]:
    """A message class's fields and their declared types (resolved once per class)."""
    fields = _FIELDS.get(cls)
    if fields is None:
        hints = get_type_hints(cls)
        fields = _FIELDS[cls] = tuple((f.name, hints[f.name]) for f in dataclasses.fields(cls))
    return fields


def _body_field(cls: type) -> str | None:
    """The field that travels as the frame's body: the message's one ``bytes`` field."""
    names = [name for name, hint in _fields(cls) if hint is bytes]
    if len(names) > 1:
        raise TypeError(f"{cls.__name__} has more than one bytes field: {names}")
    return names[0] if names else None


# ---- encoding --------------------------------------------------------------------------------------


def _to_json(value: object, hint: object) -> JsonValue:
    if value is None or isinstance(value, str | int | float):
        return value
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, tuple | list):
        (item,) = get_args(hint)[:1]
        return [_to_json(v, item) for v in value]
    if isinstance(value, Mapping):
        item = get_args(hint)[1]
        return {str(k): _to_json(v, item) for k, v in value.items()}
    if dataclasses.is_dataclass(value):
        return {name: _to_json(getattr(value, name), h) for name, h in _fields(type(value))}
    raise TypeError(f"cannot encode {type(value).__name__}")


def _encode_fields(message: Message) -> tuple[JsonObject, bytes]:
    body_field = _body_field(type(message))
    header = {name: _to_json(getattr(message, name), hint) for name, hint in _fields(type(message))}
    body = getattr(message, body_field) if body_field is not None else b""
    header.pop(body_field or "", None)
    return header, body


def encode_request(request: Request[Answer]) -> tuple[JsonObject, bytes]:
    header, body = _encode_fields(request)
    return {"op": request.kind, **header}, body


def encode_answer(answer: Answer) -> tuple[JsonObject, bytes]:
    header, body = _encode_fields(answer)
    return {"ok": True, **header}, body


def encode_error(exc: ServeError) -> JsonObject:
    return {"ok": False, "error": exc.message, "status": type(exc).__name__}


# ---- decoding --------------------------------------------------------------------------------------


def _from_json(value: object, hint: object, where: str) -> object:
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = (a for a in args if a is not type(None))
        return _from_json(value, inner, where)
    if hint is bytes:
        try:
            return base64.b64decode(_expect(value, str, where), validate=True)
        except binascii.Error:
            raise MalformedMessage(f"{where}: not base64") from None
    if hint in (str, int, float):
        return _expect(value, cast(type, hint), where)
    if origin is tuple:
        return tuple(_from_json(v, args[0], f"{where}[{i}]") for i, v in enumerate(_expect(value, list, where)))
    if origin is Mapping or origin is dict:
        items = _expect(value, dict, where).items()
        return {_expect(k, str, where): _from_json(v, args[1], f"{where}.{k}") for k, v in items}
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _build(hint, _expect(value, dict, where), b"", where)
    raise TypeError(f"{where}: no decoder for {hint!r}")


def _expect(value: object, kind: type[T], where: str) -> T:
    # bool is an int to isinstance, never to a message.
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise MalformedMessage(f"{where}: expected {kind.__name__}, got {type(value).__name__}")
    return value


def _build(cls: type[M], header: Mapping[str, object], body: bytes, where: str) -> M:
    body_field = _body_field(cls)
    values: dict[str, object] = {}
    for name, hint in _fields(cls):
        if name == body_field:
            values[name] = body
        elif name not in header:
            raise MalformedMessage(f"{where}: no field {name!r}")
        else:
            values[name] = _from_json(header[name], hint, f"{where}.{name}")
    return cls(**values)


def decode_request(header: Mapping[str, object], body: bytes, kinds: Iterable[type[R]]) -> R:
    """The request in a frame, one of ``kinds`` (what this socket answers)."""
    kind = header.get("op")
    for cls in kinds:
        if cls.kind == kind:
            return _build(cls, header, body, str(kind))
    raise MalformedMessage(f"unknown request {kind!r}")


def decode_answer(request: Request[A], header: Mapping[str, object], body: bytes) -> A:
    """The answer to ``request`` in a frame; an error answer is raised as the ServeError it was."""
    if header.get("ok") is not True:
        kind = getattr(errors, str(header.get("status", "")), ServeError)
        if not (isinstance(kind, type) and issubclass(kind, ServeError)):
            kind = ServeError
        raise kind(str(header.get("error", "the other process failed")))
    # Request.__init_subclass__ took ``answer`` from the request's own Request[...] base.
    return cast(A, _build(request.answer, header, body, f"answer to {request.kind}"))


# ---- trace settings, as the JSON bytes their messages carry -------------------------------------------------


def trace_changes_to_json(changes: Mapping[str, SettingValue]) -> bytes:
    return orjson.dumps(_plain(changes))


def trace_settings_to_json(models: Mapping[str, Mapping[str, SettingValue]]) -> bytes:
    return orjson.dumps({model: _plain(changes) for model, changes in models.items()})


def _plain(changes: Mapping[str, SettingValue]) -> dict[str, str | list[str] | None]:
    return {key: value if value is None or isinstance(value, str) else list(value) for key, value in changes.items()}


def trace_changes_from_json(document: bytes) -> dict[str, SettingValue]:
    """A change of trace settings as TraceSettingsChanged carries it; MalformedMessage if it is not one."""
    return _trace_changes(_loads(document, "trace settings"), "trace settings")


def trace_settings_from_json(document: bytes) -> dict[str, dict[str, SettingValue]]:
    """Every model's changed trace settings as StartupModelsAnswer carries them."""
    models = _loads(document, "startup trace settings")
    return {model: _trace_changes(changes, f"trace settings of {model!r}") for model, changes in models.items()}


def _loads(document: bytes, what: str) -> dict[str, object]:
    try:
        value = orjson.loads(document)
    except orjson.JSONDecodeError as exc:
        raise MalformedMessage(f"{what}: not JSON ({exc})") from None
    return _expect(value, dict, what)


def _trace_changes(value: object, what: str) -> dict[str, SettingValue]:
    try:
        return setting_values(_expect(value, dict, what))
    except BadSettingValue as exc:
        raise MalformedMessage(f"{what}.{exc.key}: expected a string, a list of strings or null") from None
