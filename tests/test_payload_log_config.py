"""Payload logs configured per model (config.pbtxt ``parameters``) and by the flags this round adds: the header
allowlist, dataclassification, the traceparent of each event. The server runs in the test's own loop
(tests/fixtures/inprocess.py); the HTTP sink's binary mode is in tests/test_payload_sinks.py."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from serve.demo import write_demo_repository
from serve.events import RequestEvent
from serve.payload_log.options import header_allowlist, payload_log_options
from serve.payload_log.queue import EventQueue
from serve.payload_log.sampling import sampled
from serve.payload_log.wiring import PayloadLogger, payload_logger
from serve.protocol import grpc_service_pb2 as pb
from serve.protocol import model_config_pb2 as mc
from serve.repository.model_version import ModelVersion
from serve.settings import ServerSettings
from serve.types import TensorSpec
from tests.fixtures.inprocess import InProcess, in_process

MODEL, OTHER = "tabular", "plain"  # two copies of the demo's tabular model; only MODEL gets parameters
REQUEST = "org.kubeflow.serving.inference.request"
SECRET = 4242.5
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def repository(tmp_path: Path, **parameters: str) -> Path:
    """The demo's tabular model as MODEL (with ``parameters`` in its config.pbtxt) and as OTHER (without)."""
    demo, root = tmp_path / "demo", tmp_path / "repo"
    write_demo_repository(demo)
    shutil.copytree(demo / "tabular", root / MODEL)
    shutil.copytree(demo / "tabular", root / OTHER)
    other_config = root / OTHER / "config.pbtxt"
    other_config.write_text(other_config.read_text().replace(f'name: "{MODEL}"', f'name: "{OTHER}"'))
    entries = "".join(
        f'parameters {{ key: "{key}" value {{ string_value: "{value}" }} }}\n' for key, value in parameters.items()
    )
    with (root / MODEL / "config.pbtxt").open("a") as config:
        config.write(entries)
    return root


def body(request_id: str, value: float = 0.5) -> str:
    data = np.linspace(-1, 1, 8, dtype=np.float32)
    data[3] = value
    tensor = {"name": "features", "shape": [1, 8], "datatype": "FP32", "data": data.tolist()}
    return json.dumps({"id": request_id, "inputs": [tensor]})


async def infer(server: InProcess, model: str, request_id: str, headers: dict[str, str] | None = None) -> None:
    response = await server.http.post(f"/v2/models/{model}/infer", content=body(request_id, SECRET), headers=headers)
    assert response.status_code == 200, response.text


