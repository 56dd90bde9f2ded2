"""Inference requests and responses as CloudEvents 1.0 in structured JSON form (one event per line).

The types and extensions are KServe's logger's (``org.kubeflow.serving.inference.request|response``,
``inferenceservicename``, ``namespace``, ``component``, ``endpoint``), so its consumers accept them; unlike
KServe, every event has its own ``id`` (the spec requires source + id to be unique, and KServe gives a
request and its response the same one), and the request id, model version, ``traceparent`` and status
travel as extensions. ``data`` is the Open Inference Protocol JSON body. Allowlisted request headers travel as
KServe's logger sends its ``metadataHeaders``: the ``metadata`` extension, a String holding the JSON object
``{"<lower-case name>": ["<value>"]}``.

Tensors are normalised from decoded arrays, never from wire bytes, so HTTP JSON, the HTTP binary extension
and gRPC (raw or typed contents) give byte-identical ``data``. A tensor larger than ``max_tensor_bytes``
(its elements' bytes: item size x count, or for BYTES the sum of the elements' lengths) is logged with
its name, datatype and shape but ``data`` replaced by the marker ``{"truncated": true, "bytes": N}``;
consumers tell the two apart by ``data`` being an object rather than an array.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, NotRequired, TypedDict

import numpy as np
import orjson

from serve.datatypes import OIP_TO_NUMPY
from serve.payload_log.redaction import Element, RedactionPolicy

REQUEST_TYPE: Final[str] = "org.kubeflow.serving.inference.request"
RESPONSE_TYPE: Final[str] = "org.kubeflow.serving.inference.response"
DEFAULT_MAX_TENSOR_BYTES: Final[int] = 1 << 20

# serve/events.py outcome_of's labels as HTTP statuses (499: nginx's "client closed request", as
# serve/errors.py RequestCancelled). A caller that holds the error itself should prefer its http_status.
_OUTCOME_STATUS: Final[Mapping[str, int]] = {
    "success": 200,
    "invalid_input": 400,
    "rejected": 429,
    "timeout": 504,
    "unavailable": 503,
    "model_error": 500,
    "cancelled": 499,
    "error": 500,
}


class TruncatedJson(TypedDict):
    truncated: bool  # always true
    bytes: int


class TensorJson(TypedDict):
    name: str
    datatype: str
    shape: list[int]
    data: list[Element] | TruncatedJson


class InferenceRequestJson(TypedDict):
    id: str
    model_name: str
    model_version: str
    inputs: list[TensorJson]
    parameters: NotRequired[dict[str, object]]


class InferenceResponseJson(TypedDict):
    id: str
    model_name: str
    model_version: str
    outputs: list[TensorJson]
    error: NotRequired[str]


class EventAttributes(TypedDict):
    specversion: str
    id: str
    type: str
    source: str
    time: str
    datacontenttype: str
    # Extensions (CloudEvents: lower-case a-z and 0-9, at most 20 characters).
    inferenceservicename: str
    namespace: str
    component: str
    endpoint: str
    modelname: str
    modelversion: str
    requestid: str
    traceparent: NotRequired[str]
    status: NotRequired[int]  # responses only
    sampledrate: int
    dataclassification: NotRequired[str]
    replica: NotRequired[str]
    metadata: NotRequired[str]  # allowlisted request headers, JSON in a String (KServe's logger's form)


class CloudEventJson(EventAttributes):
    data: InferenceRequestJson | InferenceResponseJson


@dataclass(frozen=True, slots=True, kw_only=True)
class EventContext:
    """What the events of one request say about where they come from."""

    model: str
    version: str
    request_id: str
    source: str  # CloudEvents source, a URI-reference naming this server
    namespace: str  # KServe's extensions: the InferenceService's namespace,
    component: str  # its component ("predictor"),
    endpoint: str  # and endpoint ("default", "canary")
    traceparent: str | None
    sample_rate: float  # the payload log's sampling rate, in (0, 1]
    data_classification: str | None  # e.g. "confidential"; the CloudEvents dataclassification extension
    replica: str  # this server's replica (host name or pod); "" leaves it out
    # Allowlisted request headers by lower-case name (those the request carried); None: no allowlist, no extension.
    headers: Mapping[str, str] | None = None

    def __post_init__(self) -> None:
        if not self.source:
            raise ValueError("a CloudEvent needs a non-empty source")
        if not 0.0 < self.sample_rate <= 1.0:
            raise ValueError(f"an event's sample rate must be within (0, 1], got {self.sample_rate!r}")


def outcome_status(outcome: str) -> int:
    """The HTTP status for one of serve/events.py outcome_of's labels; 500 for a label it does not know."""
    return _OUTCOME_STATUS.get(outcome, 500)


def normalised_tensors(
    tensors: Mapping[str, np.ndarray],
    datatypes: Mapping[str, str],
    redaction: RedactionPolicy | None,
    *,
    max_tensor_bytes: int = DEFAULT_MAX_TENSOR_BYTES,
) -> list[TensorJson]:
    """Decoded tensors (BYTES as object arrays of bytes) as event tensors, sorted by name.

    Sorted so that the same tensors give the same event whatever order the wire form listed them in.
    A tensor the redaction drops is left out; a truncated one carries no values, so nothing is redacted.
    """
    out: list[TensorJson] = []
    for name in sorted(tensors):
        array = np.asarray(tensors[name])
        datatype = datatypes[name]
        if redaction is not None and redaction.drops(name):
            continue  # before converting what may be a large tensor
        shape = [int(d) for d in array.shape]
        size = _data_bytes(array, datatype)
        if size > max_tensor_bytes:
            out.append({"name": name, "datatype": datatype, "shape": shape, "data": {"truncated": True, "bytes": size}})
            continue
        data = _elements(array, datatype)
        if redaction is not None:
            redacted = redaction.apply(name, datatype, data)
            assert redacted is not None  # a dropped tensor was skipped above
            data = redacted
        out.append({"name": name, "datatype": datatype, "shape": shape, "data": data})
    return out


