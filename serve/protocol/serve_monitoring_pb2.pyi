# Post-processed by protos/generate.py: private descriptor pool, package-relative imports.
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

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
