"""What this CPU can do in bfloat16, detected and measured, never assumed: the first step of the
choice `dtype="auto"` makes for a CPU run (recipes/demo.py times the model's own step for the second).

- `bf16_instructions()`: the native bf16 instruction sets the CPU reports (AVX-512 BF16, AMX-BF16).
- `probe_cpu()`: matmul GFLOP/s in float32 and in bfloat16 on torch's threads, measured alternately
  for about 0.3 s, and cached in SCRATCHLLM_CACHE/cpu_probe.json per CPU, torch version and thread
  count, so a later run reads the figures instead of measuring again.
- `bf16_verdict(probe)`: whether bf16 is worth timing a model's step in, with a one-line reason.

Machines of one kind differ: an AVX2-only CPU emulates bf16 matmuls many times slower than float32
ones (~40x measured on an AMD EPYC), while AVX-512 BF16 and AMX make them several times faster.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from scratchllm.core.download import cache_dir
from scratchllm.core.files import write_json
from scratchllm.errors import ScratchLLMError

# Native bf16 instruction sets, as torch.cpu.get_capabilities() and /proc/cpuinfo name them.
BF16_FLAGS = ("avx512_bf16", "amx_bf16")

# bf16 must beat float32 matmuls by this factor before a model's step is timed in it: a smaller
# gain is lost to the casts and the float32 work around the matmuls (norms, attention, the optimizer).
MIN_MATMUL_SPEEDUP = 1.5


@dataclass(frozen=True)
class CpuProbe:
    """One CPU's measured matmul rates (square 512 x 512 products, best of the rounds) and the bf16
    instruction sets it reports; `cached` says whether the figures were read from an earlier run."""

    cpu: str
    features: tuple[str, ...]
    threads: int
    float32_gflops: float
    bfloat16_gflops: float
    torch_version: str
    cached: bool = False

    @property
    def native_bf16(self) -> bool:
        return bool(self.features)

    @property
    def bf16_speedup(self) -> float:
        return self.bfloat16_gflops / self.float32_gflops

    def describe(self) -> str:
        native = "+".join(self.features) if self.features else "no avx512_bf16 / amx_bf16"
        return (f"{self.cpu} ({native}), {self.threads} threads: bf16 matmuls {self.bfloat16_gflops:,.0f} GFLOP/s "
                f"vs float32 {self.float32_gflops:,.0f} = {self.bf16_speedup:.2f}x"
                + (" (probe cached)" if self.cached else ""))


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), else what torch or platform report."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    caps = cpu_capabilities()
    return str(caps.get("cpu_name") or platform.processor() or platform.machine() or "unknown CPU")


def cpu_capabilities() -> dict:
    """torch.cpu.get_capabilities() (instruction sets as the CPU reports them), or {} where this
    torch lacks it."""
    try:
        return dict(torch.cpu.get_capabilities())
    except (AttributeError, RuntimeError):
        return {}


def bf16_instructions() -> tuple[str, ...] | None:
    """The native bf16 instruction sets this CPU reports: torch's CPU capabilities, else the flags
    of /proc/cpuinfo; () where they list none (bf16 is then emulated); None where neither source
    exists (nothing is known)."""
    caps = cpu_capabilities()
    if any(flag in caps for flag in BF16_FLAGS):
        return tuple(flag for flag in BF16_FLAGS if caps.get(flag))
    try:
        words = set(Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").split())
    except OSError:
        return None
    return tuple(flag for flag in BF16_FLAGS if flag in words)


def measure_matmuls(seconds: float = 0.3, n: int = 512) -> tuple[float, float]:
    """Best (float32, bfloat16) GFLOP/s of n x n products on torch's threads, the two dtypes taken
    in turn so that a burst of load from other processes hits both alike. An emulated bf16 product
    can take tens of milliseconds, so the rounds stop at the deadline whatever is left."""
    generator = torch.Generator().manual_seed(0)  # never moves the global RNG
    a32, b32 = torch.randn(n, n, generator=generator), torch.randn(n, n, generator=generator)
    operands = {torch.float32: (a32, b32), torch.bfloat16: (a32.bfloat16(), b32.bfloat16())}
    best = {dtype: 0.0 for dtype in operands}
    for a, b in operands.values():  # warm-up: thread pool, kernel selection
        a @ b
    deadline = time.perf_counter() + seconds
    rounds = 0
    while rounds < 2 or time.perf_counter() < deadline:
        for dtype, (a, b) in operands.items():
            t = time.perf_counter()
            a @ b
            best[dtype] = max(best[dtype], 2 * n**3 / (time.perf_counter() - t) / 1e9)
        rounds += 1
    return best[torch.float32], best[torch.bfloat16]


def probe_cpu(cache: str | os.PathLike[str] | None = None, again: bool = False) -> CpuProbe:
    """This CPU's bf16 instruction sets and measured matmul rates, from `cache` (default
    SCRATCHLLM_CACHE/cpu_probe.json) when an earlier run on the same CPU, torch and thread count
    wrote them; else measured (about 0.3 s) and added to it. `again` measures afresh."""
    path = Path(cache) if cache is not None else cache_dir() / "cpu_probe.json"
    name, threads = cpu_name(), torch.get_num_threads()
    key = f"{name} | torch {torch.__version__} | {threads} threads"
    try:
        known = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(known, dict):
            known = {}
    except (OSError, ValueError):
        known = {}
    record = known.get(key)
    if not again and isinstance(record, dict):
        try:
            return CpuProbe(**{**record, "features": tuple(record["features"]), "cached": True})
        except (TypeError, KeyError):
            pass  # written by another version: measure again
    float32, bfloat16 = measure_matmuls()
    probe = CpuProbe(name, bf16_instructions() or (), threads, float32, bfloat16, torch.__version__)
    known[key] = {k: v for k, v in asdict(probe).items() if k != "cached"}
    try:
        write_json(path, known, what="CPU probe cache")
    except ScratchLLMError:
        pass  # a read-only home: the probe is measured again next time, nothing else changes
    return probe


def bf16_verdict(probe: CpuProbe) -> tuple[bool, str]:
    """(whether to time a model's step in bf16, why): only where the CPU reports native bf16 and
    its bf16 matmuls measured at least MIN_MATMUL_SPEEDUP times float32's."""
    if not probe.native_bf16:
        return False, (f"this CPU reports no native bf16 (no avx512_bf16 / amx_bf16); bf16 matmuls measured "
                       f"{probe.bf16_speedup:.2f}x float32's")
    if probe.bf16_speedup < MIN_MATMUL_SPEEDUP:
        return False, (f"bf16 matmuls measured only {probe.bf16_speedup:.2f}x float32's here "
                       f"({'+'.join(probe.features)}; under {MIN_MATMUL_SPEEDUP}x)")
    return True, f"bf16 matmuls measured {probe.bf16_speedup:.2f}x float32's ({'+'.join(probe.features)})"
