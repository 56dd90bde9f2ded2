"""Per-model configuration: Triton's config.pbtxt, completed from the ONNX graph, checked,
and turned into the options the runtime and the batcher take.

A config field that this server would not honour is an error at load, never ignored.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format

from serve.batching.policy import BatchingPolicy, QueuePolicy
from serve.datatypes import CONFIG_TO_OIP, OIP_TO_CONFIG
from serve.errors import ModelLoadError
from serve.protocol import model_config_pb2 as mc
from serve.runtime.onnx_runner import GraphTensor, RuntimeOptions
from serve.runtime.providers import Accelerator
from serve.types import TensorSpec

CONFIG_FILENAME = "config.pbtxt"
DEFAULT_MODEL_FILENAME = "model.onnx"
PLATFORM = "onnxruntime_onnx"
BACKEND = "onnxruntime"

# Triton onnxruntime backend parameter names we honour; `session.*` keys go to onnxruntime as they are.
_BOOL_TRUE = {"1", "true", "yes", "on"}
_KNOWN_PARAMETERS = {
    "intra_op_thread_count",
    "inter_op_thread_count",
    "execution_mode",
    "enable_mem_arena",
    "enable_mem_pattern",
    "allow_spinning",
    "graph_optimization_level",
    # Declares which input features are categorical, for `serve baseline` and the statistics;
    # the runtime does not read it.
    "categorical_features",
    # "false" serves a graph's ZipMap outputs as they are (and so refuses them) instead of as tensors.
    "rewrite_zipmap",
}
# Triton's optimization.graph.level: -1 basic only, 1 extended, anything else all (onnxruntime_backend).
_GRAPH_LEVELS = {-1: "basic", 1: "extended"}


def read_config(model_dir: Path) -> tuple[mc.ModelConfig, bool]:
    """The model's config.pbtxt (or an empty config) and whether a file was there."""
    path = model_dir / CONFIG_FILENAME
    config = mc.ModelConfig()
    if not path.is_file():
        return config, False
    try:
        text_format.Parse(path.read_text(encoding="utf-8"), config)
    except (text_format.ParseError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{CONFIG_FILENAME}: {exc}") from None
    return config, True


def parse_config_json(text: str) -> mc.ModelConfig:
    """A config given as JSON (repository load's "config" parameter)."""
    from google.protobuf import json_format

    config = mc.ModelConfig()
    try:
        json_format.Parse(text, config)
    except json_format.ParseError as exc:
        raise ModelLoadError(f"config parameter: {exc}") from None
    return config


def check_supported(config: mc.ModelConfig) -> None:
    def refuse(what: str) -> None:
        raise ModelLoadError(f"config field {what} is not supported by this server")

    if config.platform not in ("", PLATFORM):
        raise ModelLoadError(f"platform '{config.platform}' is not supported; this server runs {PLATFORM}")
    if config.backend not in ("", BACKEND):
        raise ModelLoadError(f"backend '{config.backend}' is not supported; this server runs {BACKEND}")
    scheduling = config.WhichOneof("scheduling_choice")
    if scheduling in ("sequence_batching", "ensemble_scheduling"):
        refuse(scheduling)
    if config.batch_input:
        refuse("batch_input")
    if config.batch_output:
        refuse("batch_output")
    for tensor in config.input:
        if tensor.HasField("reshape"):
            refuse(f"input[{tensor.name}].reshape")
        if tensor.is_shape_tensor:
            refuse(f"input[{tensor.name}].is_shape_tensor")
        if tensor.allow_ragged_batch:
            refuse(f"input[{tensor.name}].allow_ragged_batch")
        if tensor.optional:
            refuse(f"input[{tensor.name}].optional")
    for tensor in config.output:
        if tensor.HasField("reshape"):
            refuse(f"output[{tensor.name}].reshape")
        if tensor.is_shape_tensor:
            refuse(f"output[{tensor.name}].is_shape_tensor")
    if config.HasField("dynamic_batching"):
        db = config.dynamic_batching
        policies = [db.default_queue_policy, *db.priority_queue_policy.values()]
        for policy in policies:
            if policy.timeout_action == mc.ModelQueuePolicy.DELAY:
                refuse("dynamic_batching queue policy timeout_action DELAY")
        if db.priority_levels and db.default_priority_level > db.priority_levels:
            raise ModelLoadError("dynamic_batching.default_priority_level is above priority_levels")
        for size in db.preferred_batch_size:
            if config.max_batch_size and size > config.max_batch_size:
                raise ModelLoadError(f"preferred_batch_size {size} is above max_batch_size")
    for group in config.instance_group:
        if group.kind == mc.ModelInstanceGroup.KIND_MODEL:
            refuse("instance_group.kind KIND_MODEL")
        if group.HasField("rate_limiter"):
            refuse("instance_group.rate_limiter")
        if group.secondary_devices:
            refuse("instance_group.secondary_devices")
        if group.passive:
            refuse("instance_group.passive")
        if group.count < 0:
            raise ModelLoadError("instance_group.count must not be negative")
    if config.model_transaction_policy.decoupled:
        refuse("model_transaction_policy.decoupled")
    if config.HasField("model_repository_agents") and config.model_repository_agents.agents:
        refuse("model_repository_agents")
    if config.response_cache.enable:
        refuse("response_cache")
    if config.HasField("model_operations") and config.model_operations.op_library_filename:
        refuse("model_operations")
    if config.HasField("optimization"):
        opt = config.optimization
        if opt.cuda.graphs:
            refuse("optimization.cuda.graphs")
        for acc in opt.execution_accelerators.gpu_execution_accelerator:
            if acc.name not in ("tensorrt", "cuda"):
                refuse(f"optimization.execution_accelerators.gpu_execution_accelerator '{acc.name}'")
        for acc in opt.execution_accelerators.cpu_execution_accelerator:
            refuse(f"optimization.execution_accelerators.cpu_execution_accelerator '{acc.name}'")
    for key in config.parameters:
        if key not in _KNOWN_PARAMETERS and not key.startswith("session."):
            raise ModelLoadError(
                f"config parameter '{key}' is not supported; known: {sorted(_KNOWN_PARAMETERS)} and session.*"
            )
    for warmup in config.model_warmup:
        for name, data in warmup.inputs.items():
            if data.WhichOneof("input_data_type") is None:
                raise ModelLoadError(f"model_warmup '{warmup.name}' input '{name}' names no data")


def _config_dims(graph: GraphTensor, batching: bool) -> list[int]:
    return list(graph.shape[1:] if batching else graph.shape)


def _batchable(inputs: list[GraphTensor], outputs: list[GraphTensor]) -> bool:
    return all(len(t.shape) >= 1 and t.shape[0] == -1 for t in [*inputs, *outputs])


def complete_config(
    config: mc.ModelConfig,
    *,
    name: str,
    from_file: bool,
    inputs: list[GraphTensor],
    outputs: list[GraphTensor],
    default_max_batch_size: int,
    cuda_available: bool,
) -> mc.ModelConfig:
    """Fill what the config leaves out from the graph (as Triton's auto-complete does) and check the rest."""
    config = _copy(config)
    if config.name and config.name != name:
        raise ModelLoadError(f"config name '{config.name}' does not match the model directory '{name}'")
    config.name = name
    config.platform = PLATFORM
    config.backend = BACKEND
    if not config.default_model_filename:
        config.default_model_filename = DEFAULT_MODEL_FILENAME
    if not from_file and config.max_batch_size == 0 and _batchable(inputs, outputs):
        config.max_batch_size = default_max_batch_size
        if config.WhichOneof("scheduling_choice") is None:
            config.dynamic_batching.SetInParent()
    batching = config.max_batch_size > 0
    if batching:
        for tensor in [*inputs, *outputs]:
            if not tensor.shape or tensor.shape[0] != -1:
                raise ModelLoadError(
                    f"max_batch_size is {config.max_batch_size} but '{tensor.name}' has no variable first "
                    f"dimension in the ONNX graph (shape {list(tensor.shape)}); set max_batch_size: 0"
                )
    _complete_tensors(config.input, inputs, batching, "input", require_all=True)
    _complete_tensors(config.output, outputs, batching, "output", require_all=False)
    if not config.HasField("version_policy"):
        config.version_policy.latest.num_versions = 1
    if not config.instance_group:
        config.instance_group.add(count=1, kind=mc.ModelInstanceGroup.KIND_CPU)
    for i, group in enumerate(config.instance_group):
        if not group.name:
            group.name = f"{name}_{i}" if len(config.instance_group) > 1 else name
        if group.count == 0:
            group.count = 1
        if group.kind == mc.ModelInstanceGroup.KIND_AUTO:
            group.kind = (
                mc.ModelInstanceGroup.KIND_GPU if cuda_available or group.gpus else mc.ModelInstanceGroup.KIND_CPU
            )
    return config


def _copy(config: mc.ModelConfig) -> mc.ModelConfig:
    out = mc.ModelConfig()
    out.CopyFrom(config)
    return out


def _complete_tensors(declared, graph: list[GraphTensor], batching: bool, what: str, *, require_all: bool) -> None:
    by_name = {t.name: t for t in graph}
    if not declared:
        for tensor in graph:
            declared.add(
                name=tensor.name,
                data_type=mc.DataType.Value(OIP_TO_CONFIG[tensor.datatype]),
                dims=_config_dims(tensor, batching),
            )
        return
    seen = set()
    for entry in declared:
        found = by_name.get(entry.name)
        if found is None:
            raise ModelLoadError(
                f"config {what} '{entry.name}' is not an {what} of the ONNX graph (graph has {sorted(by_name)})"
            )
        seen.add(entry.name)
        declared_type = CONFIG_TO_OIP.get(mc.DataType.Name(entry.data_type), "INVALID")
        if declared_type != found.datatype:
            raise ModelLoadError(
                f"config {what} '{entry.name}' has data_type {mc.DataType.Name(entry.data_type)} but the "
                f"ONNX graph says {OIP_TO_CONFIG.get(found.datatype, found.datatype)}"
            )
        graph_dims = _config_dims(found, batching)
        dims = list(entry.dims)
        if not graph_dims and dims in ([], [1]):
            continue  # dims [1] for a graph scalar is how Triton configures scalars (see scalars_as_one)
        if len(dims) != len(graph_dims) or any(g != -1 and d != g for d, g in zip(dims, graph_dims, strict=True)):
            raise ModelLoadError(
                f"config {what} '{entry.name}' has dims {dims} but the ONNX graph gives {graph_dims}"
                + (" after the batch dimension" if batching else "")
            )
    missing = set(by_name) - seen
    if require_all and missing:
        raise ModelLoadError(f"config lists no entry for graph {what}(s) {sorted(missing)}")


def scalars_as_one(
    entries: Iterable[mc.ModelInput | mc.ModelOutput], graph: list[GraphTensor], batching: bool
) -> frozenset[str]:
    """Names the config declares with dims [1] where the graph has no dimension (after the batch
    dimension): requests send them with that 1, which the runner drops before running (inputs) or
    adds to what the graph returns (outputs)."""
    by_name = {t.name: t for t in graph}
    return frozenset(
        e.name
        for e in entries
        if list(e.dims) == [1] and e.name in by_name and not _config_dims(by_name[e.name], batching)
    )


def tensor_specs(entries) -> list[TensorSpec]:
    return [
        TensorSpec(e.name, CONFIG_TO_OIP[mc.DataType.Name(e.data_type)], tuple(int(d) for d in e.dims)) for e in entries
    ]


def _bool_parameter(config: mc.ModelConfig, key: str, default: bool) -> bool:
    if key not in config.parameters:
        return default
    return config.parameters[key].string_value.strip().lower() in _BOOL_TRUE


def rewrites_zipmap(config: mc.ModelConfig) -> bool:
    """Whether ZipMap outputs are served as tensors (config parameter rewrite_zipmap, default true)."""
    return _bool_parameter(config, "rewrite_zipmap", True)


def _int_parameter(config: mc.ModelConfig, key: str) -> int:
    if key not in config.parameters:
        return 0
    raw = config.parameters[key].string_value
    try:
        return int(raw)
    except ValueError:
        raise ModelLoadError(f"config parameter '{key}' must be an integer, got '{raw}'") from None


def runtime_options(config: mc.ModelConfig, *, allow_spinning: bool, intra_op_threads: int) -> RuntimeOptions:
    """Runtime options from the raw config (instance groups, accelerators, onnxruntime parameters)."""
    groups = list(config.instance_group) or [mc.ModelInstanceGroup(count=1)]
    count = sum(max(1, g.count) for g in groups)
    kinds = {g.kind for g in groups}
    gpu_ids: tuple[int, ...] = tuple(sorted({gpu for g in groups for gpu in g.gpus}))
    if mc.ModelInstanceGroup.KIND_GPU in kinds:
        device_kind = "gpu"
    elif kinds == {mc.ModelInstanceGroup.KIND_CPU}:
        device_kind = "cpu"
    else:
        device_kind = "auto"
    accelerators = tuple(
        Accelerator(a.name, dict(a.parameters))
        for a in config.optimization.execution_accelerators.gpu_execution_accelerator
    )
    level_name = "all"
    if config.HasField("optimization") and config.optimization.HasField("graph"):
        level_name = _GRAPH_LEVELS.get(config.optimization.graph.level, "all")
    if "graph_optimization_level" in config.parameters:
        level_name = config.parameters["graph_optimization_level"].string_value.strip().lower()
    execution_mode = config.parameters["execution_mode"].string_value if "execution_mode" in config.parameters else ""
    return RuntimeOptions(
        instance_count=count,
        device_kind=device_kind,
        gpu_ids=gpu_ids,
        accelerators=accelerators,
        intra_op_threads=_int_parameter(config, "intra_op_thread_count") or intra_op_threads,
        inter_op_threads=_int_parameter(config, "inter_op_thread_count"),
        parallel_execution=execution_mode.strip() == "1",
        optimization_level=level_name,
        allow_spinning=_bool_parameter(config, "allow_spinning", allow_spinning),
        enable_mem_arena=_bool_parameter(config, "enable_mem_arena", True),
        enable_mem_pattern=_bool_parameter(config, "enable_mem_pattern", True),
        extra_session_config={k: v.string_value for k, v in config.parameters.items() if k.startswith("session.")},
    )


def _queue_policy(policy: mc.ModelQueuePolicy) -> QueuePolicy:
    return QueuePolicy(
        max_queue_size=policy.max_queue_size,
        default_timeout_us=policy.default_timeout_microseconds,
        allow_timeout_override=policy.allow_timeout_override,
    )


def batching_policy(config: mc.ModelConfig, instances: int) -> BatchingPolicy:
    dynamic = config.HasField("dynamic_batching")
    db = config.dynamic_batching
    try:
        return _batching_policy(config, db, dynamic, instances)
    except ValueError as exc:
        raise ModelLoadError(f"dynamic_batching: {exc}") from None


def _batching_policy(
    config: mc.ModelConfig, db: mc.ModelDynamicBatching, dynamic: bool, instances: int
) -> BatchingPolicy:
    return BatchingPolicy(
        max_batch_size=config.max_batch_size,
        dynamic=dynamic and config.max_batch_size > 0,
        preferred_batch_sizes=tuple(db.preferred_batch_size),
        max_queue_delay_us=db.max_queue_delay_microseconds,
        max_in_flight=max(1, instances),
        priority_levels=db.priority_levels,
        default_priority_level=db.default_priority_level,
        default_queue_policy=_queue_policy(db.default_queue_policy),
        priority_queue_policies={int(k): _queue_policy(v) for k, v in db.priority_queue_policy.items()},
    )


@dataclass(frozen=True, slots=True)
class VersionPolicy:
    kind: str  # "latest", "all", "specific"
    latest: int = 1
    specific: tuple[int, ...] = ()

    def select(self, available: list[int]) -> list[int]:
        ordered = sorted(available)
        if self.kind == "all":
            return ordered
        if self.kind == "specific":
            return [v for v in ordered if v in self.specific]
        return ordered[-max(1, self.latest) :]


def version_policy(config: mc.ModelConfig) -> VersionPolicy:
    choice = config.version_policy.WhichOneof("policy_choice")
    if choice == "all":
        return VersionPolicy("all")
    if choice == "specific":
        return VersionPolicy("specific", specific=tuple(int(v) for v in config.version_policy.specific.versions))
    if choice == "latest":
        return VersionPolicy("latest", latest=config.version_policy.latest.num_versions or 1)
    return VersionPolicy("latest")
