"""The one place that decides where and in what precision tensors live, and how processes join up.

- `resolve_device("auto" | "cpu" | "cuda" | "cuda:N" | "mps")`: auto takes CUDA (this process's GPU
  under torchrun), else Apple MPS, else the CPU; a device that is not there is an error.
- `parse_dtype`: weight dtypes by name ("bfloat16", "bf16", ...); `autocast_dtype`: the training
  precision ("auto" is bf16 autocast on CUDA, float32 elsewhere); `weight_dtype`: the dtype weights
  are kept in (bfloat16 only where the CPU has native bf16: `cpu_bf16_is_native`).
- `init_distributed`: join the process group when launched by torchrun; `join_single_process_group`:
  a group of one, for FSDP in a single process.
- TF32 for float32 matmuls is switched on the first time a CUDA device is resolved.
- `peak_flops`: the FLOP/s an MFU figure divides by (a datasheet for known GPUs, else measured).
- `available_memory`: bytes a device can still hold (what a model is checked against before it is built).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from scratchllm.core.console import log, warn
from scratchllm.core.cpu_probe import bf16_instructions, probe_cpu
from scratchllm.core.options import check_device
from scratchllm.errors import ScratchLLMError

_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
}


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """torch.bfloat16 or a name ("float32", "bfloat16", "float16", "bf16", ...) -> torch.dtype."""
    if dtype is None or isinstance(dtype, torch.dtype):
        if isinstance(dtype, torch.dtype) and not dtype.is_floating_point:
            raise ScratchLLMError(f"dtype {dtype}: expected a floating-point dtype")
        return dtype
    name = str(dtype).removeprefix("torch.").lower()
    if name not in _DTYPES:
        hint = " (int8 weights: quantize 'int8')" if name in ("int8", "q8_0", "qint8") else ""
        raise ScratchLLMError(f"dtype {dtype!r}: expected one of float32, bfloat16, float16{hint}")
    return _DTYPES[name]



def available_memory(device: str | torch.device) -> int | None:
    """Bytes free on `device`: a GPU's free memory, the CPU's MemAvailable (and a container's
    cgroup limit, when lower); None when unknown (then nothing is refused for lack of it)."""
    try:
        device = resolve_device(device)  # "auto" and "cuda" name a device too
    except ScratchLLMError:
        return None  # not a device this checks (meta), or none here: whoever places the model says so
    try:
        if device.type == "cuda":
            return torch.cuda.mem_get_info(device)[0]
        if device.type == "mps":
            return torch.mps.recommended_max_memory() - torch.mps.driver_allocated_memory()
    except (RuntimeError, AssertionError, AttributeError):
        return None
    if device.type != "cpu":
        return None
    free = None
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    free = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        try:
            free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, AttributeError):
            free = None
    try:  # cgroup v2: a container may be allowed far less than the host has free
        limit = Path("/sys/fs/cgroup/memory.max").read_text(encoding="ascii").strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text(encoding="ascii"))
        if limit != "max":
            free = min(free if free is not None else 1 << 62, int(limit) - used)
    except (OSError, ValueError):
        pass
    return free


@dataclass
class DistInfo:
    """Where this process sits among the `torchrun` processes (all zeros/ones when alone)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0



def _mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def resolve_device(name: str | torch.device | None = "auto", local_rank: int = 0) -> torch.device:
    """"auto" (or None) -> cuda (this process's GPU under torchrun), else mps, else cpu. An explicit
    device is checked: asking for CUDA or MPS where there is none is an error, not a crash later.
    The first CUDA device resolved switches TF32 on (see `_allow_tf32_once`)."""
    device = _resolve(name, local_rank)
    if device.type == "cuda":
        _allow_tf32_once()
    return device


_TF32_SET = False


