"""GPU check: which onnxruntime execution providers exist here, which one a KIND_GPU model
really gets from serve's provider selection, and rows/s of the bench models on GPU vs CPU.

    python -m bench.gpu_check            # or bench/gpu_check.sh on a GPU machine
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from serve.modelgen import mlp, save
from serve.runtime.onnx_runner import OnnxRunner
from serve.runtime.options import RuntimeOptions
from serve.runtime.providers import CUDA

MODELS = {"small": [32, 256, 256, 8], "wide": [512, 2048, 2048, 512]}


def rows_per_s(runner: OnnxRunner, dims: list[int], batch: int, seconds: float = 1.0) -> float:
    x = np.random.default_rng(0).standard_normal((batch, dims[0])).astype(np.float32)
    for _ in range(5):
        runner.run_sync({"input": x})
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        runner.run_sync({"input": x})
        n += 1
    return n * batch / (time.perf_counter() - t0)


def main() -> None:
    print(f"onnxruntime {ort.__version__}, device {ort.get_device()}, providers {ort.get_available_providers()}")
    with tempfile.TemporaryDirectory() as tmp:
        for name, dims in MODELS.items():
            path = Path(tmp) / f"{name}.onnx"
            save(mlp(dims, seed=1), path)
            cpu = OnnxRunner(path, RuntimeOptions(device_kind="cpu"))
            gpu = OnnxRunner(path, RuntimeOptions(device_kind="gpu", gpu_ids=(0,)))
            print(f"{name}: KIND_GPU instance runs on {gpu.providers}")
            for batch in (1, 16, 64):
                c = rows_per_s(cpu, dims, batch)
                line = f"  batch {batch:3d}: CPU {c:12,.0f} rows/s"
                if gpu.providers[0] == CUDA:
                    g = rows_per_s(gpu, dims, batch)
                    line += f"   GPU {g:12,.0f} rows/s   GPU/CPU {g / c:6.2f}x"
                print(line, flush=True)
            cpu.close()
            gpu.close()
    if CUDA not in ort.get_available_providers():
        print("CUDAExecutionProvider is not available in this onnxruntime build: GPU throughput not measured")


if __name__ == "__main__":
    main()
