"""The .proto files, their generated code, and wire compatibility with tritonclient."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.protobuf import descriptor as _d
from google.protobuf import descriptor_pool, text_format
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from grpc_reflection.v1alpha import reflection
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from tritonclient.grpc import InferInput, InferRequestedOutput
from tritonclient.grpc import model_config_pb2 as triton_mc
from tritonclient.grpc import service_pb2 as triton_pb
from tritonclient.grpc._utils import _get_inference_request

from serve.protocol import grpc_service_pb2 as pb
from serve.protocol import grpc_service_pb2_grpc
from serve.protocol import model_config_pb2 as mc
from serve.protocol._pool import POOL

ROOT = Path(__file__).resolve().parent.parent
GENERATED_DIR = ROOT / "serve" / "protocol"
HAND_WRITTEN = {"__init__.py", "_pool.py"}


def _as_dict(message: Message) -> dict:
    return MessageToDict(message, preserving_proto_field_name=True)


def _cross_parse(message: Message, other_cls: type[Message]) -> Message:
    return other_cls.FromString(message.SerializeToString())


# ---------------------------------------------------------------- generated code is current


def test_committed_generated_code_matches_a_fresh_generation(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(ROOT / "protos" / "generate.py"), "--out", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    fresh = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    committed = {p.name: p.read_bytes() for p in GENERATED_DIR.iterdir() if p.is_file()}
    committed = {name: data for name, data in committed.items() if name not in HAND_WRITTEN}
    stale = sorted(name for name in fresh.keys() | committed.keys() if fresh.get(name) != committed.get(name))
    assert not stale, (
        f"serve/protocol is stale ({', '.join(stale)}): run `.venv/bin/python protos/generate.py` and commit the result"
    )


def test_generated_modules_use_the_private_pool_and_package_imports() -> None:
    for path in GENERATED_DIR.glob("*_pb2*.py"):
        text = path.read_text(encoding="utf-8")
        assert "_descriptor_pool.Default()" not in text, path.name
        assert "\nimport model_config_pb2" not in text, path.name
        assert "\nimport grpc_service_pb2" not in text, path.name
    assert pb.DESCRIPTOR.pool is POOL
    assert mc.DESCRIPTOR.pool is POOL


# ---------------------------------------------------------------- coexistence with tritonclient


@pytest.mark.parametrize(
    "imports",
    [
        "import tritonclient.grpc; import serve.protocol.grpc_service_pb2_grpc",
        "import serve.protocol.grpc_service_pb2_grpc; import tritonclient.grpc",
    ],
    ids=["tritonclient-first", "serve-first"],
)
def test_tritonclient_and_our_modules_import_in_one_process(imports: str) -> None:
    done = subprocess.run([sys.executable, "-c", imports], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_our_messages_are_distinct_classes_from_tritonclients() -> None:
    assert pb.ModelInferRequest is not triton_pb.ModelInferRequest
    assert pb.ModelInferRequest.DESCRIPTOR.full_name == triton_pb.ModelInferRequest.DESCRIPTOR.full_name
    assert triton_pb.DESCRIPTOR.pool is descriptor_pool.Default()


# ---------------------------------------------------------------- schema equals Triton's


def _field_signature(field: _d.FieldDescriptor) -> tuple:
    target = field.message_type or field.enum_type
    return (
        field.number,
        field.type,
        field.is_repeated,
        target.full_name if target else None,
        field.containing_oneof.name if field.containing_oneof else None,
    )


def _message_signature(message: _d.Descriptor) -> dict:
    return {
        "map_entry": message.GetOptions().map_entry,
        "fields": {f.name: _field_signature(f) for f in message.fields},
        "enums": {e.name: {v.name: v.number for v in e.values} for e in message.enum_types},
        "nested": {n.name: _message_signature(n) for n in message.nested_types},
    }


def _file_signature(file: _d.FileDescriptor) -> dict:
    return {
        "package": file.package,
        "dependencies": [d.name for d in file.dependencies],
        "enums": {e.name: {v.name: v.number for v in e.values} for e in file.enum_types_by_name.values()},
        "messages": {m.name: _message_signature(m) for m in file.message_types_by_name.values()},
        "services": {
            s.name: {
                m.name: (
                    m.input_type.full_name,
                    m.output_type.full_name,
                    m.client_streaming,
                    m.server_streaming,
                )
                for m in s.methods
            }
            for s in file.services_by_name.values()
        },
    }


@pytest.mark.parametrize(("ours", "theirs"), [(mc, triton_mc), (pb, triton_pb)], ids=["model_config", "grpc_service"])
def test_schema_matches_tritonclients_field_for_field(ours, theirs) -> None:
    mine, triton = _file_signature(ours.DESCRIPTOR), _file_signature(theirs.DESCRIPTOR)
    for kind in ("enums", "messages", "services"):
        for name in triton[kind].keys() | mine[kind].keys():
            assert mine[kind].get(name) == triton[kind].get(name), f"{kind[:-1]} {name} differs"
    assert mine == triton


# ---------------------------------------------------------------- wire compatibility


def _fill(message: Message, variant: int, depth: int = 0) -> None:
    """Set every field to a value derived from its name; ``variant`` picks the member of each oneof."""
    descriptor = message.DESCRIPTOR
    chosen = {o.name: o.fields[variant % len(o.fields)].name for o in descriptor.oneofs}
    for field in descriptor.fields:
        oneof = field.containing_oneof
        if oneof is not None and chosen[oneof.name] != field.name:
            continue
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            key_field, value_field = field.message_type.fields
            key = _scalar(key_field, 1)
            target = getattr(message, field.name)
            if value_field.message_type is not None:
                _fill(target[key], variant, depth + 1)
            else:
                target[key] = _scalar(value_field, 2)
        elif field.message_type is not None:
            if depth > 6:
                continue
            if field.is_repeated:
                for _ in range(2):
                    _fill(getattr(message, field.name).add(), variant, depth + 1)
            else:
                _fill(getattr(message, field.name), variant, depth + 1)
                getattr(message, field.name).SetInParent()
        elif field.is_repeated:
            getattr(message, field.name).extend([_scalar(field, 1), _scalar(field, 2)])
        else:
            setattr(message, field.name, _scalar(field, field.number))


def _scalar(field: _d.FieldDescriptor, salt: int) -> object:
    t = field.type
    if t == field.TYPE_STRING:
        return f"{field.name}-{salt}"
    if t == field.TYPE_BYTES:
        return f"{field.name}-{salt}".encode() + b"\xff"
    if t == field.TYPE_BOOL:
        return True
    if t == field.TYPE_ENUM:
        values = field.enum_type.values
        return values[salt % len(values)].number or values[-1].number
    if t in (field.TYPE_FLOAT, field.TYPE_DOUBLE):
        return 0.5 + salt
    return 7 * salt + len(field.name)  # every integer kind, all values positive and small


_MESSAGE_NAMES = sorted(pb.DESCRIPTOR.message_types_by_name) + [
    f"config:{name}" for name in sorted(mc.DESCRIPTOR.message_types_by_name)
]


def _classes(name: str) -> tuple[type[Message], type[Message]]:
    if name.startswith("config:"):
        name = name.removeprefix("config:")
        return getattr(mc, name), getattr(triton_mc, name)
    return getattr(pb, name), getattr(triton_pb, name)


@pytest.mark.parametrize("name", _MESSAGE_NAMES)
def test_every_field_of_every_message_round_trips_through_tritonclient(name: str) -> None:
    ours_cls, theirs_cls = _classes(name)
    for variant in range(5):  # 5 = the largest oneof (InferParameter)
        ours = ours_cls()
        _fill(ours, variant)
        theirs = _cross_parse(ours, theirs_cls)
        assert _as_dict(theirs) == _as_dict(ours)
        assert _as_dict(_cross_parse(theirs, ours_cls)) == _as_dict(ours)


def _triton_infer_request() -> Message:
    image = InferInput("image", [2, 3], "FP32").set_data_from_numpy(np.ones((2, 3), np.float32))
    text = InferInput("text", [2], "BYTES").set_data_from_numpy(np.array([b"a", b"\xff"], dtype=object))
    return _get_inference_request(
        model_name="resnet",
        inputs=[image, text],
        model_version="3",
        request_id="req-1",
        outputs=[InferRequestedOutput("probs", class_count=5)],
        sequence_id=0,
        sequence_start=False,
        sequence_end=False,
        priority=2,
        timeout=1500,
        parameters={"custom": "x", "flag": True, "n": 4},
    )


def test_tritonclient_infer_request_parses_with_our_class_to_the_same_fields() -> None:
    theirs = _triton_infer_request()
    ours = _cross_parse(theirs, pb.ModelInferRequest)
    assert _as_dict(ours) == _as_dict(theirs)
    assert ours.parameters["priority"].uint64_param == 2
    assert ours.inputs[1].name == "text"
    assert len(ours.raw_input_contents) == 2


def test_our_infer_response_parses_with_tritonclients_class() -> None:
    ours = pb.ModelInferResponse(model_name="resnet", model_version="3", id="req-1")
    ours.parameters["sequence_end"].bool_param = True
    out = ours.outputs.add(name="probs", datatype="FP32", shape=[1, 2])
    out.parameters["binary_data_size"].int64_param = 8
    ours.raw_output_contents.append(b"\x00\x00\x80?\x00\x00\x00@")
    theirs = _cross_parse(ours, triton_pb.ModelInferResponse)
    assert _as_dict(theirs) == _as_dict(ours)
    assert theirs.raw_output_contents[0] == ours.raw_output_contents[0]


def test_our_model_config_response_parses_with_tritonclients_class() -> None:
    config = text_format.Parse(DYNAMIC_BATCHING_CONFIG, mc.ModelConfig())
    ours = pb.ModelConfigResponse(config=config)
    theirs = _cross_parse(ours, triton_pb.ModelConfigResponse)
    assert _as_dict(theirs) == _as_dict(ours)
    assert theirs.config.dynamic_batching.priority_levels == 3


def test_our_model_statistics_response_parses_with_tritonclients_class() -> None:
    duration = pb.StatisticDuration
    stats = pb.ModelStatistics(
        name="resnet",
        version="1",
        last_inference=1_700_000_000_000,
        inference_count=40,
        execution_count=10,
        inference_stats=pb.InferStatistics(
            success=duration(count=40, ns=4_000_000),
            queue=duration(count=40, ns=100_000),
            compute_input=duration(count=10, ns=50_000),
            compute_infer=duration(count=10, ns=3_000_000),
            compute_output=duration(count=10, ns=20_000),
        ),
        batch_stats=[pb.InferBatchStatistics(batch_size=4, compute_infer=duration(count=10, ns=3_000_000))],
    )
    ours = pb.ModelStatisticsResponse(model_stats=[stats])
    theirs = _cross_parse(ours, triton_pb.ModelStatisticsResponse)
    assert _as_dict(theirs) == _as_dict(ours)
    assert theirs.model_stats[0].inference_stats.compute_infer.ns == 3_000_000


def test_our_repository_index_response_parses_with_tritonclients_class() -> None:
    index = pb.RepositoryIndexResponse.ModelIndex
    ours = pb.RepositoryIndexResponse(
        models=[
            index(name="resnet", version="1", state="READY"),
            index(name="broken", version="2", state="UNAVAILABLE", reason="load failed"),
        ]
    )
    theirs = _cross_parse(ours, triton_pb.RepositoryIndexResponse)
    assert _as_dict(theirs) == _as_dict(ours)
    assert theirs.models[1].reason == "load failed"


# ---------------------------------------------------------------- real Triton config.pbtxt files

DYNAMIC_BATCHING_CONFIG = """
name: "resnet50"
platform: "onnxruntime_onnx"
backend: "onnxruntime"
max_batch_size: 32
version_policy: { specific: { versions: [1, 3] } }
input [
  {
    name: "input"
    data_type: TYPE_FP32
    format: FORMAT_NCHW
    dims: [ 3, 224, 224 ]
    reshape: { shape: [ 1, 3, 224, 224 ] }
  }
]
output [
  {
    name: "probs"
    data_type: TYPE_FP32
    dims: [ 1000 ]
    label_filename: "labels.txt"
  }
]
instance_group [
  {
    name: "gpu_group"
    kind: KIND_GPU
    count: 2
    gpus: [ 0, 1 ]
    rate_limiter { resources [ { name: "R1" count: 2 } ] priority: 1 }
  },
  { kind: KIND_CPU count: 1 }
]
dynamic_batching {
  preferred_batch_size: [ 4, 8 ]
  max_queue_delay_microseconds: 100
  preserve_ordering: true
  priority_levels: 3
  default_priority_level: 2
  default_queue_policy {
    timeout_action: DELAY
    default_timeout_microseconds: 50000
    allow_timeout_override: true
    max_queue_size: 64
  }
  priority_queue_policy {
    key: 1
    value: { timeout_action: REJECT max_queue_size: 8 }
  }
}
optimization {
  graph { level: 1 }
  priority: PRIORITY_MAX
  execution_accelerators {
    gpu_execution_accelerator : [ {
      name : "tensorrt"
      parameters { key: "precision_mode" value: "FP16" }
      parameters { key: "max_workspace_size_bytes" value: "1073741824" }
    } ]
    cpu_execution_accelerator : [ { name : "openvino" } ]
  }
  cuda { graphs: true graph_spec [ { batch_size: 4 input { key: "input" value { dim: [ 3, 224, 224 ] } } } ] }
  input_pinned_memory { enable: false }
}
parameters { key: "intra_op_thread_count" value: { string_value: "4" } }
parameters [ { key: "cudnn_conv_algo_search" value: { string_value: "1" } } ]
model_warmup [
  {
    name: "zeros"
    batch_size: 4
    count: 2
    inputs { key: "input" value: { data_type: TYPE_FP32 dims: [ 3, 224, 224 ] zero_data: true } }
  }
]
response_cache { enable: true }
model_transaction_policy { decoupled: false }
metric_tags { key: "team" value: "vision" }
"""

SEQUENCE_BATCHING_CONFIG = """
name: "stateful"
backend: "onnxruntime"
max_batch_size: 8
input [ { name: "INPUT" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [ { name: "OUTPUT" data_type: TYPE_INT32 dims: [ 1 ] } ]
sequence_batching {
  max_sequence_idle_microseconds: 5000000
  oldest { max_candidate_sequences: 4 preferred_batch_size: [ 2, 4 ] max_queue_delay_microseconds: 100 }
  control_input [
    { name: "START" control [ { kind: CONTROL_SEQUENCE_START fp32_false_true: [ 0, 1 ] } ] },
    { name: "READY" control [ { kind: CONTROL_SEQUENCE_READY int32_false_true: [ 0, 1 ] } ] },
    { name: "CORRID" control [ { kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_UINT64 } ] }
  ]
  state [
    {
      input_name: "INPUT_STATE"
      output_name: "OUTPUT_STATE"
      data_type: TYPE_INT32
      dims: [ -1 ]
      initial_state: { data_type: TYPE_INT32 dims: [ 1 ] zero_data: true name: "init" }
    }
  ]
}
instance_group [ { kind: KIND_CPU count: 2 } ]
"""

ENSEMBLE_CONFIG = """
name: "pipeline"
platform: "ensemble"
max_batch_size: 4
input [ { name: "RAW" data_type: TYPE_STRING dims: [ 1 ] } ]
output [ { name: "LABEL" data_type: TYPE_STRING dims: [ 1 ] } ]
ensemble_scheduling {
  step [
    { model_name: "preprocess" model_version: -1 input_map { key: "in" value: "RAW" }
      output_map { key: "out" value: "tensor" } },
    { model_name: "classifier" model_version: 2 input_map { key: "x" value: "tensor" }
      output_map { key: "y" value: "LABEL" } }
  ]
}
"""


@pytest.mark.parametrize(
    "text",
    [DYNAMIC_BATCHING_CONFIG, SEQUENCE_BATCHING_CONFIG, ENSEMBLE_CONFIG],
    ids=["dynamic_batching", "sequence_batching", "ensemble"],
)
def test_triton_config_pbtxt_parses_exactly_as_tritonclients_model_config(text: str) -> None:
    ours = text_format.Parse(text, mc.ModelConfig())
    theirs = text_format.Parse(text, triton_mc.ModelConfig())
    assert _as_dict(ours) == _as_dict(theirs)


def test_dynamic_batching_config_parses_into_the_expected_values() -> None:
    config = text_format.Parse(DYNAMIC_BATCHING_CONFIG, mc.ModelConfig())
    assert config.WhichOneof("scheduling_choice") == "dynamic_batching"
    batching = config.dynamic_batching
    assert list(batching.preferred_batch_size) == [4, 8]
    assert batching.default_queue_policy.timeout_action == mc.ModelQueuePolicy.DELAY
    assert batching.priority_queue_policy[1].max_queue_size == 8
    assert config.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU
    assert list(config.instance_group[0].gpus) == [0, 1]
    assert list(config.version_policy.specific.versions) == [1, 3]
    accelerator = config.optimization.execution_accelerators.gpu_execution_accelerator[0]
    assert accelerator.name == "tensorrt"
    assert accelerator.parameters["precision_mode"] == "FP16"
    assert config.parameters["intra_op_thread_count"].string_value == "4"
    assert config.model_warmup[0].inputs["input"].zero_data


def test_sequence_batching_config_parses_into_the_expected_values() -> None:
    config = text_format.Parse(SEQUENCE_BATCHING_CONFIG, mc.ModelConfig())
    batching = config.sequence_batching
    assert batching.WhichOneof("strategy_choice") == "oldest"
    assert batching.control_input[2].control[0].kind == mc.ModelSequenceBatching.Control.CONTROL_SEQUENCE_CORRID
    assert batching.state[0].initial_state[0].zero_data


def test_config_with_an_unknown_field_is_rejected() -> None:
    with pytest.raises(text_format.ParseError, match="no_such_field"):
        text_format.Parse('name: "m"\nno_such_field: 1\n', mc.ModelConfig())


# ---------------------------------------------------------------- server reflection with the private pool


def test_every_type_is_findable_by_symbol_in_the_private_pool() -> None:
    assert POOL.FindFileContainingSymbol("inference.GRPCInferenceService").name == "grpc_service.proto"
    assert POOL.FindFileContainingSymbol("inference.ModelInferRequest").name == "grpc_service.proto"
    assert POOL.FindFileContainingSymbol("inference.ModelConfig").name == "model_config.proto"
    assert POOL.FindFileContainingSymbol("inference.DataType").name == "model_config.proto"


@pytest.fixture
def reflection_server() -> Iterator[str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
        grpc_service_pb2_grpc.GRPCInferenceServiceServicer(), server
    )
    service = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
    reflection.enable_server_reflection([service, reflection.SERVICE_NAME], server, pool=POOL)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None)


def test_server_reflection_serves_our_service_from_the_private_pool(reflection_server: str) -> None:
    with grpc.insecure_channel(reflection_server) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        assert "inference.GRPCInferenceService" in database.get_services()
        client_pool = descriptor_pool.DescriptorPool(database)
        service = client_pool.FindServiceByName("inference.GRPCInferenceService")
        assert service.FindMethodByName("ModelInfer").output_type.full_name == "inference.ModelInferResponse"
        config = client_pool.FindMessageTypeByName("inference.ModelConfig")
        assert config.fields_by_name["model_metrics"].number == 26
