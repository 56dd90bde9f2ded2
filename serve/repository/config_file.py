"""A model's config.pbtxt (Triton's text format for the ModelConfig message): read, parsed,
checked against what this server honours, and its version policy.

Free of onnxruntime, so the monitor and `serve baseline` can read configs cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from google.protobuf import json_format, text_format

from serve.errors import ModelLoadError
from serve.paths import confined
from serve.protocol import model_config_pb2 as mc

CONFIG_FILENAME = "config.pbtxt"
DEFAULT_MODEL_FILENAME = "model.onnx"
PLATFORM = "onnxruntime_onnx"
BACKEND = "onnxruntime"

# Triton onnxruntime backend parameter names we honour; `session.*` keys go to onnxruntime as they are.
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
    # The model's payload log settings over the server's flags; read and checked by serve/payload_log/model_options.py.
    "payload_log_mode",
    "payload_log_sample",
    "payload_log_redact",
    "payload_log_data_classification",
}


def read_config(model_dir: Path) -> tuple[mc.ModelConfig, bool]:
    """The model's config.pbtxt (or an empty config) and whether a file was there."""
    path = confined(model_dir, CONFIG_FILENAME, what="config file")
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
    config = mc.ModelConfig()
    try:
        json_format.Parse(text, config)
    except json_format.ParseError as exc:
        raise ModelLoadError(f"config parameter: {exc}") from None
    return config


def check_supported(config: mc.ModelConfig) -> None:
    """ModelLoadError for the first field this server does not honour, or a value it cannot take."""
    if config.platform not in ("", PLATFORM):
        raise ModelLoadError(f"platform '{config.platform}' is not supported; this server runs {PLATFORM}")
    if config.backend not in ("", BACKEND):
        raise ModelLoadError(f"backend '{config.backend}' is not supported; this server runs {BACKEND}")
    scheduling = config.WhichOneof("scheduling_choice")
    if scheduling in ("sequence_batching", "ensemble_scheduling"):
        _refuse(scheduling)
    if config.batch_input:
        _refuse("batch_input")
    if config.batch_output:
        _refuse("batch_output")
    _check_tensors(config)
    if config.HasField("dynamic_batching"):
        _check_dynamic_batching(config)
    _check_instance_groups(config)
    _check_features(config)
    for key in config.parameters:
        if key not in _KNOWN_PARAMETERS and not key.startswith("session."):
            raise ModelLoadError(
                f"config parameter '{key}' is not supported; known: {sorted(_KNOWN_PARAMETERS)} and session.*"
            )
    for warmup in config.model_warmup:
        for name, data in warmup.inputs.items():
            if data.WhichOneof("input_data_type") is None:
                raise ModelLoadError(f"model_warmup '{warmup.name}' input '{name}' names no data")


def _refuse(what: str) -> NoReturn:
    raise ModelLoadError(f"config field {what} is not supported by this server")


def _check_tensors(config: mc.ModelConfig) -> None:
    for tensor in config.input:
        if tensor.HasField("reshape"):
            _refuse(f"input[{tensor.name}].reshape")
        if tensor.is_shape_tensor:
            _refuse(f"input[{tensor.name}].is_shape_tensor")
        if tensor.allow_ragged_batch:
            _refuse(f"input[{tensor.name}].allow_ragged_batch")
        if tensor.optional:
            _refuse(f"input[{tensor.name}].optional")
    for output in config.output:
        if output.HasField("reshape"):
            _refuse(f"output[{output.name}].reshape")
        if output.is_shape_tensor:
            _refuse(f"output[{output.name}].is_shape_tensor")


def _check_dynamic_batching(config: mc.ModelConfig) -> None:
    db = config.dynamic_batching
    policies = [db.default_queue_policy, *db.priority_queue_policy.values()]
    for policy in policies:
        if policy.timeout_action == mc.ModelQueuePolicy.DELAY:
            _refuse("dynamic_batching queue policy timeout_action DELAY")
    if db.priority_levels and db.default_priority_level > db.priority_levels:
        raise ModelLoadError("dynamic_batching.default_priority_level is above priority_levels")
    for size in db.preferred_batch_size:
        if config.max_batch_size and size > config.max_batch_size:
            raise ModelLoadError(f"preferred_batch_size {size} is above max_batch_size")


def _check_instance_groups(config: mc.ModelConfig) -> None:
    for group in config.instance_group:
        if group.kind == mc.ModelInstanceGroup.KIND_MODEL:
            _refuse("instance_group.kind KIND_MODEL")
        if group.HasField("rate_limiter"):
            _refuse("instance_group.rate_limiter")
        if group.secondary_devices:
            _refuse("instance_group.secondary_devices")
        if group.passive:
            _refuse("instance_group.passive")
        if group.count < 0:
            raise ModelLoadError("instance_group.count must not be negative")


def _check_features(config: mc.ModelConfig) -> None:
    """Triton features this server does not have: decoupled models, agents, caching, custom ops, CUDA graphs."""
    if config.model_transaction_policy.decoupled:
        _refuse("model_transaction_policy.decoupled")
    if config.HasField("model_repository_agents") and config.model_repository_agents.agents:
        _refuse("model_repository_agents")
    if config.response_cache.enable:
        _refuse("response_cache")
    if config.HasField("model_operations") and config.model_operations.op_library_filename:
        _refuse("model_operations")
    if config.HasField("optimization"):
        opt = config.optimization
        if opt.cuda.graphs:
            _refuse("optimization.cuda.graphs")
        for acc in opt.execution_accelerators.gpu_execution_accelerator:
            if acc.name not in ("tensorrt", "cuda"):
                _refuse(f"optimization.execution_accelerators.gpu_execution_accelerator '{acc.name}'")
        for acc in opt.execution_accelerators.cpu_execution_accelerator:
            _refuse(f"optimization.execution_accelerators.cpu_execution_accelerator '{acc.name}'")


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
