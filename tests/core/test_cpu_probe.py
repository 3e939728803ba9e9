"""core/cpu_probe.py: the bf16 instruction sets are read from what the CPU reports (torch's
capabilities, else /proc/cpuinfo), the matmul probe is measured once and then read from its cache,
and the verdict takes bf16 only where it is native and measured faster."""

from __future__ import annotations

import json

import pytest
import torch

from scratchllm.core import cpu_probe, device as device_mod
from scratchllm.core.cpu_probe import CpuProbe, bf16_verdict, probe_cpu


def test_bf16_instructions_come_from_torchs_capabilities_else_proc_cpuinfo(tmp_path, monkeypatch):
    monkeypatch.setattr(cpu_probe, "cpu_capabilities", lambda: {"avx512_bf16": False, "amx_bf16": True, "avx2": True})
    assert cpu_probe.bf16_instructions() == ("amx_bf16",) and device_mod.cpu_has_native_bf16() is True
    monkeypatch.setattr(cpu_probe, "cpu_capabilities", lambda: {"avx512_bf16": False, "amx_bf16": False})
    assert cpu_probe.bf16_instructions() == () and device_mod.cpu_has_native_bf16() is False
    # a torch without get_capabilities: the kernel's flags
    monkeypatch.setattr(cpu_probe, "cpu_capabilities", lambda: {})
    cpuinfo = tmp_path / "cpuinfo"
    real = cpu_probe.Path
    monkeypatch.setattr(cpu_probe, "Path", lambda p: cpuinfo if p == "/proc/cpuinfo" else real(p))
    cpuinfo.write_text("flags\t\t: fpu sse avx2 avx512f avx512bw\n")
    assert cpu_probe.bf16_instructions() == () and device_mod.cpu_has_native_bf16() is False
    cpuinfo.write_text("flags\t\t: fpu sse avx2 avx512f avx512_bf16 amx_tile\n")
    assert cpu_probe.bf16_instructions() == ("avx512_bf16",) and device_mod.cpu_has_native_bf16() is True
    cpuinfo.unlink()
    assert cpu_probe.bf16_instructions() is None and device_mod.cpu_has_native_bf16() is None


def test_the_probe_is_measured_once_then_read_from_its_cache(tmp_path, monkeypatch):
    calls = []

    def measure(seconds: float = 0.3, n: int = 512) -> tuple[float, float]:
        calls.append(n)
        return 300.0, 900.0

    monkeypatch.setattr(cpu_probe, "measure_matmuls", measure)
    monkeypatch.setattr(cpu_probe, "bf16_instructions", lambda: ("avx512_bf16", "amx_bf16"))
    cache = tmp_path / "cache" / "cpu_probe.json"
    first = probe_cpu(cache)
    assert (first.float32_gflops, first.bfloat16_gflops, first.bf16_speedup, first.cached) == (300.0, 900.0, 3.0, False)
    again = probe_cpu(cache)
    assert again == CpuProbe(**{**vars(first), "cached": True}) and len(calls) == 1
    key = f"{cpu_probe.cpu_name()} | torch {torch.__version__} | {torch.get_num_threads()} threads"
    assert json.loads(cache.read_text())[key]["features"] == ["avx512_bf16", "amx_bf16"]
    probe_cpu(cache, again=True)
    assert len(calls) == 2
    cache.write_text("not json")  # a damaged cache is measured again, not an error
    assert probe_cpu(cache).cached is False and len(calls) == 3


def test_the_real_probe_measures_both_dtypes(tmp_path):
    probe = probe_cpu(tmp_path / "probe.json")
    assert probe.float32_gflops > 0 and probe.bfloat16_gflops > 0 and probe.threads == torch.get_num_threads()
    assert probe.native_bf16 == bool(cpu_probe.bf16_instructions())
    assert f"{probe.bf16_speedup:.2f}x" in probe.describe()


def probe(features: tuple[str, ...], float32: float, bfloat16: float) -> CpuProbe:
    return CpuProbe("a CPU", features, 2, float32, bfloat16, torch.__version__)


@pytest.mark.parametrize("p, worth, reason", [
    (probe((), 300.0, 7.5), False,
     "this CPU reports no native bf16 (no avx512_bf16 / amx_bf16); bf16 matmuls measured 0.03x float32's"),
    (probe(("avx512_bf16",), 300.0, 420.0), False,
     "bf16 matmuls measured only 1.40x float32's here (avx512_bf16; under 1.5x)"),
    (probe(("avx512_bf16", "amx_bf16"), 300.0, 900.0), True, "bf16 matmuls measured 3.00x float32's (avx512_bf16+amx_bf16)"),
    # native flags alone do not decide: a CPU that reports them but measures no gain stays float32
    (probe(("amx_bf16",), 300.0, 300.0), False, "bf16 matmuls measured only 1.00x float32's here (amx_bf16; under 1.5x)"),
])
def test_bf16_is_worth_a_step_timing_only_where_native_and_measured_faster(p, worth, reason):
    assert bf16_verdict(p) == (worth, reason)
