"""Issue 21's "Done when", as a user runs it: a real `serve run --workers 2` on loopback, predictions over HTTP
JSON (the client's own ids), HTTP binary and gRPC (ids the server minted, read from the `x-request-id` header and
`ModelInferResponse.id`), two versions of a classifier 50/50 and a regressor, batches of 1–8 rows; then labels for
60 % of the rows, shuffled, 1–120 s late (their `time`), with duplicates, unknown ids and expired ids, over HTTP and
gRPC, each call reaching whichever worker takes it. The server's performance document, and `serve monitor --once
--format json`, must equal scikit-learn on the true join.

CI runs 2,000 predictions; SERVE_SLOW_TESTS=1 runs the issue's 10,000.
"""

from __future__ import annotations

import http.client
import json
import random
import subprocess
import sys
import threading
import time
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, mean_absolute_error, roc_auc_score

from serve.ground_truth.document import merge_windows
from serve.ground_truth.performance import merged
from serve.ground_truth.realized import realized
from serve.protocol import grpc_service_pb2 as pb
from serve.protocol import grpc_service_pb2_grpc as pb_grpc
from serve.protocol import serve_monitoring_pb2 as mon
from serve.protocol import serve_monitoring_pb2_grpc as mon_grpc
from tests.fixtures.ground_truth_models import (
    CLASSIFIER,
    INPUT,
    PROBABILITIES,
    REGRESSOR,
    VALUE,
    LabelledData,
    cancer_data,
    diabetes_data,
    write_ground_truth_repository,
)
from tests.fixtures.rollout_clients import binary_body, json_body
from tests.fixtures.servers import HOST, RunningServer, serving

WORKERS = 2
PROTOCOLS = ("http-json", "http-binary", "grpc")
THREADS = 8
LABELLED_SHARE = 0.6
OLD_PREDICTIONS = 20  # regressor predictions pushed out of the join store before their labels come
UNKNOWN_LABELS = 50
DUPLICATE_LABELS = 100
TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Prediction:
    model: str
    version: str
    request_id: str
    rows: np.ndarray  # indices into the model's data set
    outputs: np.ndarray  # probabilities (rows x 2) or values (rows)


class Client:
    """One thread's HTTP connection and gRPC channel."""

    def __init__(self, server: RunningServer) -> None:
        self.http = http.client.HTTPConnection(HOST, server.http_port, timeout=TIMEOUT_S)
        self.channel = grpc.insecure_channel(server.grpc_url, options=[("grpc.use_local_subchannel_pool", 1)])
        self.inference = pb_grpc.GRPCInferenceServiceStub(self.channel)
        self.monitoring = mon_grpc.MonitoringStub(self.channel)

    def post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        self.http.request("POST", path, body=body, headers=headers)
        response = self.http.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()

    def close(self) -> None:
        self.http.close()
        self.channel.close()


def _output_name(model: str) -> str:
    return PROBABILITIES if model == CLASSIFIER else VALUE


def predict(client: Client, protocol: str, model: str, x: np.ndarray, client_id: str) -> tuple[str, str, np.ndarray]:
    """(version, request id, the prediction's output) of one request."""
    name = _output_name(model)
    if protocol == "grpc":
        request = pb.ModelInferRequest(model_name=model)
        request.inputs.add(name=INPUT, datatype="FP32", shape=list(x.shape))
        request.raw_input_contents.append(np.ascontiguousarray(x).tobytes())
        answer = client.inference.ModelInfer(request, timeout=TIMEOUT_S)
        index = [o.name for o in answer.outputs].index(name)
        out = np.frombuffer(answer.raw_output_contents[index], np.float32).reshape(list(answer.outputs[index].shape))
        return answer.model_version, answer.id, out
    if protocol == "http-binary":
        body, headers = binary_body({INPUT: x})
        status, response_headers, data = client.post(f"/v2/models/{model}/infer", body, headers)
        assert status == 200, data[:300]
        head_length = int(response_headers["inference-header-content-length"])
        document = json.loads(data[:head_length])
        offset = head_length
        for output in document["outputs"]:
            size = int(output["parameters"]["binary_data_size"])
            if output["name"] == name:
                out = np.frombuffer(data[offset : offset + size], np.float32).reshape(output["shape"])
            offset += size
        return str(document["model_version"]), response_headers["x-request-id"], out
    document_body = json.loads(json_body({INPUT: x}))
    document_body["id"] = client_id
    status, _, data = client.post(
        f"/v2/models/{model}/infer", json.dumps(document_body).encode(), {"Content-Type": "application/json"}
    )
    assert status == 200, data[:300]
    document = json.loads(data)
    output = next(o for o in document["outputs"] if o["name"] == name)
    return (
        str(document["model_version"]),
        document["id"],
        np.asarray(output["data"], np.float32).reshape(output["shape"]),
    )


