"""Payload logs (issue 22, its second half), as users run them: `serve run --payload-log-file` with `--workers 2`,
requests over HTTP JSON, HTTP binary tensors and gRPC (raw and typed contents), then the file read back as a
KServe consumer reads it: CloudEvents, one per line.

The wire-form and redaction rules run in the test's own loop (tests/fixtures/inprocess.py); sampling, both
workers appending to one file and the SIGTERM flush run a real process.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from cloudevents.conversion import from_json
from cloudevents.http import CloudEvent

from serve.demo import write_demo_repository
from serve.protocol import grpc_service_pb2 as pb
from serve.protocol import grpc_service_pb2_grpc as pb_grpc
from tests.fixtures.clients import post_json
from tests.fixtures.inprocess import in_process
from tests.fixtures.rollout_clients import HttpInfer, binary_body, json_body
from tests.fixtures.servers import RunningServer, serving

MODEL = "tabular"
SECRET = 4242.5  # exactly representable: it would be written as it is
REQUEST = "org.kubeflow.serving.inference.request"
RESPONSE = "org.kubeflow.serving.inference.response"


def features(value: float = 0.5) -> np.ndarray:
    x = np.linspace(-1, 1, 8, dtype=np.float32).reshape(1, 8)
    x[0, 3] = value
    return x


def read_events(path: Path) -> list[dict[str, Any]]:
    lines = [line for f in sorted(path.parent.glob(path.name + "*")) for line in f.read_text().splitlines()]
    return [json.loads(line) for line in lines]


def http_json(server: Any, x: np.ndarray, request_id: str) -> None:
    body = json.loads(json_body({"features": x}))
    body["id"] = request_id
    status, _, data = server.post(f"/v2/models/{MODEL}/infer", json.dumps(body).encode(), {})
    assert status == 200, data


def http_binary(server: Any, x: np.ndarray, request_id: str) -> None:
    body, headers = binary_body({"features": x})
    status, _, data = server.post(f"/v2/models/{MODEL}/infer", body, {**headers, "x-request-id": request_id})
    assert status == 200, data


def grpc_raw(stub: pb_grpc.GRPCInferenceServiceStub, x: np.ndarray, request_id: str) -> None:
    request = pb.ModelInferRequest(model_name=MODEL, id=request_id)
    request.inputs.add(name="features", datatype="FP32", shape=list(x.shape))
    request.raw_input_contents.append(x.tobytes())
    stub.ModelInfer(request, timeout=30)


def grpc_typed(stub: pb_grpc.GRPCInferenceServiceStub, x: np.ndarray, request_id: str) -> None:
    request = pb.ModelInferRequest(model_name=MODEL, id=request_id)
    tensor = request.inputs.add(name="features", datatype="FP32", shape=list(x.shape))
    tensor.contents.fp32_contents.extend(x.ravel().tolist())
    stub.ModelInfer(request, timeout=30)


# ---- one process: what an event holds ------------------------------------------------------------------


async def test_the_four_wire_forms_log_identical_data_and_every_event_is_a_cloudevent(
    demo_repository: Path, tmp_path: Path
) -> None:
    log_file = tmp_path / "payloads.jsonl"
    x = features()
    async with in_process(demo_repository, payload_log_file=log_file) as server:
        body = json.loads(json_body({"features": x}))
        for request_id in ("json", "binary"):
            if request_id == "json":
                response = await server.http.post(
                    f"/v2/models/{MODEL}/infer", content=json.dumps({**body, "id": "json"})
                )
            else:
                raw, headers = binary_body({"features": x})
                response = await server.http.post(
                    f"/v2/models/{MODEL}/infer", content=raw, headers={**headers, "x-request-id": "binary"}
                )
            assert response.status_code == 200
        stub = server.grpc
        for request_id, typed in (("raw", False), ("typed", True)):
            request = pb.ModelInferRequest(model_name=MODEL, id=request_id)
            tensor = request.inputs.add(name="features", datatype="FP32", shape=list(x.shape))
            if typed:
                tensor.contents.fp32_contents.extend(x.ravel().tolist())
            else:
                request.raw_input_contents.append(x.tobytes())
            await stub.ModelInfer(request)
    events = read_events(log_file)
    for event in events:
        from_json(CloudEvent, json.dumps(event))  # a CloudEvent the SDK reads
    assert len({e["id"] for e in events}) == len(events) == 8
    inputs = {e["requestid"]: json.dumps(e["data"]["inputs"], sort_keys=True) for e in events if e["type"] == REQUEST}
    assert set(inputs) == {"json", "binary", "raw", "typed"}
    assert len(set(inputs.values())) == 1
    outputs = {
        e["requestid"]: json.dumps(e["data"]["outputs"], sort_keys=True) for e in events if e["type"] == RESPONSE
    }
    assert len(set(outputs.values())) == 1
    first = next(e for e in events if e["type"] == RESPONSE)
    assert (first["inferenceservicename"], first["modelname"], first["modelversion"], first["status"]) == (
        MODEL, MODEL, "1", 200,
    )  # fmt: skip


async def test_a_masked_input_never_reaches_the_log(demo_repository: Path, tmp_path: Path) -> None:
    log_file = tmp_path / "payloads.jsonl"
    async with in_process(demo_repository, payload_log_file=log_file, payload_log_redact=["features=mask"]) as server:
        body = json.loads(json_body({"features": features(SECRET)}))
        assert (await server.http.post(f"/v2/models/{MODEL}/infer", content=json.dumps(body))).status_code == 200
    text = log_file.read_text()
    assert str(SECRET) not in text
    assert "***" in text


async def test_a_refused_request_is_logged_with_its_status(demo_repository: Path, tmp_path: Path) -> None:
    log_file = tmp_path / "payloads.jsonl"
    async with in_process(demo_repository, payload_log_file=log_file, payload_log_mode="responses") as server:
        tensor = {"name": "features", "shape": [1, 8], "datatype": "FP32", "data": [0.5] * 8}
        wrong = {"id": "too-wide", "inputs": [tensor], "outputs": [{"name": "no-such-output"}]}
        assert (await server.http.post(f"/v2/models/{MODEL}/infer", content=json.dumps(wrong))).status_code == 400
    (event,) = read_events(log_file)
    assert (event["type"], event["requestid"], event["status"]) == (RESPONSE, "too-wide", 400)


# ---- as deployed: two workers, one file, 10 % sampled, stopped with SIGTERM ------------------------------


@pytest.mark.parametrize(
    "requests", [pytest.param(2_000, id="2k"), pytest.param(10_000, id="10k", marks=pytest.mark.slow)]
)
def test_a_tenth_of_the_requests_is_logged_whole_by_two_workers_into_one_file(
    demo_repository: Path, tmp_path: Path, requests: int
) -> None:
    log_file = tmp_path / "payloads.jsonl"
    args = ("--workers", "2", "--payload-log-file", str(log_file), "--payload-log-sample", "0.1",
            "--payload-log-redact", "features=hash", "--payload-log-hash-key-file", str(_key(tmp_path)))  # fmt: skip
    with serving(demo_repository, tmp_path, *args) as server:
        _send(server, requests)
        assert server.stop() == 0
    events = read_events(log_file)
    by_request: dict[str, list[str]] = defaultdict(list)
    for event in events:
        from_json(CloudEvent, json.dumps(event))
        by_request[event["requestid"]].append(event["type"])
    assert len({e["id"] for e in events}) == len(events)
    assert all(sorted(kinds) == [REQUEST, RESPONSE] for kinds in by_request.values())
    # Binomial: 4 standard deviations either side.
    expected, sigma = requests * 0.1, (requests * 0.1 * 0.9) ** 0.5
    assert abs(len(by_request) - expected) <= 4 * sigma
    assert str(SECRET) not in log_file.read_text()
    assert Counter(e["sampledrate"] for e in events) == Counter({10: len(events)})  # each stands for 10


def _key(tmp_path: Path) -> Path:
    key = tmp_path / "hmac.key"
    key.write_bytes(b"a key only the log's readers hold\n")
    return key


def _send(server: RunningServer, requests: int) -> None:
    channel = grpc.insecure_channel(server.grpc_url, options=[("grpc.use_local_subchannel_pool", 1)])
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    x = features(SECRET)

    def one(i: int) -> None:
        form = i % 4
        if form < 2:
            client = HttpInfer(server, fresh=True)  # each connection accepted by either worker
            (http_json if form == 0 else http_binary)(client, x, f"r{i}")
            client.close()
        else:
            (grpc_raw if form == 2 else grpc_typed)(stub, x, f"r{i}")

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(requests)))
    channel.close()


# ---- as deployed: a model's own settings in its config.pbtxt, headers and classification from the flags ---------


def test_a_models_config_parameters_shape_its_events_and_leave_another_models_to_the_flags(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    write_demo_repository(tmp_path / "demo")
    for name in ("tabular", "plain"):
        shutil.copytree(tmp_path / "demo" / "tabular", root / name)
    plain = root / "plain" / "config.pbtxt"
    plain.write_text(plain.read_text().replace('name: "tabular"', 'name: "plain"'))
    with (root / "tabular" / "config.pbtxt").open("a") as config:
        for key, value in (("payload_log_mode", "requests"), ("payload_log_redact", "features=mask"),
                           ("payload_log_data_classification", "restricted")):  # fmt: skip
            config.write(f'parameters {{ key: "{key}" value {{ string_value: "{value}" }} }}\n')
    log_file = tmp_path / "payloads.jsonl"
    args = ("--payload-log-file", str(log_file), "--payload-log-headers", "x-tenant",
            "--payload-log-data-classification", "internal")  # fmt: skip
    tensor = {"name": "features", "shape": [1, 8], "datatype": "FP32", "data": features(SECRET).ravel().tolist()}
    with serving(root, tmp_path, *args) as server:
        for model in ("tabular", "plain"):
            headers = {"x-tenant": "acme", "authorization": "Bearer never-logged"}
            body = {"id": f"{model}-1", "inputs": [tensor]}
            response = post_json(server.http_port, f"/v2/models/{model}/infer", body, headers)
            assert response.status == 200, response.error()
        assert server.stop() == 0
    events = read_events(log_file)
    summary = sorted((e["modelname"], e["type"], e["dataclassification"], e["metadata"]) for e in events)
    tenant = '{"x-tenant":["acme"]}'
    assert summary == [
        ("plain", REQUEST, "internal", tenant),
        ("plain", RESPONSE, "internal", tenant),
        ("tabular", REQUEST, "restricted", tenant),
    ]
    inputs = {e["modelname"]: e["data"]["inputs"][0]["data"] for e in events if e["type"] == REQUEST}
    assert set(inputs["tabular"]) == {"***"} and SECRET in inputs["plain"]
    assert "never-logged" not in log_file.read_text()


def test_serve_run_refuses_to_start_when_the_header_allowlist_names_a_credential(
    demo_repository: Path, tmp_path: Path
) -> None:
    log_file = str(tmp_path / "payloads.jsonl")
    args = [sys.executable, "-m", "serve", "run", "--model-repository", str(demo_repository),
            "--payload-log-file", log_file, "--payload-log-headers", "x-tenant,Authorization"]  # fmt: skip
    done = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "--payload-log-headers 'Authorization': credentials are never logged" in done.stderr + done.stdout
