"""core/device.py: TF32 is switched on by the first CUDA device resolved, and only there; a lone
process can become a process group of one (what FSDP needs in a single process). Tests marked
`cuda` need a GPU (deselected by default; run them with -m cuda)."""

from __future__ import annotations

import subprocess
import sys

import pytest

SCRIPT = """
import torch
from scratchllm.core.device import join_single_process_group, resolve_device
before = torch.get_float32_matmul_precision()
device = resolve_device({device!r})
after = torch.get_float32_matmul_precision()
torch.set_float32_matmul_precision("highest")  # the user's own choice afterwards stands
resolve_device({device!r})
join_single_process_group(device)
import torch.distributed as dist
t = torch.ones(3, device=device)
dist.all_reduce(t)
print(before, after, torch.get_float32_matmul_precision(), dist.get_world_size(), t.tolist())
dist.destroy_process_group()
"""


def run(device: str) -> str:
    done = subprocess.run([sys.executable, "-c", SCRIPT.format(device=device)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip()


def test_a_cpu_leaves_float32_matmuls_alone_and_a_lone_process_forms_a_group_of_one():
    assert run("cpu") == "highest highest highest 1 [1.0, 1.0, 1.0]"


@pytest.mark.cuda
def test_the_first_cuda_device_resolved_switches_tf32_on_once():
    assert run("cuda") == "highest high highest 1 [1.0, 1.0, 1.0]"
