"""ModelConfig to JSON exactly as Triton prints it.

Triton prints with preserved field names and primitive fields always present, message
fields only when set, enums by name, and int64/uint64 values as JSON numbers (protobuf's
JSON mapping would make them strings, which perf_analyzer and dashboards do not expect).
"""

from __future__ import annotations

from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from serve.types import JsonObject

_INT64_TYPES = {
    FieldDescriptor.TYPE_INT64,
    FieldDescriptor.TYPE_UINT64,
    FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_FIXED64,
    FieldDescriptor.TYPE_SFIXED64,
}


def _scalar(field: FieldDescriptor, value: Any) -> Any:
    if field.type == FieldDescriptor.TYPE_ENUM:
        enum_value = field.enum_type.values_by_number.get(value)
        return enum_value.name if enum_value is not None else value
    if field.type == FieldDescriptor.TYPE_BYTES:
        import base64

        return base64.b64encode(value).decode("ascii")
    if field.type in _INT64_TYPES:
        return int(value)
    return value


def _is_map(field: FieldDescriptor) -> bool:
    message_type: Descriptor | None = field.message_type
    return bool(message_type and message_type.GetOptions().map_entry)


def message_to_json(message: Message) -> JsonObject:
    out: JsonObject = {}
    descriptor = message.DESCRIPTOR
    for field in descriptor.fields:
        value = getattr(message, field.name)
        repeated = field.label == FieldDescriptor.LABEL_REPEATED
        if _is_map(field):
            value_field = field.message_type.fields_by_name["value"]
            if value_field.type == FieldDescriptor.TYPE_MESSAGE:
                out[field.name] = {str(k): message_to_json(v) for k, v in value.items()}
            else:
                out[field.name] = {str(k): _scalar(value_field, v) for k, v in value.items()}
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            if repeated:
                out[field.name] = [message_to_json(v) for v in value]
            elif message.HasField(field.name):
                out[field.name] = message_to_json(value)
        elif repeated:
            out[field.name] = [_scalar(field, v) for v in value]
        elif field.containing_oneof is not None and not message.HasField(field.name):
            continue
        else:
            out[field.name] = _scalar(field, value)
    return out
