"""Payload events: sampling, redaction, normalised tensors and CloudEvents that the SDK accepts."""

from __future__ import annotations

import hashlib
import hmac
import math
import re
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import orjson
import pytest
from cloudevents.conversion import from_json
from cloudevents.http import CloudEvent

from serve.payload_log.events import (
    REQUEST_TYPE,
    RESPONSE_TYPE,
    CloudEventJson,
    EventContext,
    TensorJson,
    encode_line,
    normalised_tensors,
    outcome_status,
    request_event,
    response_event,
)
from serve.payload_log.redaction import RedactionPolicy, load_key, parse_redact_flag
from serve.payload_log.sampling import sampled

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
KEY = b"a secret key"
CORE_ATTRIBUTES = {"specversion", "id", "type", "source", "time", "datacontenttype", "data"}


def context(**changes: object) -> EventContext:
    fields: dict[str, object] = {
        "model": "iris",
        "version": "3",
        "request_id": "req-1",
        "source": "serve://host-a/models/iris",
        "namespace": "team-a",
        "component": "predictor",
        "endpoint": "default",
        "traceparent": TRACEPARENT,
        "sample_rate": 0.1,
        "data_classification": "confidential",
        "replica": "pod-1",
    }
    fields.update(changes)
    return EventContext(**fields)  # type: ignore[arg-type]


def tensors(**arrays: np.ndarray) -> list[TensorJson]:
    datatypes = {"x": "FP32", "n": "INT64", "b": "BOOL", "s": "BYTES", "h": "FP16"}
    return normalised_tensors(arrays, {name: datatypes[name] for name in arrays}, None)


def request_and_response(ctx: EventContext | None = None) -> tuple[CloudEventJson, CloudEventJson]:
    ctx = ctx or context()
    inputs = tensors(x=np.array([[5.1, 3.5, 1.4, 0.2]], dtype=np.float32))
    outputs = tensors(n=np.array([0], dtype=np.int64))
    return request_event(ctx, inputs, {"priority": 1}), response_event(ctx, outputs, 200, None)


# --- sampling ---


@pytest.mark.parametrize("rate", [0.01, 0.1, 0.5, 0.9])
def test_sampling_keeps_the_rate_share_of_request_ids_within_4_sigma(rate: float) -> None:
    n = 100_000
    kept = sum(sampled(f"req-{i}", rate) for i in range(n))
    assert abs(kept - n * rate) <= 4 * math.sqrt(n * rate * (1 - rate))


def test_sampling_gives_one_request_id_the_same_answer_every_time() -> None:
    ids = [f"req-{i}" for i in range(1000)]
    first = [sampled(i, 0.3) for i in ids]
    assert [sampled(i, 0.3) for i in ids] == first
    assert 0 < sum(first) < len(ids)


def test_sampling_at_rate_1_keeps_every_request_and_at_rate_0_none() -> None:
    ids = [f"req-{i}" for i in range(10_000)]
    assert all(sampled(i, 1.0) for i in ids)
    assert not any(sampled(i, 0.0) for i in ids)


def test_a_lower_rate_keeps_a_subset_of_what_a_higher_rate_keeps() -> None:
    ids = [f"req-{i}" for i in range(10_000)]
    assert {i for i in ids if sampled(i, 0.05)} <= {i for i in ids if sampled(i, 0.2)}


@pytest.mark.parametrize("rate", [-0.1, 1.5, math.nan])
def test_sampling_refuses_a_rate_outside_0_to_1(rate: float) -> None:
    with pytest.raises(ValueError, match="sample rate"):
        sampled("req-1", rate)


# --- the redaction flag and key ---


@pytest.mark.parametrize(
    ("flag", "parsed"),
    [
        ("ssn", ("ssn", "drop")),
        ("ssn=hash", ("ssn", "hash")),
        ("ssn=mask", ("ssn", "mask")),
        ("a=b=drop", ("a=b", "drop")),
    ],
)
def test_redact_flag_names_an_input_and_its_redaction_drop_by_default(flag: str, parsed: tuple[str, str]) -> None:
    assert parse_redact_flag(flag) == parsed