@pytest.fixture
def clients_of() -> Iterator[Any]:
    made: list[Client] = []
    local = threading.local()

    def client(server: RunningServer) -> Client:
        if not hasattr(local, "client"):
            local.client = Client(server)
            made.append(local.client)
        c: Client = local.client
        return c

    yield client
    for c in made:
        c.close()


def send_predictions(server: RunningServer, count: int, clients_of: Any, seed: int) -> list[Prediction]:
    cancer, diabetes = cancer_data(), diabetes_data()
    rng = random.Random(seed)
    plan = []
    for i in range(count):
        model, data = (REGRESSOR, diabetes) if i % 10 == 9 else (CLASSIFIER, cancer)
        rows = np.asarray(rng.sample(range(len(data.x)), rng.randint(1, 8)))
        plan.append((PROTOCOLS[i % len(PROTOCOLS)], model, data, rows, f"client-{seed}-{i}"))

    def one(item: tuple[str, str, LabelledData, np.ndarray, str]) -> Prediction:
        protocol, model, data, rows, client_id = item
        version, request_id, out = predict(clients_of(server), protocol, model, data.x[rows], client_id)
        return Prediction(model, version, request_id, rows, out if model == CLASSIFIER else out.reshape(-1))

    with ThreadPoolExecutor(THREADS) as pool:
        return list(pool.map(one, plan))


def send_labels(server: RunningServer, labels: list[dict[str, Any]], clients_of: Any) -> dict[str, int]:
    """Labels of one model in calls of 500, every other call over gRPC; the summed answers."""
    chunks = [labels[i : i + 500] for i in range(0, len(labels), 500)]

    def one(indexed: tuple[int, list[dict[str, Any]]]) -> dict[str, int]:
        index, chunk = indexed
        client = clients_of(server)
        model = chunk[0]["model"]
        if index % 2:
            request = mon.FeedbackRequest(model_name=model)
            for label in chunk:
                item = request.labels.add(id=label["id"], row=label["row"], time=label["time"])
                if "value" in label:
                    item.value = label["value"]
                else:
                    item.label = label["label"]
            answer = client.monitoring.Feedback(request, timeout=TIMEOUT_S)
            return {k: getattr(answer, k) for k in ("joined", "unknown", "expired", "duplicate", "conflicting")}
        body = json.dumps([{k: v for k, v in label.items() if k != "model"} for label in chunk]).encode()
        status, _, data = client.post(f"/v2/models/{model}/feedback", body, {"Content-Type": "application/json"})
        assert status == 200, data[:300]
        counts: dict[str, int] = json.loads(data)
        return counts

    totals: dict[str, int] = defaultdict(int)
    with ThreadPoolExecutor(4) as pool:
        for counts in pool.map(one, enumerate(chunks)):
            for key, value in counts.items():
                totals[key] += value
    return dict(totals)


def performance(server: RunningServer, model: str) -> Any:
    with urllib.request.urlopen(f"{server.base}/v2/models/{model}/performance", timeout=TIMEOUT_S) as response:
        return json.loads(response.read())


def realized_of(document: Any, version: str) -> Any:
    entry = next(v for v in document["versions"] if v["version"] == version)
    total = merged(merge_windows(entry["windows"]))
    assert total is not None
    return realized(total), total