def _allow_tf32_once() -> None:
    """Let float32 matmuls on CUDA use TF32 tensor cores (inputs rounded to a 10-bit mantissa,
    float32 accumulation; PyTorch's "high" precision): 7-8x the plain float32 rate on A100 / H100
    datasheets. It matters for float32 training and inference; under bf16 autocast the matmuls are
    bf16 anyway. Set once per process, so that a user's own torch.set_float32_matmul_precision
    afterwards stands."""
    global _TF32_SET
    if not _TF32_SET:
        torch.set_float32_matmul_precision("high")
        _TF32_SET = True


def _resolve(name: str | torch.device | None, local_rank: int) -> torch.device:
    if isinstance(name, torch.device):
        name = str(name)
    name = "auto" if name is None else str(name)
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    check_device(name)  # the one check of a device's name, also the options' (core/options.py)
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ScratchLLMError(f"device {name!r}: CUDA is not available in this PyTorch build / machine")
        device = torch.device(name) if ":" in name else torch.device("cuda", local_rank)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ScratchLLMError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
        return device
    if name == "mps" and not _mps_available():
        raise ScratchLLMError("device 'mps': Apple MPS is not available here")
    return torch.device(name)


def autocast_dtype(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain float32.

    bf16 keeps float32's exponent range, so unlike fp16 it needs no loss scaling (Kalamkar et al.
    2019); autocast runs matmuls in bf16 and keeps weights, softmax and the loss in float32.
    """
    if name == "float32":
        return None
    if name == "bfloat16":
        if device.type == "cpu" and cpu_has_native_bf16() is False:
            warn("bfloat16 on a CPU without native bf16 (no avx512_bf16/amx_bf16 in /proc/cpuinfo): its matmuls "
                 "run far slower than float32 here (measured ~40x on an AVX2 EPYC); use --dtype float32")
        return torch.bfloat16
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def cpu_has_native_bf16() -> bool | None:
    """Whether this CPU computes in bf16 natively (AVX512-BF16 or AMX), as it reports to torch or in
    /proc/cpuinfo (core/cpu_probe.py); None where nothing is known."""
    found = bf16_instructions()
    return None if found is None else bool(found)


def cpu_bf16_is_native() -> tuple[bool, str]:
    """(whether bf16 runs natively on this CPU, why we think so): the bf16 instruction sets it reports
    (core/cpu_probe.py `bf16_instructions`), else its measured matmul rates (`probe_cpu`: native where
    a bf16 product runs at least a quarter of float32's speed; emulated bf16 is ~40x slower)."""
    found = bf16_instructions()
    if found:
        return True, f"{'+'.join(found)} reported by the CPU"
    if found is not None:
        return False, ("the CPU reports no avx512_bf16 or amx_bf16; PyTorch's CPU capability here: "
                       f"{torch.backends.cpu.get_cpu_capability()}")
    probe = probe_cpu()
    return probe.bf16_speedup >= 0.25, f"bf16 matmuls measured {probe.bf16_speedup:.2f}x float32's speed here"


def weight_dtype(dtype: torch.dtype | None, device: str | torch.device) -> torch.dtype | None:
    """The dtype to keep a model's weights in on `device` when `dtype` is asked for (None: as stored).

    bfloat16 on a CPU without native bf16 becomes float32, with a one-line note on stderr: PyTorch
    emulates bf16 products there, ~40x slower than float32. Everything else is kept as asked."""
    if dtype != torch.bfloat16 or torch.device(device).type != "cpu":
        return dtype
    native, why = cpu_bf16_is_native()
    if native:
        return dtype
    log(f"note: bfloat16 weights asked for, but this CPU has no native bf16 ({why}), where bf16 products run "
        "~40x slower than float32: the weights are float32 instead")
    return torch.float32


def init_distributed(device_name: str = "auto") -> tuple[DistInfo, torch.device]:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1): nccl on CUDA, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(), resolve_device(device_name)
    import torch.distributed as dist

    info = DistInfo(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0")), world)
    device = resolve_device(device_name, info.local_rank)
    if device.type == "mps":
        raise ScratchLLMError("device 'mps': multi-process training is not supported on MPS")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return info, device


def join_single_process_group(device: torch.device) -> None:
    """Make this lone process a process group of one (rank 0 of 1), unless a group exists already.

    FSDP shards over the processes of a group, so it needs one even alone (each "shard" is then the
    whole tensor): a configuration checked on one GPU runs the same code it will run on eight. The
    group's store lives in this process, so no port is opened and no launcher is needed.
    """
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", store=dist.HashStore(),
                                rank=0, world_size=1)


