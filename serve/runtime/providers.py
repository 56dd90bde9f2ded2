"""Choosing onnxruntime execution providers from a model's instance group and accelerators.

Providers are listed in order of preference and always end with CPU, so a model asked to
run on a GPU still loads (and says so) on a machine without one.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"

# Triton's onnxruntime backend spells TensorRT accelerator parameters like this; onnxruntime wants trt_*.
_TRT_PARAMETER_NAMES = {
    "precision_mode": "trt_fp16_enable",
    "max_workspace_size_bytes": "trt_max_workspace_size",
    "trt_engine_cache_enable": "trt_engine_cache_enable",
    "trt_engine_cache_path": "trt_engine_cache_path",
}


@dataclass(frozen=True, slots=True)
class Accelerator:
    name: str  # "tensorrt" or "cuda"
    parameters: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ProviderChoice:
    providers: list[str]
    options: list[dict[str, str]]

    def as_pairs(self) -> list[tuple[str, dict[str, str]]]:
        return list(zip(self.providers, self.options, strict=True))


def _tensorrt_options(device_id: int, params: dict[str, str]) -> dict[str, str]:
    options = {"device_id": str(device_id)}
    for key, value in params.items():
        if key == "precision_mode":
            options["trt_fp16_enable"] = "True" if value.upper() == "FP16" else "False"
        else:
            options[_TRT_PARAMETER_NAMES.get(key, key)] = value
    return options


def choose_providers(
    *,
    device_kind: str,
    device_id: int,
    accelerators: Sequence[Accelerator],
    available: Sequence[str],
) -> ProviderChoice:
    """Providers for one instance. ``device_kind`` is "cpu", "gpu" or "auto" (GPU when present)."""
    providers: list[str] = []
    options: list[dict[str, str]] = []
    wants_gpu = device_kind == "gpu" or (device_kind == "auto" and CUDA in available)
    if wants_gpu:
        for accelerator in accelerators:
            if accelerator.name == "tensorrt":
                if TENSORRT in available:
                    providers.append(TENSORRT)
                    options.append(_tensorrt_options(device_id, accelerator.parameters))
                else:
                    log.warning("TensorRT requested but onnxruntime has no %s; using the next provider", TENSORRT)
        cuda_options = {"device_id": str(device_id)}
        for accelerator in accelerators:
            if accelerator.name == "cuda":
                cuda_options.update(accelerator.parameters)
        if CUDA in available:
            providers.append(CUDA)
            options.append(cuda_options)
        else:
            log.warning("GPU instance requested but onnxruntime offers only %s; falling back to CPU", list(available))
    providers.append(CPU)
    options.append({})
    return ProviderChoice(providers, options)
