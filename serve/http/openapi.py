"""The HTTP API as an OpenAPI 3.1 document, served at ``GET /openapi.json``.

It describes what clients send and what every route answers, errors included (``{"error":
message}``). Triton's shared-memory and logging endpoints, which answer 501 naming the extension,
are left out: there is nothing to call. The document is checked against the server by
schemathesis (tests/test_openapi_api.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from serve import __version__
from serve.types import JsonObject, JsonValue

JSON = "application/json"

_DATATYPES: list[JsonValue] = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64"]
_DATATYPES += ["FP16", "FP32", "FP64", "BF16", "BYTES"]


def _ref(name: str) -> JsonObject:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: JsonObject, description: str) -> JsonObject:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _errors(*statuses: int) -> JsonObject:
    reasons = {
        400: "the request is invalid (the message says why)",
        404: "no such model or version",
        413: "the body is over --max-request-bytes",
        429: "the model's queue is full",
        499: "the client went away",
        501: "an extension this server does not support",
        503: "the model is not ready, model control is disabled, or the server is shutting down",
        504: "the request's timeout passed before it ran",
    }
    return {str(status): _json(_ref("Error"), reasons[status]) for status in statuses}


def _path_parameter(name: str) -> JsonObject:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


_MODEL = _path_parameter("model")
_VERSION = _path_parameter("version")
_REPOSITORY = _path_parameter("repository")


def _operation(
    summary: str,
    parameters: list[JsonValue],
    responses: JsonObject,
    body: str | None = None,
    *,
    body_required: bool = False,
) -> JsonObject:
    """One operation; ``body`` names the schema of its request body, if it takes one."""
    operation: JsonObject = {"summary": summary, "parameters": parameters}
    if body is not None:
        operation["requestBody"] = {"required": body_required, "content": {JSON: {"schema": _ref(body)}}}
    operation["responses"] = responses
    return operation


def _status_only(summary: str, ok: str, not_ok: str) -> JsonObject:
    return {"get": {"summary": summary, "responses": {"200": {"description": ok}, "400": {"description": not_ok}}}}


class _ModelRoute(NamedTuple):
    suffix: str  # after the model's (or model version's) path
    summary: str
    ok: JsonObject  # the 200 answer
    others: JsonObject  # every other answer
    method: str = "get"
    body: str | None = None  # the schema of its required request body
    query: tuple[JsonObject, ...] = ()  # query parameters, after the path's


def _model_routes(prefix: str, parameters: list[JsonValue]) -> JsonObject:
    lookup = _errors(400, 404, 503)
    anything: JsonObject = {"type": "object"}
    since: JsonObject = {"name": "since", "in": "query", "required": False, "schema": {"type": "string"}}
    not_ready = _json(_ref("Error"), "not ready or no such model ('error' says why), or a bad version")
    routes = [
        _ModelRoute("", "model metadata", _json(_ref("ModelMetadata"), "the model's inputs and outputs"), lookup),
        _ModelRoute(
            "/ready", "model readiness", {"description": "ready (empty body, as in Triton)"}, {"400": not_ready}
        ),
        _ModelRoute(
            "/config",
            "model configuration (Triton's ModelConfig as JSON)",
            _json(anything, "the configuration"),
            lookup,
        ),
        _ModelRoute(
            "/stats",
            "inference statistics (Triton's statistics extension)",
            _json(_ref("ModelStats"), "statistics"),
            lookup,
        ),
        _ModelRoute(
            "/infer",
            "inference (JSON; binary tensors with Inference-Header-Content-Length)",
            _json(_ref("InferResponse"), "the outputs"),
            _errors(400, 404, 413, 429, 499, 501, 503, 504),
            method="post",
            body="InferRequest",
        ),
        _ModelRoute(
            "/input-stats",
            "input and output statistics windows (MONITOR.md)",
            _json(anything, "the statistics document"),
            lookup,
            query=(since,),
        ),
        _ModelRoute(
            "/baseline",
            "the baseline.json the model's statistics bin against",
            _json(anything, "the baseline, as stored"),
            lookup,
        ),
    ]
    return {
        prefix + route.suffix: {
            route.method: _operation(
                route.summary,
                [*parameters, *route.query],
                {"200": route.ok, **route.others},
                route.body,
                body_required=True,
            )
        }
        for route in routes
    }


def _repository_routes(prefix: str, parameters: list[JsonValue]) -> JsonObject:
    model = [*parameters, _MODEL]
    control = _errors(400, 404, 413, 503)
    rows = _json({"type": "array", "items": _ref("IndexEntry")}, "one row per version")
    return {
        prefix + "/index": {
            "post": _operation(
                "the models in the repository and their state",
                parameters,
                {"200": rows, **_errors(400, 413)},
                body="IndexRequest",
            )
        },
        prefix + "/models/{model}/load": {
            "post": _operation(
                "load or reload a model (--model-control-mode explicit)",
                model,
                {"200": {"description": "loaded"}, **control},
                body="LoadRequest",
            )
        },
        prefix + "/models/{model}/unload": {
            "post": _operation(
                "unload a model (--model-control-mode explicit)", model, {"200": {"description": "unloaded"}, **control}
            )
        },
    }


def _rollout_routes() -> JsonObject:
    path = "/v2/models/{model}/rollout"
    status = _json(_ref("RolloutStatus"), "the rollout's status document (plan, routing, evaluation, evidence)")
    change = {"200": status, **_errors(400, 404, 413, 503)}
    return {
        path: {
            "get": _operation("the model's rollout (admin scope)", [_MODEL], {"200": status, **_errors(404, 503)}),
            "put": _operation(
                "set a new rollout: primary, candidates, shadow, key, steps, gates (admin scope)",
                [_MODEL],
                change,
                body="RolloutSpec",
                body_required=True,
            ),
        },
        path + "/promote": {
            "post": _operation(
                "make the candidate (or 'version') the primary (admin scope)", [_MODEL], change, body="PromoteRequest"
            )
        },
        path + "/abort": {
            "post": _operation("end the rollout: only the primary answers (admin scope)", [_MODEL], change)
        },
        path + "/evidence": {
            "get": _operation(
                "every arm's evidence since the server started, merged over its workers (admin scope; read by "
                "serve monitor --rollouts)",
                [_MODEL],
                {"200": _json({"type": "object"}, "the rollout evidence"), **_errors(404, 503)},
            )
        },
        path + "/apply": {
            "post": _operation(
                "take a whole plan (spec and status) when its revision is above the one in force (admin scope; "
                "sent by serve monitor --rollouts)",
                [_MODEL],
                change,
                body="RolloutPlan",
                body_required=True,
            )
        },
    }


def _trace_routes() -> JsonObject:
    settings = _json(_ref("TraceSettings"), "the settings (a model's: the global ones with its own on top)")
    read_errors = _errors(404, 503)
    routes: JsonObject = {}
    targets: list[tuple[str, list[JsonValue], str]] = [
        ("/v2/trace/setting", [], "the global trace settings"),
        ("/v2/models/{model}/trace/setting", [_MODEL], "the model's trace settings"),
    ]
    for path, parameters, whose in targets:
        routes[path] = {
            "get": _operation(f"{whose} (Triton's trace extension)", parameters, {"200": settings, **read_errors}),
            "post": _operation(
                f"change {whose}: null clears a model's own value (admin scope); answers them after",
                parameters,
                {"200": settings, **_errors(400, 404, 413, 503)},
                body="TraceSettingsChange",
            ),
        }
    return routes


def _trace_schemas() -> JsonObject:
    text = _string()
    value: JsonObject = {"oneOf": [text, _array(text), {"type": "null"}]}
    document = _object(
        {
            "trace_level": _array(_string("OFF or TIMESTAMPS")),
            "trace_rate": _string("trace one request in N (an integer)"),
            "trace_count": _string("how many more requests to trace, -1 for no limit"),
            "log_frequency": text,
            "trace_file": text,
            "trace_mode": _string("opentelemetry"),
        },
        required=["trace_level", "trace_rate", "trace_count", "log_frequency", "trace_file", "trace_mode"],
    )
    change: JsonObject = {"type": "object", "additionalProperties": value}
    return {"TraceSettings": document, "TraceSettingsChange": change}


def _rollout_schemas() -> JsonObject:
    arm = _object({"version": {"type": "integer"}, "percent": {"type": "number"}}, required=["version"])
    nullable_arm: JsonObject = {"oneOf": [_ref("RolloutArm"), {"type": "null"}]}
    spec = _object(
        {
            "primary": {"type": "integer"},
            "candidates": _array(_ref("RolloutArm")),
            "shadow": nullable_arm,
            "key": {"type": ["string", "null"]},
            "steps": _array({"type": ["string", "number"]}),
            "gates": _free_form(),
        },
        required=["primary"],
    )
    status = _object(
        {
            "model": _string(),
            "plan": {"type": ["object", "null"]},
            "routing": {"type": ["object", "null"]},
            "evaluation": {"type": ["object", "null"]},
            "evidence": {"type": "object"},
        },
        required=["model", "plan", "routing", "evaluation", "evidence"],
    )
    return {
        "RolloutArm": arm,
        "RolloutSpec": spec,
        "PromoteRequest": _object({"version": {"type": "integer"}}),
        "RolloutPlan": {"allOf": [_ref("RolloutSpec"), _object({"status": {"type": "object"}})]},
        "RolloutStatus": status,
    }


def _string(description: str | None = None) -> JsonObject:
    return {"type": "string"} if description is None else {"type": "string", "description": description}


def _array(items: JsonObject) -> JsonObject:
    return {"type": "array", "items": items}


def _object(properties: JsonObject, required: Sequence[str] = ()) -> JsonObject:
    schema: JsonObject = {"type": "object"}
    if required:
        schema["required"] = list(required)
    schema["properties"] = properties
    return schema


def _free_form() -> JsonObject:
    return {"type": "object", "additionalProperties": True}


def _status_schemas() -> JsonObject:
    unready_model = _object(
        {
            "name": _string(),
            "version": _string("empty: the model as a whole"),
            "state": _string(),
            "reason": _string(),
        },
        required=["name", "version", "state", "reason"],
    )
    not_ready: JsonObject = {
        "ready": {"type": "boolean", "enum": [False]},
        "error": _string("each model that is not ready, and why"),
        "models": _array(unready_model),
    }
    return {
        "Error": _object({"error": _string("what was wrong")}, required=["error"]),
        "NotReady": _object(not_ready, required=["ready", "error", "models"]),
    }


def _metadata_schemas() -> JsonObject:
    tensor: JsonObject = {"name": _string(), "datatype": _string(), "shape": _array({"type": "integer"})}
    server: JsonObject = {"name": _string(), "version": _string(), "extensions": _array(_string())}
    model: JsonObject = {
        "name": _string(),
        "versions": _array(_string()),
        "platform": _string(),
        "inputs": _array(_ref("TensorMetadata")),
        "outputs": _array(_ref("TensorMetadata")),
        "parameters": _free_form(),
    }
    return {
        "TensorMetadata": _object(tensor, required=["name", "datatype", "shape"]),
        "ServerMetadata": _object(server, required=["name", "version", "extensions"]),
        "ModelMetadata": _object(model, required=["name", "versions", "platform", "inputs", "outputs"]),
        "ModelStats": _object({"model_stats": _array({"type": "object"})}, required=["model_stats"]),
    }


def _inference_schemas() -> JsonObject:
    infer_input: JsonObject = {
        "name": _string(),
        "datatype": {"type": "string", "enum": _DATATYPES},
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}, "maxItems": 64},
        "parameters": _free_form(),
        "data": {"type": "array", "description": "row-major values, flat or nested as the shape"},
    }
    request: JsonObject = {
        "id": _string(),
        "parameters": _free_form(),
        "inputs": _array(_ref("InferInput")),
        "outputs": _array(_ref("RequestedOutput")),
    }
    infer_output: JsonObject = {
        "name": _string(),
        "datatype": _string(),
        "shape": _array({"type": "integer"}),
        "parameters": _free_form(),
        "data": {"type": "array"},
    }
    response: JsonObject = {
        "model_name": _string(),
        "model_version": _string(),
        "id": _string(),
        "parameters": _free_form(),
        "outputs": _array(_ref("InferOutput")),
    }
    return {
        "InferInput": _object(infer_input, required=["name", "datatype", "shape"]),
        "RequestedOutput": _object({"name": _string(), "parameters": _free_form()}, required=["name"]),
        "InferRequest": _object(request, required=["inputs"]),
        "InferOutput": _object(infer_output, required=["name", "datatype", "shape"]),
        "InferResponse": _object(response, required=["model_name", "outputs"]),
    }


def _repository_schemas() -> JsonObject:
    entry: JsonObject = {"name": _string(), "version": _string(), "state": _string(), "reason": _string()}
    load_parameters: JsonObject = {
        "type": "object",
        "description": "'config': a ModelConfig as JSON; 'file:<path>': a file's bytes, base64",
        "properties": {"config": _string()},
        "additionalProperties": _string(),
    }
    return {
        "IndexRequest": _object({"ready": {"type": "boolean"}}),
        "IndexEntry": _object(entry, required=["name", "state"]),
        "LoadRequest": _object({"parameters": load_parameters}),
    }


def _schemas() -> JsonObject:
    return (
        _status_schemas()
        | _metadata_schemas()
        | _inference_schemas()
        | _repository_schemas()
        | _rollout_schemas()
        | _trace_schemas()
    )


def openapi_document() -> JsonObject:
    paths: JsonObject = {
        "/v2/health/live": _status_only("liveness", "the server is live", "not live"),
        "/v2/health/ready": {
            "get": {
                "summary": "readiness (the gRPC health service and ServerReady say the same)",
                "responses": {
                    "200": {"description": "every model serves a version (empty body, as in Triton)"},
                    "400": _json(_ref("NotReady"), "not ready: which models serve no version, and why"),
                },
            }
        },
        "/v2": {
            "get": {
                "summary": "server metadata",
                "responses": {"200": _json(_ref("ServerMetadata"), "name, version, extensions")},
            }
        },
        "/v2/models/stats": {
            "get": {
                "summary": "inference statistics of every model",
                "responses": {"200": _json(_ref("ModelStats"), "statistics")},
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "responses": {"200": {"description": "text exposition format", "content": {"text/plain": {}}}},
            }
        },
        "/openapi.json": {
            "get": {"summary": "this document", "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1")}}
        },
    }
    paths |= _model_routes("/v2/models/{model}", [_MODEL])
    paths |= _model_routes("/v2/models/{model}/versions/{version}", [_MODEL, _VERSION])
    paths |= _repository_routes("/v2/repository", [])
    paths |= _repository_routes("/v2/repository/{repository}", [_REPOSITORY])
    paths |= _rollout_routes()
    paths |= _trace_routes()
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "serve",
            "version": __version__,
            "description": "Open Inference Protocol (KServe V2) over HTTP, with Triton's extensions",
        },
        "paths": paths,
        "components": {"schemas": _schemas()},
    }
