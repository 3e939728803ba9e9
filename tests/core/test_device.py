"""core/device.py: the precision a run computes in, and the warning for bf16 on a CPU that cannot do it natively."""

from __future__ import annotations

import pytest
import torch

from scratchllm.core import device as device_mod


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


def test_cpu_flags_are_read_from_proc_cpuinfo(tmp_path, monkeypatch):
    cpuinfo = tmp_path / "cpuinfo"
    real = device_mod.Path
    monkeypatch.setattr(device_mod, "Path", lambda p: cpuinfo if p == "/proc/cpuinfo" else real(p))
    cpuinfo.write_text("flags\t\t: fpu sse avx2 avx512f avx512bw\n")
    assert device_mod.cpu_has_native_bf16() is False
    cpuinfo.write_text("flags\t\t: fpu sse avx2 avx512f avx512_bf16 amx_tile\n")
    assert device_mod.cpu_has_native_bf16() is True
    cpuinfo.unlink()
    assert device_mod.cpu_has_native_bf16() is None
