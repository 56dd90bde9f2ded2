"""How to run one model version: instances, devices and onnxruntime session settings.

Plain data, free of onnxruntime, so that the repository can build it from a model's config
without loading the runtime.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from serve.runtime.providers import Accelerator


@dataclass(frozen=True, slots=True)
class RuntimeOptions:
    instance_count: int = 1
    device_kind: str = "cpu"  # "cpu", "gpu" or "auto"
    gpu_ids: tuple[int, ...] = ()
    accelerators: tuple[Accelerator, ...] = ()
    intra_op_threads: int = 0  # 0 = the available CPUs divided among every instance of every worker
    workers: int = 1  # worker processes, each running its own instances
    inter_op_threads: int = 0
    parallel_execution: bool = False
    optimization_level: str = "all"
    allow_spinning: bool = False
    enable_mem_arena: bool = True
    enable_mem_pattern: bool = True
    extra_session_config: dict[str, str] = field(default_factory=dict)
