"""The GPU benchmark (benchmarks/gpu.py) runs end to end on a CPU with small shapes: every model
trains and decodes, scratchllm's loss paths agree before any step, and its static decode gives the
eager loop's (and transformers') greedy tokens. The speedrun (benchmarks/speedrun.py) runs end to end
on the-verdict with a 6-step baseline, and reads the demo's corpus as the demo splits it."""

from __future__ import annotations

import json
import math

import pytest


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


def test_speedrun_runs_end_to_end_and_ablates_at_the_first_fraction(tmp_path, verdict):
    """A tiny speedrun (6 baseline steps): every run is measured on the held-out text, and an
    ablation gets the same budget as the recipe's first fraction, so the two are comparable."""
    from benchmarks.speedrun import main

    out = tmp_path / "sr"
    main(["--data", str(verdict), "--baseline-steps", "6", "--fractions", "3", "--ablate", "context-64",
          "--out", str(out), "--target", "5"])
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [r["label"] for r in rows] == ["baseline#0", "scratchllm x3#0", "without context-64#0"]
    assert rows[0]["steps"] == 6 and rows[1]["budget_s"] == rows[2]["budget_s"]
    assert rows[1]["budget_s"] == pytest.approx(3 * rows[0]["wall_s"])  # wall_s / 60 * 3 * 60, to rounding
    assert all(0 < r["final_bpb"] < 8 for r in rows)  # below a uniform guess over bytes
    assert (out / "speedrun.png").is_file()


def test_speedrun_reads_the_demo_corpus_and_refuses_bad_fractions(verdict, capsys):
    from benchmarks.speedrun import main, read_corpus
    from scratchllm.recipes.demo import python_corpus, split_documents

    assert read_corpus("python") == split_documents([t for _, t in python_corpus()], 0.1, seed=0)
    train, val = read_corpus(str(verdict))
    assert len(train) == len(val) == 1 and train[0] + val[0] == verdict.read_text(encoding="utf-8")
    with pytest.raises(SystemExit) as exit_info:
        main(["--data", str(verdict), "--fractions", "0,1"])
    assert exit_info.value.code == 2 and "--fractions '0,1': expected positive numbers" in capsys.readouterr().err


def test_gguf_agreement_runs_end_to_end_and_f32_agrees(tmp_path, verdict):
    """The GGUF agreement report (benchmarks/gguf_agreement.py) on the-verdict, one training step: the
    demo recipe's model at f32 and q8_0 in llama.cpp; f32 is ours, q8_0 a quarter of its size."""
    from benchmarks.gguf_agreement import main

    rows = main(["--data", str(verdict), "--steps", "1", "--families", "demo", "--types", "f32", "q8_0",
                 "--windows", "1", "--prompts", "2", "--new-tokens", "8", "--out", str(tmp_path)])["rows"]
    f32, q8 = rows["demo/f32"], rows["demo/q8_0"]
    assert (f32["next_token_agreement"], f32["greedy_all_same"]) == (1.0, 1.0) and f32["max_abs_logit_diff"] < 1e-3
    assert 0.2 < q8["file_bytes"] / f32["file_bytes"] < 0.35
    assert json.loads((tmp_path / "results.json").read_text())["rows"]["demo/q8_0"] == q8
