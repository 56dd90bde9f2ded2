# Post-processed by protos/generate.py: private descriptor pool, package-relative imports.
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class InputStatsRequest(_message.Message):
    __slots__ = ("model_name", "model_version", "since")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    model_version: str
    since: int
    def __init__(self, model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., since: _Optional[int] = ...) -> None: ...

class InputStatsResponse(_message.Message):
    __slots__ = ("json",)
    JSON_FIELD_NUMBER: _ClassVar[int]
    json: str
    def __init__(self, json: _Optional[str] = ...) -> None: ...

class BaselineRequest(_message.Message):
    __slots__ = ("model_name", "model_version")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    model_version: str
    def __init__(self, model_name: _Optional[str] = ..., model_version: _Optional[str] = ...) -> None: ...

class BaselineResponse(_message.Message):
    __slots__ = ("model_name", "model_version", "baseline", "sha256", "model_sha256")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    BASELINE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    MODEL_SHA256_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    model_version: str
    baseline: bytes
    sha256: str
    model_sha256: str
    def __init__(self, model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., baseline: _Optional[bytes] = ..., sha256: _Optional[str] = ..., model_sha256: _Optional[str] = ...) -> None: ...

class FeedbackLabel(_message.Message):
    __slots__ = ("id", "row", "label", "label_text", "value", "time")
    ID_FIELD_NUMBER: _ClassVar[int]
    ROW_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    LABEL_TEXT_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    id: str
    row: int
    label: int
    label_text: str
    value: float
    time: float
    def __init__(self, id: _Optional[str] = ..., row: _Optional[int] = ..., label: _Optional[int] = ..., label_text: _Optional[str] = ..., value: _Optional[float] = ..., time: _Optional[float] = ...) -> None: ...

class FeedbackRequest(_message.Message):
    __slots__ = ("model_name", "model_version", "labels")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    model_version: str
    labels: _containers.RepeatedCompositeFieldContainer[FeedbackLabel]
    def __init__(self, model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., labels: _Optional[_Iterable[_Union[FeedbackLabel, _Mapping]]] = ...) -> None: ...

class FeedbackResponse(_message.Message):
    __slots__ = ("joined", "unknown", "expired", "duplicate", "conflicting")
    JOINED_FIELD_NUMBER: _ClassVar[int]
    UNKNOWN_FIELD_NUMBER: _ClassVar[int]
    EXPIRED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    CONFLICTING_FIELD_NUMBER: _ClassVar[int]
    joined: int
    unknown: int
    expired: int
    duplicate: int
    conflicting: int
    def __init__(self, joined: _Optional[int] = ..., unknown: _Optional[int] = ..., expired: _Optional[int] = ..., duplicate: _Optional[int] = ..., conflicting: _Optional[int] = ...) -> None: ...

class PerformanceRequest(_message.Message):
    __slots__ = ("model_name", "model_version")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    model_version: str
    def __init__(self, model_name: _Optional[str] = ..., model_version: _Optional[str] = ...) -> None: ...

class PerformanceResponse(_message.Message):
    __slots__ = ("json",)
    JSON_FIELD_NUMBER: _ClassVar[int]
    json: str
    def __init__(self, json: _Optional[str] = ...) -> None: ...