@pytest.mark.parametrize(
    ("flag", "problem"), [("", "no input name"), ("=hash", "no input name"), ("ssn=blur", "'blur'")]
)
def test_redact_flag_that_cannot_be_read_says_why(flag: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_redact_flag(flag)


def test_key_file_is_read_without_its_trailing_newline(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_bytes(KEY + b"\n")
    assert load_key(path) == KEY


@pytest.mark.parametrize(("content", "problem"), [(None, "does not exist"), (b"", "is empty"), (b"\n", "is empty")])
def test_a_missing_or_empty_key_file_is_an_error_naming_it(tmp_path: Path, content: bytes | None, problem: str) -> None:
    path = tmp_path / "key"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=f"{re.escape(str(path))}.*{problem}"):
        load_key(path)


def test_hashing_without_a_key_is_refused() -> None:
    with pytest.raises(ValueError, match="ssn needs a key"):
        RedactionPolicy({"ssn": "hash"}, None)


def test_the_policy_repr_does_not_show_its_key() -> None:
    assert KEY.decode() not in repr(RedactionPolicy({"ssn": "hash"}, KEY))


# --- redaction in events ---


def redacted_line(policy: RedactionPolicy) -> tuple[list[TensorJson], bytes]:
    arrays = {
        "ssn": np.array([b"123-45-6789", b"987-65-4321"], dtype=object),
        "income": np.array([81234.5, 45678.25], dtype=np.float64),
        "age": np.array([41], dtype=np.int64),
    }
    datatypes = {"ssn": "BYTES", "income": "FP64", "age": "INT64"}
    inputs = normalised_tensors(arrays, datatypes, policy)
    return inputs, encode_line(request_event(context(), inputs, None))


def test_a_dropped_input_is_left_out_of_the_event() -> None:
    inputs, line = redacted_line(RedactionPolicy({"ssn": "drop", "income": "drop"}, None))
    assert [t["name"] for t in inputs] == ["age"]
    assert b"123-45-6789" not in line and b"ssn" not in line and b"81234.5" not in line


def test_a_hashed_input_carries_the_hmac_of_each_value_and_never_the_value() -> None:
    inputs, line = redacted_line(RedactionPolicy({"ssn": "hash", "income": "hash"}, KEY))
    by_name = {t["name"]: t for t in inputs}
    assert by_name["ssn"]["data"] == [
        hmac.new(KEY, b"123-45-6789", hashlib.sha256).hexdigest(),
        hmac.new(KEY, b"987-65-4321", hashlib.sha256).hexdigest(),
    ]
    assert by_name["income"]["data"] == [
        hmac.new(KEY, b"81234.5", hashlib.sha256).hexdigest(),
        hmac.new(KEY, b"45678.25", hashlib.sha256).hexdigest(),
    ]
    assert by_name["ssn"]["shape"] == [2]
    assert b"123-45-6789" not in line and b"987-65-4321" not in line and b"81234.5" not in line
    assert by_name["age"]["data"] == [41]


def test_a_masked_input_keeps_its_shape_with_every_value_masked() -> None:
    inputs, line = redacted_line(RedactionPolicy({"ssn": "mask", "income": "mask"}, None))
    by_name = {t["name"]: t for t in inputs}
    assert by_name["ssn"]["data"] == ["***", "***"]
    assert by_name["income"]["data"] == ["***", "***"]
    assert b"123-45-6789" not in line and b"81234.5" not in line


def test_equal_values_hash_equally_whatever_wire_form_carried_them() -> None:
    policy = RedactionPolicy({"x": "hash"}, KEY)
    from_list = normalised_tensors({"x": np.array([0.1, 2.5], dtype=np.float32)}, {"x": "FP32"}, policy)
    raw = np.array([0.1, 2.5], dtype="<f4").tobytes()
    from_buffer = normalised_tensors({"x": np.frombuffer(raw, dtype="<f4")}, {"x": "FP32"}, policy)
    assert from_list == from_buffer


# --- normalised tensors ---


def test_fp32_from_a_json_list_and_from_a_binary_buffer_normalise_identically() -> None:
    values = [[5.1, 3.5, 1.4, 0.2], [6.2, 2.9, 4.3, 1.3]]
    from_json_list = np.asarray(values).astype(np.float32)
    buffer = np.array(values, dtype="<f4").tobytes()
    from_binary = np.frombuffer(buffer, dtype="<f4").reshape(2, 4)
    big_endian = np.frombuffer(np.array(values, dtype=">f4").tobytes(), dtype=">f4").reshape(2, 4)
    strided = np.asfortranarray(from_json_list)
    a, b, c, d = (
        normalised_tensors({"x": arr}, {"x": "FP32"}, None)
        for arr in (from_json_list, from_binary, big_endian, strided)
    )
    assert orjson.dumps(a) == orjson.dumps(b) == orjson.dumps(c) == orjson.dumps(d)


def test_fp32_values_are_written_as_their_shortest_decimal() -> None:
    (tensor,) = tensors(x=np.array([0.1, 1.0, 3.4028235e38], dtype=np.float32))
    assert tensor["data"] == [0.1, 1.0, 3.4028235e38]


def test_values_json_cannot_spell_become_null() -> None:
    (tensor,) = tensors(x=np.array([np.nan, np.inf, 1.0], dtype=np.float32))
    assert tensor["data"] == [None, None, 1.0]


def test_integers_booleans_and_half_floats_keep_their_values() -> None:
    by_name = {
        t["name"]: t
        for t in tensors(
            n=np.array([-(2**63), 2**63 - 1], dtype=np.int64),
            b=np.array([[True, False]]),
            h=np.array([0.5, -2.0], dtype=np.float16),
        )
    }
    assert by_name["n"]["data"] == [-(2**63), 2**63 - 1]
    assert by_name["b"] == {"name": "b", "datatype": "BOOL", "shape": [1, 2], "data": [True, False]}
    assert by_name["h"]["data"] == [0.5, -2.0]


def test_bytes_tensors_are_logged_as_text_with_invalid_utf8_escaped() -> None:
    (tensor,) = tensors(s=np.array([[b"caf\xc3\xa9", b"\xff\x00ok"]], dtype=object))
    assert tensor == {"name": "s", "datatype": "BYTES", "shape": [1, 2], "data": ["café", "\\xff\x00ok"]}


def test_bytes_tensors_of_str_elements_as_a_model_returns_them_match_their_bytes_form() -> None:
    as_bytes = tensors(s=np.array([b"caf\xc3\xa9"], dtype=object))
    as_str = tensors(s=np.array(["café"], dtype=object))
    assert as_bytes == as_str


def test_tensors_are_listed_by_name_whatever_order_the_request_gave() -> None:
    n, x = np.array([1], dtype=np.int64), np.array([1.0], dtype=np.float32)
    assert tensors(x=x, n=n) == tensors(n=n, x=x)
    assert [t["name"] for t in tensors(x=x, n=n)] == ["n", "x"]


def test_a_tensor_over_the_size_cap_is_logged_with_a_truncation_marker() -> None:
    arrays: dict[str, np.ndarray] = {"x": np.zeros((4, 1000), dtype=np.float32), "n": np.array([7], dtype=np.int64)}
    by_name = {t["name"]: t for t in normalised_tensors(arrays, {"x": "FP32", "n": "INT64"}, None, max_tensor_bytes=8)}
    assert by_name["x"] == {
        "name": "x",
        "datatype": "FP32",
        "shape": [4, 1000],
        "data": {"truncated": True, "bytes": 16000},
    }
    assert by_name["n"]["data"] == [7]


def test_a_bytes_tensor_is_capped_by_the_length_of_its_elements() -> None:
    array = np.array([b"abcd", b"efghij"], dtype=object)
    (kept,) = normalised_tensors({"s": array}, {"s": "BYTES"}, None, max_tensor_bytes=10)
    (cut,) = normalised_tensors({"s": array}, {"s": "BYTES"}, None, max_tensor_bytes=9)
    assert kept["data"] == ["abcd", "efghij"]
    assert cut["data"] == {"truncated": True, "bytes": 10}


# --- CloudEvents ---


@pytest.mark.parametrize("which", ["request", "response"])
def test_events_parse_with_the_cloudevents_sdk(which: str) -> None:
    event = dict(zip(("request", "response"), request_and_response(), strict=True))[which]
    line = encode_line(event)
    parsed = from_json(CloudEvent, line)
    assert parsed["id"] == event["id"]
    assert parsed["type"] == event["type"]
    assert parsed["specversion"] == "1.0"
    assert parsed["time"] == event["time"]
    assert parsed["requestid"] == "req-1"
    assert parsed.data == orjson.loads(line)["data"]


def test_event_ids_are_unique_across_10000_events_and_differ_between_a_request_and_its_response() -> None:
    ids: set[str] = set()
    for i in range(5000):
        request, response = request_and_response(context(request_id=f"req-{i}"))
        assert request["id"] != response["id"]
        ids.update((request["id"], response["id"]))
    assert len(ids) == 10_000


def test_extension_names_are_valid_cloudevents_attribute_names() -> None:
    for event in request_and_response():
        for name in set(event) - CORE_ATTRIBUTES:
            assert re.fullmatch(r"[a-z0-9]{1,20}", name), name


def test_events_carry_kserve_types_and_extensions() -> None:
    request, response = request_and_response()
    assert (request["type"], response["type"]) == (REQUEST_TYPE, RESPONSE_TYPE)
    assert REQUEST_TYPE == "org.kubeflow.serving.inference.request"
    assert RESPONSE_TYPE == "org.kubeflow.serving.inference.response"
    for event in (request, response):
        assert event["specversion"] == "1.0"
        assert event["source"] == "serve://host-a/models/iris"
        assert event["datacontenttype"] == "application/json"
        assert (event["inferenceservicename"], event["namespace"], event["component"], event["endpoint"]) == (
            "iris",
            "team-a",
            "predictor",
            "default",
        )
        assert (event["modelname"], event["modelversion"], event["requestid"]) == ("iris", "3", "req-1")
        assert event["traceparent"] == TRACEPARENT
        assert event["dataclassification"] == "confidential"
        assert event["replica"] == "pod-1"


def test_sampledrate_is_the_number_of_requests_each_logged_one_stands_for() -> None:
    # The CloudEvents sampling extension: an Integer, 1 when nothing was sampled away.
    assert request_and_response(context(sample_rate=0.1))[0]["sampledrate"] == 10
    assert request_and_response(context(sample_rate=1.0))[0]["sampledrate"] == 1
    assert request_and_response(context(sample_rate=0.3))[0]["sampledrate"] == 3


def test_optional_extensions_are_absent_when_not_configured() -> None:
    request, response = request_and_response(context(traceparent=None, data_classification=None, replica=""))
    for event in (request, response):
        assert "traceparent" not in event and "dataclassification" not in event and "replica" not in event
        assert "metadata" not in event


def test_allowlisted_headers_travel_as_kserves_metadata_extension_a_json_string_of_value_lists() -> None:
    request, response = request_and_response(context(headers={"x-tenant": "acme", "x-region": "eu"}))
    for event in (request, response):
        assert orjson.loads(event["metadata"]) == {"x-tenant": ["acme"], "x-region": ["eu"]}
        from_json(CloudEvent, orjson.dumps(event))  # a String attribute the SDK accepts


def test_time_is_rfc3339_utc_with_microseconds() -> None:
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", request_and_response()[0]["time"])
    at = datetime(2026, 12, 7, 13, 4, 5, 6, tzinfo=timezone(timedelta(hours=2)))
    assert request_event(context(), [], None, time=at)["time"] == "2026-12-07T11:04:05.000006Z"


def test_a_naive_time_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        request_event(context(), [], None, time=datetime(2026, 12, 7))


def test_the_request_event_data_is_the_oip_request_body() -> None:
    request, _ = request_and_response()
    assert request["data"] == {
        "id": "req-1",
        "model_name": "iris",
        "model_version": "3",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [5.1, 3.5, 1.4, 0.2]}],
        "parameters": {"priority": 1},
    }
    assert "status" not in request


