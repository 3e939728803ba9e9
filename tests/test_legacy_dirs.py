"""Directories written by the flat-layout code (tests/fixtures/v0_1_layout, commit e3d41a4) keep
loading with today's code and give the outputs that code gave; the interrupted run resumes with the
very losses the old code logged for its uninterrupted run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from scratchllm.checkpoint import load
from scratchllm.evaluation.lm import evaluate_perplexity
from scratchllm.inference.fill_mask import fill_mask
from scratchllm.inference.generation import generate
from scratchllm.inference.translate import translate
from scratchllm.recipes.pretrain import pretrain

FIXTURES = Path(__file__).parent / "fixtures" / "v0_1_layout"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text(encoding="utf-8"))
TEXTS = ["WINNER! Claim your free prize now", "See you at lunch tomorrow?", "Call 0800 now to win cash"]


def test_gpt_directory_generates_the_same_text():
    model, tok = load(FIXTURES / "gpt")
    assert generate(model, tok, "KING RICHARD II:\nWhat", max_new_tokens=30, temperature=0) == EXPECTED["gpt_greedy"]
    assert generate(model, tok, "KING", max_new_tokens=30, temperature=0.8, top_k=50, seed=7) == EXPECTED["gpt_sampled"]


def test_gpt_directory_gives_the_same_perplexity():
    report = evaluate_perplexity(str(FIXTURES / "gpt"), str(FIXTURES / "shakespeare-60k.txt"), max_tokens=2000,
                                 device="cpu")
    for key, value in EXPECTED["perplexity"].items():
        assert report[key] == pytest.approx(value, rel=1e-6), key


@pytest.mark.parametrize("name", ["classifier", "classifier-lora"])
def test_classifiers_predict_the_same_probabilities(name):
    predictions = load(FIXTURES / name, kind="classifier")[0].predict(TEXTS)
    for p, (label, probability) in zip(predictions, EXPECTED[name]):
        assert p.label == label
        assert p.probability == pytest.approx(probability, abs=1e-6)


def test_lora_step_checkpoint_loads_with_its_adapters_merged():
    model, tok = load(FIXTURES / "lora-step")
    assert generate(model, tok, "### Instruction:", max_new_tokens=12, temperature=0) == EXPECTED["lora_step_greedy"]


def test_encoder_fills_masks_as_before():
    encoder, tok = load(FIXTURES / "encoder", kind="encoder")
    got = fill_mask(encoder, tok, "The [MASK] of the house", top_k=3)[0]
    assert [f.token for f in got] == [t for t, _ in EXPECTED["fill_mask"]]
    assert [f.probability for f in got] == pytest.approx([p for _, p in EXPECTED["fill_mask"]], abs=1e-6)


def test_seq2seq_translates_as_before():
    model, tok = load(FIXTURES / "seq2seq", kind="seq2seq")
    assert translate(model, tok, "house", beam=2) == EXPECTED["translate"]


def test_interrupted_run_resumes_with_the_old_losses(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(FIXTURES / "run", run)
    torch.set_num_threads(1)
    pretrain(FIXTURES / "shakespeare-60k.txt", out=run, resume=True, progress=False)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = {str(r["step"]): r["loss"] for r in rows if "loss" in r}
    assert set(losses) == set(EXPECTED["run_losses"])
    for step, loss in EXPECTED["run_losses"].items():
        assert losses[step] == pytest.approx(loss, abs=1e-5), step
    assert (run / "final" / "model.safetensors").is_file()
