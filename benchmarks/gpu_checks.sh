#!/usr/bin/env bash
# On a CUDA machine, from the repository root: the CUDA-only tests, then the GPU benchmark.
# Needs no data folder, no GPT-2 vocabulary files and no network (random weights, token ids, and
# Python's own documentation as training text), and nothing installed beyond torch, transformers,
# tiktoken, safetensors, regex, numpy, tqdm and pytest. About 7-9 minutes on an H200.
#
#   bash benchmarks/gpu_checks.sh [RESULTS_DIR]     # default RESULTS_DIR: gpu-results
set -uo pipefail
out=${1:-gpu-results}
mkdir -p "$out"
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
  python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
} 2>&1 | tee "$out/device.txt"
# The files holding `cuda` tests (other test modules may need data or packages a GPU box lacks).
timeout 360 python -m pytest -q -m cuda -p no:cacheprovider tests/models/test_loss.py \
    tests/inference/test_static_decode.py tests/core/test_device.py tests/training/test_loop.py 2>&1 | tee "$out/cuda-tests.txt"
timeout 420 python -m benchmarks.gpu --json "$out/gpu.json" 2>&1 | tee "$out/benchmark.txt"