def test_a_request_without_parameters_has_none_in_its_event() -> None:
    assert "parameters" not in request_event(context(), [], {})["data"]


def test_the_response_event_carries_its_status_and_the_oip_response_body() -> None:
    _, response = request_and_response()
    assert response["status"] == 200
    assert response["data"] == {
        "id": "req-1",
        "model_name": "iris",
        "model_version": "3",
        "outputs": [{"name": "n", "datatype": "INT64", "shape": [1], "data": [0]}],
    }


def test_a_failed_request_is_logged_with_its_status_and_error() -> None:
    event = response_event(context(), [], outcome_status("timeout"), "deadline exceeded after 100 ms")
    assert event["status"] == 504
    assert event["data"]["outputs"] == []  # type: ignore[typeddict-item]
    assert event["data"]["error"] == "deadline exceeded after 100 ms"  # type: ignore[typeddict-item]


@pytest.mark.parametrize(
    ("outcome", "status"),
    [
        ("success", 200),
        ("invalid_input", 400),
        ("rejected", 429),
        ("cancelled", 499),
        ("model_error", 500),
        ("error", 500),
        ("unavailable", 503),
        ("timeout", 504),
        ("something new", 500),
    ],
)
def test_outcomes_map_to_http_statuses(outcome: str, status: int) -> None:
    assert outcome_status(outcome) == status