# --------------------------------------------------------------------------------------------------
# Peak FLOP/s for MFU (model FLOPs utilisation, PaLM appendix B)

# Dense bf16 tensor-core FLOP/s from the vendors' datasheets (no sparsity), matched against
# torch.cuda.get_device_name(); the first matching entry wins, so specific names come first.
GPU_PEAK_BF16 = [
    ("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("GH200", 989e12), ("H200", 989e12), ("H100", 989e12),
    ("B200", 2250e12), ("A100", 312e12), ("L40S", 362e12), ("L4", 121e12), ("A10G", 70e12), ("A10", 125e12),
    ("RTX 4090", 165e12), ("RTX 3090", 71e12), ("V100", 125e12), ("T4", 65e12),
]


_MEASURED_PEAK: dict[tuple[str, str, int], float] = {}


def measure_matmul_peak(device: torch.device, dtype: torch.dtype = torch.float32, seconds: float = 0.3,
                        again: bool = False) -> float:
    """Best FLOP/s of square matmuls on `device` over about `seconds` (cached per device and dtype).

    Used as the MFU denominator where no datasheet figure applies (every CPU): a CPU's real peak
    depends on its cores, vector units and clock, so a fixed number would be wrong almost everywhere.
    On a CPU the rate is also taken per second of this process's CPU time (times the threads), which
    other processes on a shared machine do not shrink the way they shrink wall-clock time. Busy
    neighbours can still pull the figure down; `again=True` measures once more and keeps the best
    figure seen. The operands come from a private generator, so measuring never moves the global
    RNG (a training run's dropout masks do not depend on whether the peak was cached).
    """
    key = (str(device), str(dtype), torch.get_num_threads())
    if key in _MEASURED_PEAK and not again:
        return _MEASURED_PEAK[key]
    n = 1024 if device.type == "cpu" else 4096
    generator = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, generator=generator).to(dtype)
    b = torch.randn(n, n, device=device, generator=generator).to(dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(2):  # warm-up: thread pools, kernel selection
        a @ b
    sync()
    best, deadline = _MEASURED_PEAK.get(key, 0.0), time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        t, cpu = time.perf_counter(), time.process_time()
        for _ in range(3):
            a @ b
        sync()
        flops = 3 * 2 * n**3
        best = max(best, flops / (time.perf_counter() - t))
        if device.type == "cpu":
            best = max(best, flops / max(time.process_time() - cpu, 1e-9) * torch.get_num_threads())
    _MEASURED_PEAK[key] = best
    return best


@dataclass(frozen=True)
class Peak:
    """The FLOP/s an MFU figure divides by, where it comes from, and whether it was measured here
    (a measured peak may be measured again when a logged MFU exceeds it; a datasheet figure may not)."""

    flops: float
    source: str
    measured: bool


def peak_flops(device: torch.device, amp_dtype: torch.dtype | None) -> Peak:
    """The peak FLOP/s of one device for this precision: a datasheet for known GPUs in bf16, else measured."""
    if device.type == "cuda" and amp_dtype == torch.bfloat16:
        name = torch.cuda.get_device_name(device)
        for key, value in GPU_PEAK_BF16:
            if key in name:
                return Peak(value, f"{name} bf16 datasheet", measured=False)
    dtype = amp_dtype or torch.float32
    value = measure_matmul_peak(device, dtype)
    return Peak(value, f"measured {str(dtype).replace('torch.', '')} matmul on {device.type}", measured=True)

