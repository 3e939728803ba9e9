"""core/device.py: the precision a run computes in, and the warning for bf16 on a CPU that cannot do it
natively; the weights' dtype `load` keeps (bf16 only on a CPU with native bf16, else float32 and a note); TF32 is switched on by the first CUDA device resolved, and only there; a lone process can
become a process group of one (what FSDP needs in a single process). Tests marked `cuda` need a GPU
(deselected by default; run them with -m cuda)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from scratchllm.core import device as device_mod
from scratchllm.core.cpu_probe import CpuProbe


@pytest.mark.parametrize("name, device, native, expected, warns", [
    ("float32", "cpu", False, None, False),
    ("auto", "cpu", True, None, False),           # auto is float32 on CPUs
    ("bfloat16", "cpu", True, torch.bfloat16, False),
    ("bfloat16", "cpu", None, torch.bfloat16, False),   # not Linux: nothing known, nothing said
    ("bfloat16", "cpu", False, torch.bfloat16, True),
])
def test_autocast_dtype(monkeypatch, capsys, name, device, native, expected, warns):
    monkeypatch.setattr(device_mod, "cpu_has_native_bf16", lambda: native)
    assert device_mod.autocast_dtype(name, torch.device(device)) == expected
    err = capsys.readouterr().err
    assert ("warning: bfloat16 on a CPU without native bf16" in err) == warns


@pytest.mark.parametrize("found, speedup, native", [(("amx_bf16",), 0.02, True), ((), 3.0, False),
                                                    (None, 2.5, True), (None, 0.03, False)])
def test_native_bf16_from_the_instruction_sets_else_measured(monkeypatch, found, speedup, native):
    """What the CPU reports decides; only where it reports nothing is known are matmuls measured."""
    probe = CpuProbe("a cpu", (), 2, 100.0, 100.0 * speedup, torch.__version__)
    monkeypatch.setattr(device_mod, "bf16_instructions", lambda: found)
    monkeypatch.setattr(device_mod, "probe_cpu", lambda: probe)
    got, why = device_mod.cpu_bf16_is_native()
    assert got is native
    assert ("measured" in why) == (found is None)


@pytest.mark.parametrize("dtype, device, native, expected", [
    (torch.bfloat16, "cpu", False, torch.float32), (torch.bfloat16, "cpu", True, torch.bfloat16),
    (torch.bfloat16, "meta", False, torch.bfloat16), (torch.float16, "cpu", False, torch.float16),
    (None, "cpu", False, None), (torch.float32, "cpu", False, torch.float32),
])
def test_weight_dtype_keeps_bf16_off_cpus_without_it(monkeypatch, capsys, dtype, device, native, expected):
    monkeypatch.setattr(device_mod, "cpu_bf16_is_native", lambda: (native, "why"))
    assert device_mod.weight_dtype(dtype, device) == expected
    err = capsys.readouterr().err
    assert err == ("" if expected == dtype else "note: bfloat16 weights asked for, but this CPU has no native bf16 "
                   "(why), where bf16 products run ~40x slower than float32: the weights are float32 instead\n")


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


def test_matmul_peak_leaves_the_global_rng_alone_and_keeps_its_best(monkeypatch):
    """Measuring the MFU denominator must not change a run's dropout masks (cached or not), and
    measuring again can only raise the figure: it is a lower bound on the peak."""
    monkeypatch.setattr(device_mod, "_MEASURED_PEAK", {})
    torch.manual_seed(1)
    expected = torch.rand(4)
    torch.manual_seed(1)
    first = device_mod.measure_matmul_peak(torch.device("cpu"), seconds=0.05)
    assert torch.equal(torch.rand(4), expected)
    key = next(iter(device_mod._MEASURED_PEAK))
    assert device_mod.measure_matmul_peak(torch.device("cpu"), seconds=0.05) == first  # cached
    device_mod._MEASURED_PEAK[key] = first * 1000  # a best figure seen earlier stays the best
    assert device_mod.measure_matmul_peak(torch.device("cpu"), seconds=0.05, again=True) == first * 1000


@pytest.mark.parametrize("gpu_name, amp, expected", [
    ("NVIDIA H100 80GB HBM3", torch.bfloat16, device_mod.Peak(989e12, "NVIDIA H100 80GB HBM3 bf16 datasheet", False)),
    ("NVIDIA H100 PCIe", torch.bfloat16, device_mod.Peak(756e12, "NVIDIA H100 PCIe bf16 datasheet", False)),
    ("NVIDIA H100 80GB HBM3", None, device_mod.Peak(5e12, "measured float32 matmul on cuda", True)),
    ("Some Future GPU", torch.bfloat16, device_mod.Peak(5e12, "measured bfloat16 matmul on cuda", True)),
])
def test_peak_flops_prefers_a_datasheet_and_says_when_it_measured(monkeypatch, gpu_name, amp, expected):
    """Only a measured peak is re-measured when a logged MFU exceeds it, so the flag must be right."""
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: gpu_name)
    monkeypatch.setattr(device_mod, "measure_matmul_peak", lambda device, dtype: 5e12)
    assert device_mod.peak_flops(torch.device("cuda"), amp) == expected


def test_an_int8_dtype_points_to_quantize():
    with pytest.raises(device_mod.ScratchLLMError, match=r"^dtype 'int8': expected one of float32, bfloat16, float16 "
                                                         r"\(int8 weights: quantize 'int8'\)$"):
        device_mod.parse_dtype("int8")
