"""bench/locustfile.py run headless against a live server, plus its pure helpers (shapes, payloads).

Locust is only ever run in a subprocess: importing it monkey-patches the whole process with gevent.
"""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import orjson
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # bench/ is a folder of scripts in the checkout, not an installed package
    sys.path.insert(0, str(ROOT))

from bench import load_shapes, payloads  # noqa: E402
from serve.codecs.bytes_tensor import deserialize_bytes_tensor  # noqa: E402
from tests.fixtures.servers import RunningServer, free_port  # noqa: E402

LOCUSTFILE = ROOT / "bench" / "locustfile.py"
STOP_AFTER = ROOT / "tests" / "fixtures" / "locust_stop_after.py"


def run_locust(
    server: RunningServer,
    tmp_path: Path,
    *args: str,
    run_time: str | None = "4s",
    grpc_port: int | None = None,
    stop_after_requests: int = 0,
) -> tuple[subprocess.CompletedProcess[str], list[dict[str, str]]]:
    """Run locust headless for ``run_time``, or until ``stop_after_requests`` inference requests have completed
    (then ``run_time`` is only a cap); its summary CSV rows come back."""
    prefix = tmp_path / "locust"
    locustfiles = f"{LOCUSTFILE},{STOP_AFTER}" if stop_after_requests else str(LOCUSTFILE)
    stop = ["--stop-after-requests", str(stop_after_requests)] if stop_after_requests else []
    command = [
        sys.executable, "-m", "locust", "-f", locustfiles, *stop, "--host", server.base,
        "--grpc-port", str(grpc_port or server.grpc_port), "--headless", "--only-summary",
        "--csv", str(prefix), "-u", "4", "-r", "4", *(["-t", run_time] if run_time else []), *args,
    ]  # fmt: skip
    if stop_after_requests:
        command += ["--json-file", str(prefix)]  # locust adds ".json"
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=90)
    if stop_after_requests:
        # Locust rewrites its CSV once a second, so a run that ends on a count reads the final JSON instead.
        entries = orjson.loads(Path(f"{prefix}.json").read_bytes())
        return done, [
            {"Type": e["method"], "Name": e["name"], "Request Count": str(e["num_requests"]),
             "Failure Count": str(e["num_failures"])}
            for e in entries
        ]  # fmt: skip
    with open(f"{prefix}_stats.csv", newline="") as f:
        return done, list(csv.DictReader(f))


def infer_row(rows: list[dict[str, str]]) -> dict[str, str]:
    (row,) = [r for r in rows if r["Type"] and ("/infer" in r["Name"] or r["Name"].startswith("ModelInfer"))]
    return row


@pytest.mark.parametrize("protocol", ["http", "http-json", "grpc"])
def test_user_kind_sends_successful_requests_and_records_percentiles(
    demo_server: RunningServer, tmp_path: Path, protocol: str
) -> None:
    done, rows = run_locust(demo_server, tmp_path, "--protocol", protocol)
    assert done.returncode == 0, done.stderr[-3000:]
    row = infer_row(rows)
    assert int(row["Request Count"]) > 0
    assert int(row["Failure Count"]) == 0
    assert rows[-1]["Name"] == "Aggregated" and int(rows[-1]["Failure Count"]) == 0
    # Percentiles are whole milliseconds in locust's CSV (sub-ms requests read 0): recorded, and ordered.
    assert float(row["Max Response Time"]) > 0
    assert 0 <= int(row["50%"]) <= int(row["99%"]) <= int(row["100%"])