def test_an_error_text_json_cannot_carry_is_escaped_not_fatal() -> None:
    line = encode_line(response_event(context(), [], 500, "bad \udc80 byte"))
    assert orjson.loads(line)["data"]["error"] == "bad \\udc80 byte"


def test_an_event_encodes_as_exactly_one_line() -> None:
    event = request_event(context(), tensors(s=np.array([b"two\nlines\r\n"], dtype=object)), {"note": "a\nb"})
    line = encode_line(event)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert orjson.loads(line) == event


def test_parameters_of_bytes_and_numpy_scalars_are_still_encoded() -> None:
    line = encode_line(request_event(context(), [], {"tag": b"\xffab", "k": np.int64(3)}))
    assert orjson.loads(line)["data"]["parameters"] == {"tag": "\\xffab", "k": 3}


@pytest.mark.parametrize("rate", [0.0, 1.5])
def test_an_event_context_needs_a_rate_an_event_could_be_logged_at(rate: float) -> None:
    with pytest.raises(ValueError, match="sample rate"):
        context(sample_rate=rate)


def test_the_event_time_defaults_to_now() -> None:
    before = datetime.now(UTC)
    stamp = datetime.fromisoformat(request_and_response()[0]["time"].replace("Z", "+00:00"))
    assert before - timedelta(seconds=1) <= stamp <= datetime.now(UTC)
