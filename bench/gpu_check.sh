#!/usr/bin/env bash
# Prepared GPU check (run on a machine with an NVIDIA GPU, from the repository root):
# the GPU, onnxruntime's providers, serve's provider choice for KIND_GPU, GPU vs CPU rows/s.
set -u
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || echo "nvidia-smi not available"
python3 -c "import onnxruntime, sys; print('python', sys.version.split()[0])"
PYTHONPATH=.:${PYTHONPATH:-} python3 -m bench.gpu_check