@pytest.mark.parametrize(
    "predictions", [pytest.param(2_000, id="2k"), pytest.param(10_000, id="10k", marks=pytest.mark.slow)]
)
def test_labels_joined_across_workers_equal_scikit_learn_on_the_true_join(
    tmp_path: Path, clients_of: Any, predictions: int
) -> None:
    root = write_ground_truth_repository(tmp_path / "models", split=True)
    # Room for all the main phase's rows of a version on one worker (~2.03 rows a prediction at worst).
    max_rows = predictions * 5 // 2
    cancer, diabetes = cancer_data(), diabetes_data()
    with serving(root, tmp_path, "--workers", str(WORKERS), "--feedback-max-rows", str(max_rows)) as server:
        # One kept-alive connection reaches one worker: the old predictions and the rows that push them out of
        # its join store (max_rows and then some) all go to the same one.
        client = Client(server)
        old = [f"old-{i}" for i in range(OLD_PREDICTIONS)]
        for request_id in old:
            predict(client, "http-json", REGRESSOR, diabetes.x[:1], request_id)
        for i in range(max_rows // 64 + 2):
            predict(client, "http-json", REGRESSOR, diabetes.x[:64], f"push-{i}")
        made = send_predictions(server, predictions, clients_of, seed=21)

        rng = random.Random(7)
        now = time.time()
        labels: list[dict[str, Any]] = []
        chosen: dict[tuple[str, str], list[tuple[Prediction, int]]] = defaultdict(list)
        for model in (CLASSIFIER, REGRESSOR):
            by_version: dict[str, list[tuple[Prediction, int]]] = defaultdict(list)
            for p in made:
                if p.model == model:
                    by_version[p.version] += [(p, r) for r in range(len(p.rows))]
            for version, rows in by_version.items():
                picked = rng.sample(rows, round(LABELLED_SHARE * len(rows)))
                chosen[(model, version)] = picked
                for p, r in picked:
                    truth = cancer.y[p.rows[r]] if model == CLASSIFIER else diabetes.y[p.rows[r]]
                    label: dict[str, Any] = {"model": model, "id": p.request_id, "row": r,
                                             "time": now + rng.uniform(1, 120)}  # fmt: skip
                    label["label" if model == CLASSIFIER else "value"] = (
                        int(truth) if model == CLASSIFIER else float(truth)
                    )
                    labels.append(label)
        duplicates = rng.sample([lab for lab in labels if lab["model"] == CLASSIFIER], DUPLICATE_LABELS)
        unknown = [{"model": CLASSIFIER, "id": f"unknown-{i}", "row": 0, "label": 1, "time": now}
                   for i in range(UNKNOWN_LABELS)]  # fmt: skip
        expired = [{"model": REGRESSOR, "id": i, "row": 0, "value": 1.0, "time": now} for i in old]
        classifier_labels = [lab for lab in labels if lab["model"] == CLASSIFIER] + unknown
        rng.shuffle(classifier_labels)
        regressor_labels = [lab for lab in labels if lab["model"] == REGRESSOR] + expired
        rng.shuffle(regressor_labels)

        first = send_labels(server, classifier_labels, clients_of)
        second = send_labels(server, [*duplicates], clients_of)
        regressed = send_labels(server, regressor_labels, clients_of)
        classifier_doc = performance(server, CLASSIFIER)
        regressor_doc = performance(server, REGRESSOR)
        once = subprocess.run(
            [sys.executable, "-m", "serve", "monitor", "--server", server.base, "--once", "--format", "json"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        client.close()

    labelled_classifier = sum(len(chosen[k]) for k in chosen if k[0] == CLASSIFIER)
    assert first == {"joined": labelled_classifier, "unknown": UNKNOWN_LABELS, "expired": 0, "duplicate": 0,
                     "conflicting": 0}  # fmt: skip
    assert second == {"joined": 0, "unknown": 0, "expired": 0, "duplicate": DUPLICATE_LABELS, "conflicting": 0}
    labelled_regressor = len(chosen[(REGRESSOR, "1")])
    assert regressed == {"joined": labelled_regressor, "unknown": 0, "expired": OLD_PREDICTIONS, "duplicate": 0,
                         "conflicting": 0}  # fmt: skip

    monitor_versions = {(m["model"], m["version"]): m.get("performance") for m in json.loads(once.stdout)["models"]}
    for version in ("1", "2"):
        picked = chosen[(CLASSIFIER, version)]
        truth = np.asarray([cancer.y[p.rows[r]] for p, r in picked])
        scores = np.asarray([p.outputs[r] for p, r in picked], dtype=np.float64)
        predicted = scores.argmax(axis=1)
        values, total = realized_of(classifier_doc, version)
        assert values["accuracy"] == accuracy_score(truth, predicted)
        assert values["f1"] == pytest.approx(f1_score(truth, predicted), abs=1e-12)
        assert abs(values["auc"] - roc_auc_score(truth, scores[:, 1])) <= values["auc_error_bound"]
        rows_of_version = sum(len(p.rows) for p in made if p.model == CLASSIFIER and p.version == version)
        assert total.predicted_rows == rows_of_version
        assert total.labelled_rows / total.predicted_rows == pytest.approx(LABELLED_SHARE, abs=1 / rows_of_version)
        seen = monitor_versions[(CLASSIFIER, version)]
        assert seen is not None, once.stdout[-2000:]
        assert seen["realized"]["accuracy"] == values["accuracy"]
        assert seen["label_coverage"] == pytest.approx(LABELLED_SHARE, abs=1 / rows_of_version)
    picked = chosen[(REGRESSOR, "1")]
    truth_values = np.asarray([diabetes.y[p.rows[r]] for p, r in picked])
    predicted_values = np.asarray([p.outputs[r] for p, r in picked], dtype=np.float64)
    values, _ = realized_of(regressor_doc, "1")
    assert values["mae"] == pytest.approx(mean_absolute_error(truth_values, predicted_values), rel=1e-9)
