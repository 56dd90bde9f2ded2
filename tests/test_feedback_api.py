"""The feedback API (issue 21): labels joined to the predictions they are about, by request id and row, over
HTTP (``POST /v2/models/{m}[/versions/{v}]/feedback``) and gRPC (``serve.monitoring.Monitoring/Feedback``),
and the realized performance they make (``GET …/performance``). In the test's own loop (tests/fixtures/inprocess.py).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import pytest_asyncio
from sklearn.metrics import accuracy_score, mean_absolute_error

from serve.ground_truth.document import merge_windows
from serve.ground_truth.realized import realized
from serve.protocol import serve_monitoring_pb2 as mon
from serve.protocol import serve_monitoring_pb2_grpc as mon_grpc
from tests.fixtures.ground_truth_models import (
    CLASSIFIER,
    INPUT,
    NO_PREDICTION,
    PROBABILITIES,
    REGRESSOR,
    VALUE,
    cancer_data,
    diabetes_data,
    write_ground_truth_repository,
)
from tests.fixtures.inprocess import InProcess, in_process

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[InProcess]:
    root = write_ground_truth_repository(tmp_path_factory.mktemp("ground-truth"))
    async with in_process(root) as running:
        yield running


def infer_body(x: np.ndarray, request_id: str = "") -> bytes:
    document: dict[str, Any] = {
        "inputs": [{"name": INPUT, "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]
    }
    if request_id:
        document["id"] = request_id
    return json.dumps(document).encode()


async def predict(server: InProcess, model: str, x: np.ndarray, request_id: str = "", version: str = "") -> Any:
    path = f"/v2/models/{model}/versions/{version}/infer" if version else f"/v2/models/{model}/infer"
    response = await server.http.post(path, content=infer_body(x, request_id))
    assert response.status_code == 200, response.text
    return response.json()


async def feedback(server: InProcess, model: str, labels: Any, version: str = "") -> Any:
    path = f"/v2/models/{model}/versions/{version}/feedback" if version else f"/v2/models/{model}/feedback"
    body = labels if isinstance(labels, bytes) else json.dumps(labels).encode()
    return await server.http.post(path, content=body)


def outputs(answer: Any, name: str) -> np.ndarray:
    out = next(o for o in answer["outputs"] if o["name"] == name)
    return np.asarray(out["data"]).reshape(out["shape"])


async def performance(server: InProcess, model: str, version: str = "") -> Any:
    path = f"/v2/models/{model}/versions/{version}/performance" if version else f"/v2/models/{model}/performance"
    response = await server.http.get(path)
    assert response.status_code == 200, response.text
    return response.json()


def labelled_rows(document: Any, version: str) -> int:
    entry = next(v for v in document["versions"] if v["version"] == version)
    return sum(w["labelled_rows"] for w in entry["windows"])


# ---- joining ---------------------------------------------------------------------------------------


async def test_labels_for_every_row_of_a_request_join_and_are_counted(server: InProcess) -> None:
    data = cancer_data()
    await predict(server, CLASSIFIER, data.x[:4], "every-row", version="1")
    answer = await feedback(
        server, CLASSIFIER, [{"id": "every-row", "row": r, "label": int(data.y[r])} for r in range(4)]
    )
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"joined": 4, "unknown": 0, "expired": 0, "duplicate": 0, "conflicting": 0}


async def test_a_server_minted_id_from_the_response_joins(server: InProcess) -> None:
    data = cancer_data()
    minted = (await predict(server, CLASSIFIER, data.x[10:11], version="1"))["id"]
    answer = await feedback(server, CLASSIFIER, [{"id": minted, "label": int(data.y[10])}])
    assert answer.json()["joined"] == 1


async def test_an_id_no_prediction_had_is_unknown(server: InProcess) -> None:
    answer = await feedback(server, CLASSIFIER, [{"id": "never-predicted", "label": 1}])
    assert answer.json() == {"joined": 0, "unknown": 1, "expired": 0, "duplicate": 0, "conflicting": 0}


async def test_a_row_past_the_requests_rows_is_unknown(server: InProcess) -> None:
    data = cancer_data()
    await predict(server, CLASSIFIER, data.x[20:22], "two-rows", version="1")
    answer = await feedback(server, CLASSIFIER, [{"id": "two-rows", "row": 2, "label": 0}])
    assert answer.json()["unknown"] == 1


async def test_the_same_label_twice_is_a_duplicate_and_another_label_conflicts(server: InProcess) -> None:
    data = cancer_data()
    await predict(server, CLASSIFIER, data.x[30:31], "twice", version="1")
    truth = int(data.y[30])
    first = await feedback(server, CLASSIFIER, [{"id": "twice", "label": truth}])
    again = await feedback(server, CLASSIFIER, [{"id": "twice", "label": truth}, {"id": "twice", "label": 1 - truth}])
    assert first.json()["joined"] == 1
    assert again.json() == {"joined": 0, "unknown": 0, "expired": 0, "duplicate": 1, "conflicting": 1}


async def test_json_lines_are_accepted(server: InProcess) -> None:
    data = cancer_data()
    await predict(server, CLASSIFIER, data.x[40:42], "lines", version="2")
    body = b"\n".join(json.dumps({"id": "lines", "row": r, "label": int(data.y[40 + r])}).encode() for r in range(2))
    answer = await feedback(server, CLASSIFIER, body + b"\n")
    assert answer.json()["joined"] == 2


async def test_class_labels_are_matched_by_their_text(server: InProcess) -> None:
    data = cancer_data()
    await predict(server, CLASSIFIER, data.x[50:51], "text-label", version="1")
    answer = await feedback(server, CLASSIFIER, [{"id": "text-label", "label": str(int(data.y[50]))}])
    assert answer.json()["joined"] == 1


async def test_a_label_sent_to_the_version_url_joins_only_that_version(server: InProcess) -> None:
    data = cancer_data()
    await predict(server, CLASSIFIER, data.x[60:61], "only-v2", version="2")
    elsewhere = await feedback(server, CLASSIFIER, [{"id": "only-v2", "label": int(data.y[60])}], version="1")
    there = await feedback(server, CLASSIFIER, [{"id": "only-v2", "label": int(data.y[60])}], version="2")
    assert elsewhere.json()["unknown"] == 1
    assert there.json()["joined"] == 1


async def test_a_regressors_values_join(server: InProcess) -> None:
    data = diabetes_data()
    await predict(server, REGRESSOR, data.x[:3], "regressed")
    answer = await feedback(
        server, REGRESSOR, [{"id": "regressed", "row": r, "value": float(data.y[r])} for r in range(3)]
    )
    assert answer.json()["joined"] == 3


# ---- realized performance ----------------------------------------------------------------------------


async def test_realized_accuracy_is_that_of_the_joined_rows(tmp_path: Path) -> None:
    data = cancer_data()
    root = write_ground_truth_repository(tmp_path)
    async with in_process(root) as fresh:
        answer = await predict(fresh, CLASSIFIER, data.x[:64], "batch", version="1")
        predicted = outputs(answer, PROBABILITIES).argmax(axis=1)
        labelled = np.arange(0, 64, 2)  # half the rows get a label
        labels = [{"id": "batch", "row": int(r), "label": int(data.y[r])} for r in labelled]
        assert (await feedback(fresh, CLASSIFIER, labels)).json()["joined"] == len(labelled)
        document = await performance(fresh, CLASSIFIER, "1")
    (entry,) = document["versions"]
    (window,) = entry["windows"]
    assert window["predicted_rows"] == 64
    assert window["labelled_rows"] == len(labelled)
    (merged,) = merge_windows([window])
    assert realized(merged)["accuracy"] == accuracy_score(data.y[labelled], predicted[labelled])


async def test_realized_mae_is_that_of_the_joined_rows(tmp_path: Path) -> None:
    data = diabetes_data()
    root = write_ground_truth_repository(tmp_path)
    async with in_process(root) as fresh:
        answer = await predict(fresh, REGRESSOR, data.x[:50], "values")
        predicted = outputs(answer, VALUE).reshape(-1)
        await feedback(fresh, REGRESSOR, [{"id": "values", "row": r, "value": float(data.y[r])} for r in range(50)])
        document = await performance(fresh, REGRESSOR)
    (entry,) = document["versions"]
    (window,) = merge_windows(entry["windows"])
    mae = realized(window)["mae"]
    assert mae == pytest.approx(mean_absolute_error(data.y[:50], predicted.astype(np.float64)), rel=1e-9)


# ---- refusals ----------------------------------------------------------------------------------------


async def test_an_unknown_model_is_404(server: InProcess) -> None:
    answer = await feedback(server, "no-such-model", [{"id": "a", "label": 1}])
    assert answer.status_code == 404
    assert "no-such-model" in answer.json()["error"]


async def test_malformed_json_is_400_and_names_the_problem(server: InProcess) -> None:
    answer = await feedback(server, CLASSIFIER, b"[{")
    assert answer.status_code == 400
    assert answer.json()["error"]


async def test_a_class_the_model_does_not_have_is_400_naming_it_and_nothing_joins(server: InProcess) -> None:
    data = cancer_data()
    await predict(server, CLASSIFIER, data.x[70:71], "bad-class", version="1")
    answer = await feedback(server, CLASSIFIER, [{"id": "bad-class", "label": 0}, {"id": "bad-class", "label": 7}])
    assert answer.status_code == 400
    assert "7" in answer.json()["error"]
    retried = await feedback(server, CLASSIFIER, [{"id": "bad-class", "label": int(data.y[70])}])
    assert retried.json()["joined"] == 1  # the refused call joined nothing


async def test_a_value_for_a_classifier_is_400(server: InProcess) -> None:
    answer = await feedback(server, CLASSIFIER, [{"id": "x", "value": 0.5}])
    assert answer.status_code == 400
    assert "label" in answer.json()["error"]


async def test_a_model_without_a_prediction_output_is_400_saying_why(server: InProcess) -> None:
    answer = await feedback(server, NO_PREDICTION, [{"id": "a", "label": 1}])
    assert answer.status_code == 400
    assert "no output" in answer.json()["error"]


async def test_feedback_with_retention_off_is_refused_saying_so(tmp_path: Path) -> None:
    root = write_ground_truth_repository(tmp_path)
    async with in_process(root, feedback_retention_s=0.0) as off:
        answer = await feedback(off, CLASSIFIER, [{"id": "a", "label": 1}])
    assert answer.status_code == 400
    assert "--feedback-retention-s" in answer.json()["error"]


# ---- gRPC -------------------------------------------------------------------------------------------


def monitoring(server: InProcess) -> mon_grpc.MonitoringStub:
    return mon_grpc.MonitoringStub(server.channel)


async def test_grpc_feedback_joins_and_answers_the_counts(server: InProcess) -> None:
    data = cancer_data()
    await predict(server, CLASSIFIER, data.x[80:82], "grpc-labels", version="1")
    request = mon.FeedbackRequest(model_name=CLASSIFIER)
    request.labels.add(id="grpc-labels", row=0, label=int(data.y[80]))
    request.labels.add(id="grpc-labels", row=1, label_text=str(int(data.y[81])))
    request.labels.add(id="grpc-unknown", row=0, label=1)
    answer = await monitoring(server).Feedback(request)
    assert (answer.joined, answer.unknown, answer.expired, answer.duplicate, answer.conflicting) == (2, 1, 0, 0, 0)


async def test_grpc_feedback_without_a_truth_is_invalid_argument(server: InProcess) -> None:
    request = mon.FeedbackRequest(model_name=CLASSIFIER)
    request.labels.add(id="no-truth", row=0)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await monitoring(server).Feedback(request)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "label 0" in (raised.value.details() or "")


async def test_grpc_feedback_for_an_unknown_model_is_not_found(server: InProcess) -> None:
    request = mon.FeedbackRequest(model_name="no-such-model")
    request.labels.add(id="a", row=0, label=1)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await monitoring(server).Feedback(request)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND


async def test_grpc_performance_is_the_http_document(server: InProcess) -> None:
    answer = await monitoring(server).Performance(mon.PerformanceRequest(model_name=CLASSIFIER))
    document = json.loads(answer.json)
    assert document["format"] == "serve.performance"
    assert document == await performance(server, CLASSIFIER)


async def test_feedback_needs_a_token_of_scope_inference_when_auth_is_on(tmp_path: Path) -> None:
    root = write_ground_truth_repository(tmp_path / "models")
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("labeller inference t-inference-0123456789\n")
    async with in_process(root, auth_tokens_file=tokens) as guarded:
        refused = await guarded.http.post(f"/v2/models/{CLASSIFIER}/feedback", content=b'[{"id": "a", "label": 1}]')
        allowed = await guarded.http.post(
            f"/v2/models/{CLASSIFIER}/feedback",
            content=b'[{"id": "a", "label": 1}]',
            headers={"Authorization": "Bearer t-inference-0123456789"},
        )
    assert refused.status_code == 401
    assert "error" in refused.json()
    assert allowed.json()["unknown"] == 1
