"""Per-model configuration: Triton's config.pbtxt, completed from the ONNX graph and turned
into the options the runtime takes. Reading and checking the file is config_file.py.

A config field that this server would not honour is an error at load, never ignored.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from serve.datatypes import CONFIG_TO_OIP, OIP_TO_CONFIG
from serve.errors import ModelLoadError
from serve.protocol import model_config_pb2 as mc
from serve.repository.config_file import BACKEND, DEFAULT_MODEL_FILENAME, PLATFORM
from serve.runtime.options import RuntimeOptions
from serve.runtime.providers import Accelerator
from serve.types import GraphTensor, TensorSpec

_BOOL_TRUE = {"1", "true", "yes", "on"}
# config.input or config.output: a repeated protobuf field of ModelInput or ModelOutput entries.
TensorEntries = Any
# Triton's optimization.graph.level: -1 basic only, 1 extended, anything else all (onnxruntime_backend).
_GRAPH_LEVELS = {-1: "basic", 1: "extended"}


def _config_dims(graph: GraphTensor, batching: bool) -> list[int]:
    return list(graph.shape[1:] if batching else graph.shape)


def _batchable(inputs: list[GraphTensor], outputs: list[GraphTensor]) -> bool:
    # A tensor of unknown rank cannot say; without a config it is refused anyway (_complete_tensors).
    return all(t.rank_known and len(t.shape) >= 1 and t.shape[0] == -1 for t in [*inputs, *outputs])


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
            # Unknown rank: the config's dims say what the tensor is, after the batch dimension.
            if tensor.rank_known and (not tensor.shape or tensor.shape[0] != -1):
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


def _complete_tensors(
    declared: TensorEntries, graph: list[GraphTensor], batching: bool, what: str, *, require_all: bool
) -> None:
    by_name = {t.name: t for t in graph}
    if not declared:
        for tensor in graph:
            if not tensor.rank_known:
                raise ModelLoadError(_unknown_rank_message(tensor, what))
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
        if not found.rank_known:
            continue  # the graph says nothing about its shape: the config's dims are the shape
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


def _unknown_rank_message(tensor: GraphTensor, what: str) -> str:
    return (
        f"{what} '{tensor.name}' has no shape in the ONNX graph (its rank is unknown, not 0): "
        f'give its dims in config.pbtxt, e.g. {what} [ {{ name: "{tensor.name}" '
        f"data_type: {OIP_TO_CONFIG.get(tensor.datatype, tensor.datatype)} dims: [ ... ] }} ]"
    )


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
        if list(e.dims) == [1]
        and e.name in by_name
        and by_name[e.name].rank_known
        and not _config_dims(by_name[e.name], batching)
    )


def tensor_specs(entries: Iterable[mc.ModelInput | mc.ModelOutput]) -> list[TensorSpec]:
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


def runtime_options(
    config: mc.ModelConfig, *, allow_spinning: bool, intra_op_threads: int, workers: int = 1
) -> RuntimeOptions:
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
        workers=workers,
        inter_op_threads=_int_parameter(config, "inter_op_thread_count"),
        parallel_execution=execution_mode.strip() == "1",
        optimization_level=level_name,
        allow_spinning=_bool_parameter(config, "allow_spinning", allow_spinning),
        enable_mem_arena=_bool_parameter(config, "enable_mem_arena", True),
        enable_mem_pattern=_bool_parameter(config, "enable_mem_pattern", True),
        extra_session_config={k: v.string_value for k, v in config.parameters.items() if k.startswith("session.")},
    )