def _data_bytes(array: np.ndarray, datatype: str) -> int:
    if datatype == "BYTES":
        return sum(len(item) if isinstance(item, bytes) else len(_as_bytes(item)) for item in array.reshape(-1))
    dtype = OIP_TO_NUMPY.get(datatype, array.dtype)
    return int(array.size) * dtype.itemsize


def _elements(array: np.ndarray, datatype: str) -> list[Element]:
    flat = array.reshape(-1)
    if datatype == "BYTES":
        return [item if isinstance(item, str) else _as_bytes(item).decode("utf-8", "backslashreplace") for item in flat]
    dtype = OIP_TO_NUMPY.get(datatype)
    flat = np.ascontiguousarray(flat, dtype=dtype)
    if flat.dtype.kind not in "biuf":
        values: list[Element] = flat.tolist()
        return values
    # Through orjson and back: each value becomes the shortest decimal of its own type (an FP32 0.1 stays
    # 0.1, where tolist() would give 0.10000000149011612), and NaN and the infinities become None, as JSON
    # would write them anyway. One C pass each way, whatever buffer the array came from.
    numbers: list[Element] = orjson.loads(orjson.dumps(flat, option=orjson.OPT_SERIALIZE_NUMPY))
    return numbers


def _as_bytes(item: object) -> bytes:
    if isinstance(item, bytes):
        return item
    if isinstance(item, str):
        return item.encode("utf-8", "surrogatepass")
    if isinstance(item, bytearray | memoryview | np.bytes_):
        return bytes(item)
    return str(item).encode("utf-8", "surrogatepass")


def request_event(
    ctx: EventContext,
    tensors: Sequence[TensorJson],
    parameters: Mapping[str, object] | None,
    *,
    time: datetime | None = None,
) -> CloudEventJson:
    """The request's event; ``time`` (default now) is when the request arrived."""
    body: InferenceRequestJson = {
        "id": ctx.request_id,
        "model_name": ctx.model,
        "model_version": ctx.version,
        "inputs": list(tensors),
    }
    if parameters:
        body["parameters"] = dict(parameters)
    return _event(ctx, REQUEST_TYPE, body, None, time)


def response_event(
    ctx: EventContext,
    tensors: Sequence[TensorJson],
    status: int,
    error: str | None,
    *,
    time: datetime | None = None,
) -> CloudEventJson:
    """The response's event (an error's too: ``status`` and ``error`` say how it failed)."""
    body: InferenceResponseJson = {
        "id": ctx.request_id,
        "model_name": ctx.model,
        "model_version": ctx.version,
        "outputs": list(tensors),
    }
    if error is not None:
        # An exception's text may hold lone surrogates, which JSON (and orjson) cannot carry.
        body["error"] = error.encode("utf-8", "backslashreplace").decode("utf-8")
    return _event(ctx, RESPONSE_TYPE, body, status, time)


def _event(
    ctx: EventContext,
    type_: str,
    body: InferenceRequestJson | InferenceResponseJson,
    status: int | None,
    time: datetime | None,
) -> CloudEventJson:
    attributes: EventAttributes = {
        "specversion": "1.0",
        "id": str(uuid.uuid4()),
        "type": type_,
        "source": ctx.source,
        "time": _rfc3339(time or datetime.now(UTC)),
        "datacontenttype": "application/json",
        "inferenceservicename": ctx.model,
        "namespace": ctx.namespace,
        "component": ctx.component,
        "endpoint": ctx.endpoint,
        "modelname": ctx.model,
        "modelversion": ctx.version,
        "requestid": ctx.request_id,
        # The CloudEvents sampling extension: an Integer, the number of like events this one stands for.
        "sampledrate": max(1, round(1.0 / ctx.sample_rate)),
    }
    if ctx.traceparent:
        attributes["traceparent"] = ctx.traceparent
    if status is not None:
        attributes["status"] = status
    if ctx.data_classification:
        attributes["dataclassification"] = ctx.data_classification
    if ctx.replica:
        attributes["replica"] = ctx.replica
    if ctx.headers is not None:
        # KServe's logger: json.Marshal of the request's map[string][]string, as the extension's String value.
        attributes["metadata"] = orjson.dumps({name: [value] for name, value in ctx.headers.items()}).decode()
    # data last, so that a reader of the file sees every attribute before a long payload.
    return {**attributes, "data": body}


def _rfc3339(moment: datetime) -> str:
    if moment.tzinfo is None:
        raise ValueError("an event's time must be timezone-aware")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def encode_line(event: CloudEventJson) -> bytes:
    """One event as one line of JSON (orjson escapes every newline inside strings), ending in a newline."""
    return orjson.dumps(event, option=orjson.OPT_APPEND_NEWLINE, default=_parameter_value)


def _parameter_value(value: object) -> object:
    # Request parameters arrive as the client sent them; a gRPC bytes value or a numpy scalar is still loggable.
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON")