def test_inputs_of_every_datatype_are_generated_from_metadata(demo_server: RunningServer, tmp_path: Path) -> None:
    # Ends after 20 requests, not after a time: a loaded machine may spend seconds starting users (issue 17).
    done, rows = run_locust(
        demo_server, tmp_path, "--protocol", "grpc", "--model", "identity_all", "--rows-per-request", "4",
        run_time="80s", stop_after_requests=20,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    row = infer_row(rows)
    assert int(row["Request Count"]) >= 20 and int(row["Failure Count"]) == 0


def test_unknown_model_is_counted_as_failures_not_a_crash(demo_server: RunningServer, tmp_path: Path) -> None:
    # 4 s: under a loaded machine locust's own start can take most of 2 s, leaving no request counted.
    done, rows = run_locust(demo_server, tmp_path, "--model", "no_such_model", run_time="4s")
    assert done.returncode == 1  # locust's exit code when any request failed
    assert "Traceback" not in done.stderr
    assert int(rows[-1]["Failure Count"]) > 0
    failures = (tmp_path / "locust_failures.csv").read_text()
    assert "HTTP 404" in failures and "no_such_model" in failures


def test_unreachable_grpc_endpoint_is_counted_as_failures_not_a_crash(
    demo_server: RunningServer, tmp_path: Path
) -> None:
    done, rows = run_locust(demo_server, tmp_path, "--protocol", "grpc", run_time="2s", grpc_port=free_port())
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert int(rows[-1]["Failure Count"]) > 0
    assert "UNAVAILABLE" in (tmp_path / "locust_failures.csv").read_text()


def test_step_shape_steps_users_up_and_ends_the_run(demo_server: RunningServer, tmp_path: Path) -> None:
    done, rows = run_locust(
        demo_server, tmp_path, "--shape", "step", "--shape-users", "2", "--shape-steps", "2",
        "--shape-step-time", "1", "--csv-full-history", run_time=None,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Shape test completed" in done.stderr
    assert int(infer_row(rows)["Request Count"]) > 0
    with open(tmp_path / "locust_stats_history.csv", newline="") as f:
        user_counts = {int(r["User Count"]) for r in csv.DictReader(f)}
    assert max(user_counts) == 2


def test_step_plan_climbs_in_equal_steps_then_stops() -> None:
    plan = load_shapes.step_plan(users=10, steps=5, step_time_s=30)
    assert [plan.tick(t) for t in (0, 31, 125)] == [(2, 2.0), (4, 2.0), (10, 2.0)]
    assert plan.tick(150) is None


def test_spike_plan_spikes_then_recovers_to_the_base_load() -> None:
    plan = load_shapes.spike_plan(users=4, spike_users=12, step_time_s=10, spike_time_s=5)
    users = [tick[0] for t in (5, 15, 22, 30) if (tick := plan.tick(t)) is not None]
    assert users == [4, 4, 12, 4]
    assert plan.tick(plan.total_s) is None


def test_unknown_shape_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown shape"):
        load_shapes.make_plan("sawtooth")


MULTI_IO = {
    "name": "m",
    "inputs": [
        {"name": "text", "datatype": "BYTES", "shape": [-1, 1]},
        {"name": "values", "datatype": "FP64", "shape": [-1, -1, 4]},
    ],
}


def test_batch_dimension_takes_the_rows_and_other_variable_dimensions_become_one() -> None:
    spec = payloads.model_spec(MULTI_IO, {"max_batch_size": 8})
    inputs = payloads.random_inputs(spec, 3, np.random.default_rng(0))
    assert inputs["text"].shape == (3, 1) and inputs["values"].shape == (3, 1, 4)
    assert inputs["values"].dtype == np.float64 and isinstance(inputs["text"][0, 0], bytes)


def test_binary_body_carries_bytes_length_prefixed_after_the_json_header() -> None:
    spec = payloads.model_spec(MULTI_IO, {"max_batch_size": 8})
    (request,) = payloads.build_requests(spec, "http", rows=2, count=1)
    header_length = int(request.headers["Inference-Header-Content-Length"])
    header = orjson.loads(request.body[:header_length])
    text_size = header["inputs"][0]["parameters"]["binary_data_size"]
    text = deserialize_bytes_tensor(request.body[header_length : header_length + text_size], 2)
    assert all(v.startswith(b"item-") for v in text)
    assert request.rows == 2


def test_csv_input_file_is_replayed_in_chunks_of_rows(tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"
    path.write_text("a,b\n" + "".join(f"{i},{i + 0.5}\n" for i in range(5)))
    metadata = {"name": "m", "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}]}
    spec = payloads.model_spec(metadata, None)
    requests = payloads.build_requests(spec, "http-json", rows=2, input_file=path)
    first = orjson.loads(requests[0].body)["inputs"][0]
    assert len(requests) == 2  # 5 rows in chunks of 2; the partial last chunk is dropped
    assert first["shape"] == [2, 2] and first["data"] == [0.0, 0.5, 1.0, 1.5]
