"""The HTTP API as an OpenAPI 3.1 document, served at ``GET /openapi.json``.

It describes what clients send and what every route answers, errors included (``{"error":
message}``). Triton's shared-memory, trace and logging endpoints, which answer 501 naming the
extension, are left out: there is nothing to call. The document is checked against the server by
schemathesis (tests/test_openapi_api.py).
"""

from __future__ import annotations

from typing import Any

from serve import __version__

JSON = "application/json"

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "string", "description": "what was wrong"}},
}
_DATATYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64"]
_DATATYPES += ["FP16", "FP32", "FP64", "BF16", "BYTES"]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
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


_MODEL = {"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}
_VERSION = {"name": "version", "in": "path", "required": True, "schema": {"type": "string"}}
_REPOSITORY = {"name": "repository", "in": "path", "required": True, "schema": {"type": "string"}}


def _status_only(summary: str, ok: str, not_ok: str) -> dict[str, Any]:
    return {"get": {"summary": summary, "responses": {"200": {"description": ok}, "400": {"description": not_ok}}}}


def _model_routes(prefix: str, parameters: list[Any]) -> dict[str, Any]:
    lookup = _errors(400, 404, 503)
    return {
        prefix: {
            "get": {
                "summary": "model metadata",
                "parameters": parameters,
                "responses": {"200": _json(_ref("ModelMetadata"), "the model's inputs and outputs"), **lookup},
            }
        },
        prefix + "/ready": {
            "get": {
                "summary": "model readiness",
                "parameters": parameters,
                "responses": {
                    "200": {"description": "ready (empty body, as in Triton)"},
                    "400": _json(_ref("Error"), "not ready or no such model ('error' says why), or a bad version"),
                },
            }
        },
        prefix + "/config": {
            "get": {
                "summary": "model configuration (Triton's ModelConfig as JSON)",
                "parameters": parameters,
                "responses": {"200": _json({"type": "object"}, "the configuration"), **lookup},
            }
        },
        prefix + "/stats": {
            "get": {
                "summary": "inference statistics (Triton's statistics extension)",
                "parameters": parameters,
                "responses": {"200": _json(_ref("ModelStats"), "statistics"), **lookup},
            }
        },
        prefix + "/infer": {
            "post": {
                "summary": "inference (JSON; binary tensors with Inference-Header-Content-Length)",
                "parameters": parameters,
                "requestBody": {"required": True, "content": {JSON: {"schema": _ref("InferRequest")}}},
                "responses": {
                    "200": _json(_ref("InferResponse"), "the outputs"),
                    **_errors(400, 404, 413, 429, 499, 501, 503, 504),
                },
            }
        },
        prefix + "/input-stats": {
            "get": {
                "summary": "input and output statistics windows (MONITOR.md)",
                "parameters": [
                    *parameters,
                    {"name": "since", "in": "query", "required": False, "schema": {"type": "string"}},
                ],
                "responses": {"200": _json({"type": "object"}, "the statistics document"), **lookup},
            }
        },
        prefix + "/baseline": {
            "get": {
                "summary": "the baseline.json the model's statistics bin against",
                "parameters": parameters,
                "responses": {"200": _json({"type": "object"}, "the baseline, as stored"), **lookup},
            }
        },
    }


def _repository_routes(prefix: str, parameters: list[Any]) -> dict[str, Any]:
    model = [*parameters, _MODEL]
    control = _errors(400, 404, 413, 503)
    return {
        prefix + "/index": {
            "post": {
                "summary": "the models in the repository and their state",
                "parameters": parameters,
                "requestBody": {"required": False, "content": {JSON: {"schema": _ref("IndexRequest")}}},
                "responses": {"200": _json({"type": "array", "items": _ref("IndexEntry")}, "one row per version")}
                | _errors(400, 413),
            }
        },
        prefix + "/models/{model}/load": {
            "post": {
                "summary": "load or reload a model (--model-control-mode explicit)",
                "parameters": model,
                "requestBody": {"required": False, "content": {JSON: {"schema": _ref("LoadRequest")}}},
                "responses": {"200": {"description": "loaded"}, **control},
            }
        },
        prefix + "/models/{model}/unload": {
            "post": {
                "summary": "unload a model (--model-control-mode explicit)",
                "parameters": model,
                "responses": {"200": {"description": "unloaded"}, **control},
            }
        },
    }


def _schemas() -> dict[str, Any]:
    tensor_metadata = {
        "type": "object",
        "required": ["name", "datatype", "shape"],
        "properties": {
            "name": {"type": "string"},
            "datatype": {"type": "string"},
            "shape": {"type": "array", "items": {"type": "integer"}},
        },
    }
    parameters = {"type": "object", "additionalProperties": True}
    return {
        "Error": _ERROR,
        "NotReady": {
            "type": "object",
            "required": ["ready", "error", "models"],
            "properties": {
                "ready": {"type": "boolean", "enum": [False]},
                "error": {"type": "string", "description": "each model that is not ready, and why"},
                "models": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["name", "version", "state", "reason"],
                        "properties": {
                            "name": {"type": "string"},
                            "version": {"type": "string", "description": "empty: the model as a whole"},
                            "state": {"type": "string"},
                            "reason": {"type": "string"},
                        },
                    },
                },
            },
        },
        "TensorMetadata": tensor_metadata,
        "ServerMetadata": {
            "type": "object",
            "required": ["name", "version", "extensions"],
            "properties": {
                "name": {"type": "string"},
                "version": {"type": "string"},
                "extensions": {"type": "array", "items": {"type": "string"}},
            },
        },
        "ModelMetadata": {
            "type": "object",
            "required": ["name", "versions", "platform", "inputs", "outputs"],
            "properties": {
                "name": {"type": "string"},
                "versions": {"type": "array", "items": {"type": "string"}},
                "platform": {"type": "string"},
                "inputs": {"type": "array", "items": _ref("TensorMetadata")},
                "outputs": {"type": "array", "items": _ref("TensorMetadata")},
                "parameters": parameters,
            },
        },
        "ModelStats": {
            "type": "object",
            "required": ["model_stats"],
            "properties": {"model_stats": {"type": "array", "items": {"type": "object"}}},
        },
        "InferInput": {
            "type": "object",
            "required": ["name", "datatype", "shape"],
            "properties": {
                "name": {"type": "string"},
                "datatype": {"type": "string", "enum": _DATATYPES},
                "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}, "maxItems": 64},
                "parameters": parameters,
                "data": {"type": "array", "description": "row-major values, flat or nested as the shape"},
            },
        },
        "RequestedOutput": {
            "type": "object",
            "required": ["name"],
            "properties": {"name": {"type": "string"}, "parameters": parameters},
        },
        "InferRequest": {
            "type": "object",
            "required": ["inputs"],
            "properties": {
                "id": {"type": "string"},
                "parameters": parameters,
                "inputs": {"type": "array", "items": _ref("InferInput")},
                "outputs": {"type": "array", "items": _ref("RequestedOutput")},
            },
        },
        "InferOutput": {
            "type": "object",
            "required": ["name", "datatype", "shape"],
            "properties": {
                "name": {"type": "string"},
                "datatype": {"type": "string"},
                "shape": {"type": "array", "items": {"type": "integer"}},
                "parameters": parameters,
                "data": {"type": "array"},
            },
        },
        "InferResponse": {
            "type": "object",
            "required": ["model_name", "outputs"],
            "properties": {
                "model_name": {"type": "string"},
                "model_version": {"type": "string"},
                "id": {"type": "string"},
                "parameters": parameters,
                "outputs": {"type": "array", "items": _ref("InferOutput")},
            },
        },
        "IndexRequest": {"type": "object", "properties": {"ready": {"type": "boolean"}}},
        "IndexEntry": {
            "type": "object",
            "required": ["name", "state"],
            "properties": {
                "name": {"type": "string"},
                "version": {"type": "string"},
                "state": {"type": "string"},
                "reason": {"type": "string"},
            },
        },
        "LoadRequest": {
            "type": "object",
            "properties": {
                "parameters": {
                    "type": "object",
                    "description": "'config': a ModelConfig as JSON; 'file:<path>': a file's bytes, base64",
                    "properties": {"config": {"type": "string"}},
                    "additionalProperties": {"type": "string"},
                }
            },
        },
    }


def openapi_document() -> dict[str, Any]:
    paths: dict[str, Any] = {
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