def read_events(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


async def index(server: InProcess) -> dict[str, dict[str, str]]:
    response = await server.http.post("/v2/repository/index")
    return {entry["name"]: entry for entry in response.json()}


# ---- per-model settings --------------------------------------------------------------------------------------


async def test_a_model_with_mode_none_is_not_logged_and_another_model_still_is(tmp_path: Path) -> None:
    log_file = tmp_path / "events.jsonl"
    async with in_process(repository(tmp_path, payload_log_mode="none"), payload_log_file=log_file) as server:
        await infer(server, MODEL, "quiet")
        await infer(server, OTHER, "logged")
    assert {(e["modelname"], e["requestid"]) for e in read_events(log_file)} == {(OTHER, "logged")}


async def test_a_models_mode_replaces_the_servers_for_that_model_only(tmp_path: Path) -> None:
    log_file = tmp_path / "events.jsonl"
    async with in_process(repository(tmp_path, payload_log_mode="requests"), payload_log_file=log_file) as server:
        await infer(server, MODEL, "a")
        await infer(server, OTHER, "b")
    kinds = sorted((e["modelname"], e["type"].rsplit(".", 1)[1]) for e in read_events(log_file))
    assert kinds == [(OTHER, "request"), (OTHER, "response"), (MODEL, "request")]


async def test_a_models_sample_rate_applies_to_that_model_only(tmp_path: Path) -> None:
    log_file = tmp_path / "events.jsonl"
    ids = [f"r{i}" for i in range(40)]
    async with in_process(repository(tmp_path, payload_log_sample="0.5"), payload_log_file=log_file) as server:
        for request_id in ids:
            await infer(server, MODEL, f"{MODEL}-{request_id}")
            await infer(server, OTHER, f"{OTHER}-{request_id}")
    events = read_events(log_file)
    logged = {e["requestid"] for e in events}
    assert {i for i in logged if i.startswith(MODEL)} == {f"{MODEL}-{i}" for i in ids if sampled(f"{MODEL}-{i}", 0.5)}
    assert {i for i in logged if i.startswith(OTHER)} == {f"{OTHER}-{i}" for i in ids}
    assert {e["modelname"]: e["sampledrate"] for e in events} == {MODEL: 2, OTHER: 1}


async def test_a_models_redaction_applies_to_that_model_only(tmp_path: Path) -> None:
    log_file = tmp_path / "events.jsonl"
    async with in_process(
        repository(tmp_path, payload_log_redact="features=mask"), payload_log_file=log_file
    ) as server:
        await infer(server, MODEL, "masked")
        await infer(server, OTHER, "plain")
    inputs = {e["modelname"]: e["data"]["inputs"][0]["data"] for e in read_events(log_file) if e["type"] == REQUEST}
    assert set(inputs[MODEL]) == {"***"}
    assert SECRET in inputs[OTHER]


async def test_a_models_redaction_is_added_to_the_servers_and_wins_for_the_same_input(tmp_path: Path) -> None:
    log_file = tmp_path / "events.jsonl"
    root = repository(tmp_path, payload_log_redact="features=drop")
    async with in_process(root, payload_log_file=log_file, payload_log_redact=["features=mask"]) as server:
        await infer(server, MODEL, "dropped")
        await infer(server, OTHER, "masked")
    inputs = {e["modelname"]: e["data"]["inputs"] for e in read_events(log_file) if e["type"] == REQUEST}
    assert inputs[MODEL] == []
    assert set(inputs[OTHER][0]["data"]) == {"***"}


@pytest.mark.parametrize(
    ("key", "value", "allowed"),
    [
        ("payload_log_mode", "everything", "allowed: requests, responses, all, none"),
        ("payload_log_sample", "1.5", "allowed: a number from 0 to 1"),
        ("payload_log_sample", "often", "allowed: a number from 0 to 1"),
        ("payload_log_redact", "features=blur", "allowed: INPUT[=drop|hash|mask],..."),
        ("payload_log_data_classification", "secret", "allowed: public, internal, confidential, restricted"),
    ],
)
async def test_a_bad_parameter_refuses_the_load_naming_the_key_the_value_and_what_is_allowed(
    tmp_path: Path, key: str, value: str, allowed: str
) -> None:
    root = repository(tmp_path, **{key: value})
    async with in_process(root, payload_log_file=tmp_path / "events.jsonl") as server:
        models = await index(server)
    assert models[MODEL]["state"] == "UNAVAILABLE"
    assert f"config parameter '{key}' is '{value}'" in models[MODEL]["reason"]
    assert allowed in models[MODEL]["reason"]
    assert models[OTHER]["state"] == "READY"


async def test_a_bad_parameter_refuses_the_load_on_a_server_with_no_sink_too(tmp_path: Path) -> None:
    async with in_process(repository(tmp_path, payload_log_mode="everything")) as server:
        models = await index(server)
    assert models[MODEL]["state"] == "UNAVAILABLE"
    assert "payload_log_mode" in models[MODEL]["reason"]


async def test_hashing_in_a_model_without_the_servers_key_file_refuses_the_load_naming_the_flag(
    tmp_path: Path,
) -> None:
    root = repository(tmp_path, payload_log_redact="features=hash")
    async with in_process(root, payload_log_file=tmp_path / "events.jsonl") as server:
        models = await index(server)
    assert "--payload-log-hash-key-file" in models[MODEL]["reason"]


async def test_a_model_asking_for_logs_on_a_server_with_no_sink_is_warned_once_naming_the_flags(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="serve.payload_log.wiring")
    async with in_process(repository(tmp_path, payload_log_sample="0.1")) as server:
        await infer(server, MODEL, "unlogged")
        assert (await index(server))[MODEL]["state"] == "READY"
    warnings = [r.getMessage() for r in caplog.records if r.name == "serve.payload_log.wiring"]
    assert len(warnings) == 1
    assert MODEL in warnings[0] and "--payload-log-file" in warnings[0] and "--payload-log-url" in warnings[0]


async def test_a_model_switching_logs_off_on_a_server_with_no_sink_is_not_warned(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="serve.payload_log.wiring")
    async with in_process(repository(tmp_path, payload_log_mode="none")):
        pass
    assert not [r for r in caplog.records if r.name == "serve.payload_log.wiring"]


# ---- the header allowlist ------------------------------------------------------------------------------------


async def test_an_allowlisted_http_header_is_logged_in_the_metadata_extension_and_others_are_not(
    tmp_path: Path,
) -> None:
    log_file = tmp_path / "events.jsonl"
    async with in_process(repository(tmp_path), payload_log_file=log_file, payload_log_headers=["X-Tenant"]) as server:
        headers = {"x-tenant": "acme", "authorization": "Bearer s3cret", "x-other": "nope"}
        await infer(server, MODEL, "with-headers", headers)
    events = read_events(log_file)
    assert [json.loads(e["metadata"]) for e in events] == [{"x-tenant": ["acme"]}] * 2
    assert "s3cret" not in log_file.read_text() and "nope" not in log_file.read_text()


async def test_an_allowlisted_grpc_metadata_key_is_logged_in_the_metadata_extension(tmp_path: Path) -> None:
    log_file = tmp_path / "events.jsonl"
    async with in_process(repository(tmp_path), payload_log_file=log_file, payload_log_headers=["x-tenant"]) as server:
        request = pb.ModelInferRequest(model_name=MODEL, id="grpc")
        request.inputs.add(name="features", datatype="FP32", shape=[1, 8]).contents.fp32_contents.extend([0.5] * 8)
        await server.grpc.ModelInfer(request, metadata=(("x-tenant", "acme"), ("authorization", "Bearer s3cret")))
    assert {e["metadata"] for e in read_events(log_file)} == {'{"x-tenant":["acme"]}'}


async def test_an_allowlisted_header_the_request_lacks_gives_an_empty_metadata_object(tmp_path: Path) -> None:
    log_file = tmp_path / "events.jsonl"
    async with in_process(repository(tmp_path), payload_log_file=log_file, payload_log_headers=["x-tenant"]) as server:
        await infer(server, MODEL, "no-tenant")
    assert {e["metadata"] for e in read_events(log_file)} == {"{}"}


async def test_without_an_allowlist_events_have_no_metadata_extension(tmp_path: Path) -> None:
    log_file = tmp_path / "events.jsonl"
    async with in_process(repository(tmp_path), payload_log_file=log_file) as server:
        await infer(server, MODEL, "plain", {"x-tenant": "acme"})
    assert all("metadata" not in e for e in read_events(log_file))


@pytest.mark.parametrize("name", ["authorization", "Cookie", "proxy-authorization", "X-API-Key"])
def test_credentials_in_the_header_allowlist_are_refused_at_start(tmp_path: Path, name: str) -> None:
    settings = ServerSettings(payload_log_file=tmp_path / "events.jsonl", payload_log_headers=[f"x-tenant,{name}"])
    with pytest.raises(ValueError, match=f"--payload-log-headers '{name}': credentials are never logged"):
        payload_logger(settings, CollectorRegistry())


def test_the_header_allowlist_takes_comma_separated_repeated_flags_lower_cased_once_each() -> None:
    assert header_allowlist(["X-Tenant,x-region", "x-tenant", " x-user ,"]) == ("x-tenant", "x-region", "x-user")


def test_a_header_allowlist_entry_that_is_no_header_name_is_refused() -> None:
    with pytest.raises(ValueError, match="'x tenant' is not a header name"):
        header_allowlist(["x tenant"])


# ---- dataclassification --------------------------------------------------------------------------------------


async def test_the_data_classification_flag_is_set_on_every_event(tmp_path: Path) -> None:
    log_file = tmp_path / "events.jsonl"
    root = repository(tmp_path)
    async with in_process(root, payload_log_file=log_file, payload_log_data_classification="confidential") as server:
        await infer(server, MODEL, "a")
        await infer(server, OTHER, "b")
    events = read_events(log_file)
    assert len(events) == 4
    assert {e["dataclassification"] for e in events} == {"confidential"}


async def test_a_models_data_classification_overrides_the_flag_for_that_model(tmp_path: Path) -> None:
    log_file = tmp_path / "events.jsonl"
    root = repository(tmp_path, payload_log_data_classification="restricted")
    async with in_process(root, payload_log_file=log_file, payload_log_data_classification="internal") as server:
        await infer(server, MODEL, "a")
        await infer(server, OTHER, "b")
    assert {e["modelname"]: e["dataclassification"] for e in read_events(log_file)} == {
        MODEL: "restricted",
        OTHER: "internal",
    }


# ---- traceparent ---------------------------------------------------------------------------------------------


def test_an_events_traceparent_is_the_requests_and_an_untraced_request_has_none() -> None:
    lines: list[bytes] = []
    logger = _logger(lines)
    version = _version()
    logger.attached(version)
    for request_id, traceparent in (("traced", TRACEPARENT), ("untraced", "")):
        logger.on_request(_event(version, request_id, traceparent))
    assert logger.close()
    events = {(e["requestid"], e["type"]): e for e in map(json.loads, lines)}
    assert {k: e.get("traceparent") for k, e in events.items()} == {
        ("traced", REQUEST): TRACEPARENT,
        ("traced", "org.kubeflow.serving.inference.response"): TRACEPARENT,
        ("untraced", REQUEST): None,
        ("untraced", "org.kubeflow.serving.inference.response"): None,
    }


async def test_a_reloaded_version_is_still_logged_after_its_previous_load_detaches() -> None:
    lines: list[bytes] = []
    logger = _logger(lines)
    old, new = _version(), _version()  # the same version loaded twice: the reload attaches before the old detaches
    logger.attached(old)
    logger.attached(new)
    await logger.detached(old)
    logger.on_request(_event(old, "to-the-old-load", ""))
    logger.on_request(_event(new, "to-the-reload", ""))
    assert logger.close()
    assert {json.loads(line)["requestid"] for line in lines} == {"to-the-reload"}


class _ListSink:
    def __init__(self, lines: list[bytes]) -> None:
        self.lines = lines

    def write_batch(self, lines: list[bytes]) -> None:
        self.lines.extend(lines)

    def close(self) -> None:
        return None


def _logger(lines: list[bytes]) -> PayloadLogger:
    options = payload_log_options(ServerSettings())
    return PayloadLogger(options, EventQueue(_ListSink(lines)), lambda reason, count: None)


def _version() -> ModelVersion:
    version = ModelVersion("m", 1, Path("."), config=mc.ModelConfig(name="m"))
    version.inputs = [TensorSpec("x", "FP32", (1,))]
    version.outputs = [TensorSpec("y", "FP32", (1,))]
    return version


def _event(version: ModelVersion, request_id: str, traceparent: str) -> RequestEvent:
    x = {"x": np.ones((1, 1), np.float32)}
    return RequestEvent(
        version.key, "http", "success", 1, request_id=request_id, inputs=x, outputs=x, traceparent=traceparent
    )
