"""The GPU benchmark (benchmarks/gpu.py) runs end to end on a CPU with small shapes: every model
trains and decodes, scratchllm's loss paths agree before any step, and its static decode gives the
eager loop's (and transformers') greedy tokens."""

from __future__ import annotations

import math


def test_gpu_benchmark_runs_on_a_cpu_with_small_shapes(capsys):
    from benchmarks.gpu import main

    results = main(["--device", "cpu", "--tiny", "--rounds", "1", "--steps", "1", "--new-tokens", "6"])
    out = capsys.readouterr().out
    training = results["training"]
    parity = training["parity_loss"]
    assert max(parity.values()) - min(parity.values()) < 1e-5 and abs(parity["auto"] - math.log(1000)) < 0.3
    assert set(training["tokens_per_s"]) == {"scratchllm", "scratchllm, logits + F.cross_entropy", "nanoGPT-style",
                                             "transformers GPT2LMHeadModel"}  # no compile on a CPU
    assert all(v > 0 for v in training["tokens_per_s"].values()) and all(0 < v < 1 for v in training["mfu"].values())
    assert "scratchllm / nanoGPT-style" in training["ratios"] and "scratchllm / nanoGPT-style: " in out
    for batch, decode in results["decoding"]["batches"].items():
        assert all(decode["same_as_eager"].values()), batch  # float32: static, eager and transformers agree
        assert all(decode["same_as_transformers"].values()), batch
        assert all(v > 0 for v in decode["tokens_per_s"].values())
