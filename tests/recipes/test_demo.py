"""The small-budget recipe and `scratchllm demo`: the tokenizer learns from the training text only,
validation is held out text measured in its own bytes, a time budget covers the whole run, the
embedded corpus is Python's own library, and a faster machine gets a larger model, not more passes."""

from __future__ import annotations

import json
import math
import sysconfig

import numpy as np
import pytest
import torch

from scratchllm.checkpoint import load
from scratchllm.data import eval_batches
from scratchllm.errors import ScratchLLMError
from scratchllm.recipes.demo import (MODEL_LADDER, NANOGPT_BABY, SMALL_BUDGET, demo, fit_model_to_corpus, python_corpus,
                                     split_documents, split_text, tokenizer_sample, train_recipe)
from scratchllm.tokenizer import Tokenizer

TINY = dict(emb_dim=32, n_layers=1, n_heads=2, context_length=32)


@pytest.fixture(scope="module")
def verdict_text(shared_data) -> str:
    return (shared_data / "the-verdict.txt").read_text(encoding="utf-8")


def test_demo_on_a_file_holds_out_its_last_tenth_from_model_and_tokenizer(tmp_path, verdict_text, shared_data, capsys):
    summary = demo(tmp_path / "demo", data=shared_data / "the-verdict.txt", max_steps=6, vocab_size=300, batch_size=4,
                   lr=2e-3, n_kv_heads=None, **TINY)  # None keeps the recipe's value
    train_text, val_text = split_text(verdict_text, 0.1)
    assert val_text == verdict_text[int(len(verdict_text) * 0.9):]
    model, tok = load(tmp_path / "demo")
    # the tokenizer is the one trained on the first 90% alone, not on the whole text
    assert tok.merges == Tokenizer.train([train_text], 300).merges != Tokenizer.train([verdict_text], 300).merges
    assert (model.config.n_layers, model.config.mlp, model.config.position) == (1, "relu2", "rope")
    corpus = summary["corpus"]
    assert corpus["val_bytes"] == len(val_text.encode("utf-8"))
    assert corpus["val_bytes_per_token"] == corpus["val_bytes"] / corpus["val_tokens"]
    # bits per byte: the loss in bits over the UTF-8 bytes of the held-out tokens evaluated
    e = summary["eval"]
    ids = np.array(tok.encode_ordinary(val_text) + [tok.eot_id])
    targets = np.concatenate([y.numpy().ravel() for _, y in eval_batches(ids, 4, 32, SMALL_BUDGET.eval_batches)])
    n_bytes = tok.token_byte_lengths()[targets].sum()
    assert e["val_bpb"] == pytest.approx(e["val_loss"] * len(targets) / math.log(2) / n_bytes, rel=1e-6)
    assert summary["steps"] == 6 and summary["stopped"] == "max_steps"
    train = json.loads((tmp_path / "demo/run_config.json").read_text())["train"]
    assert (train["batch_size"], train["lr"], train["min_lr"], train["optimizer"]) == (4, 2e-3, 2e-4, "muon")
    err = capsys.readouterr().err
    assert "demo: samples before and after training (prompt 'The'):\n--- step 0 ---\nThe" in err
    assert (tmp_path / "demo/loss.png").stat().st_size > 0
    with pytest.raises(ScratchLLMError, match=r"demo: already exists; pass --overwrite to replace it or choose another --out"):
        demo(tmp_path / "demo", data=shared_data / "the-verdict.txt", max_steps=1)


def test_demo_on_the_embedded_corpus_splits_whole_files(tmp_path, capsys):
    summary = demo(tmp_path / "demo", max_steps=3, vocab_size=300, **TINY)
    err = capsys.readouterr().err
    files = python_corpus()
    assert f"demo: Python {sysconfig.get_python_version()}'s standard library ({len(files)} files)" in err
    assert "--- step 0 ---\ndef " in err  # the default prompt for Python source
    train_docs, val_docs = split_documents([text for _, text in files], 0.1, seed=0)
    assert summary["corpus"]["val_bytes"] == sum(len(d.encode("utf-8")) for d in val_docs)
    assert summary["corpus"]["train_tokens"] > 2_000_000  # several MB of text: the budget reads it about once


def test_python_corpus_is_the_standard_library_without_tests_and_codec_tables():
    files = python_corpus()
    paths = [p for p, _ in files]
    assert paths == sorted(paths) and "pydoc_data/topics.py" in paths and "ast.py" in paths
    assert not [p for p in paths if p.startswith(("test/", "encodings/", "site-packages/")) or "/tests/" in p]
    assert sum(len(t.encode("utf-8")) for _, t in files) > 5_000_000


def test_document_and_text_splits():
    docs = [f"document {i}\n" for i in range(50)]
    train, val = split_documents(docs, 0.1, seed=3)
    assert split_documents(docs, 0.1, seed=3) == (train, val)  # seeded
    assert sorted(train + val) == sorted(docs) and 1 <= len(val) < 15
    assert split_documents(docs[:2], 0.0)[1] and split_documents(docs[:2], 1.0)[0]  # never an empty side
    assert split_text("abcdefghij", 0.2) == ("abcdefgh", "ij")
    with pytest.raises(ScratchLLMError, match="val_fraction 1.5: expected a number in \\(0, 1\\)"):
        split_text("abc", 1.5)
    with pytest.raises(ScratchLLMError, match="split_documents: need at least 2 documents, got 1"):
        split_documents(["one"])


def test_tokenizer_sample_takes_evenly_spaced_documents_up_to_the_byte_budget():
    docs = [str(i) * 100 for i in range(10)]
    assert tokenizer_sample(docs, max_bytes=2000) == docs
    sample = tokenizer_sample(docs, max_bytes=300)
    assert sample == [docs[0], docs[3], docs[6]]


def test_a_time_budget_covers_the_whole_run(tmp_path, verdict_text):
    train_text, val_text = split_text(verdict_text, 0.1)
    recipe = SMALL_BUDGET.replace(vocab_size=300, model=TINY)
    summary = train_recipe(recipe, [train_text], [val_text], tmp_path / "run", minutes=0.1, device="cpu")
    assert summary["stopped"] == "max_time" and summary["steps"] > 5
    # 6 s for tokenizer, data and training; the final evaluation and saves come after the clock
    assert summary["prep_s"] + summary["train_time_s"] < 6.0 + 1.0
    assert summary["wall_s"] < 6.0 + 20.0
    with pytest.raises(ScratchLLMError, match="speedrun: the validation text is empty"):
        train_recipe(recipe, [train_text], [""], tmp_path / "x", max_steps=1, source="speedrun")


def test_a_fast_machine_gets_a_larger_model_not_more_passes(verdict_text):
    from scratchllm.data.tokens import corpus_from_texts
    from scratchllm.models.config import GPTConfig
    from scratchllm.training.config import TrainConfig

    train_text, val_text = split_text(verdict_text, 0.1)
    tok = Tokenizer.train([train_text], 300)
    corpus = corpus_from_texts([train_text], [val_text], tok)
    config = GPTConfig(**{**SMALL_BUDGET.model, "vocab_size": 300, "context_length": 16})
    cfg = TrainConfig(batch_size=2, optimizer="muon")
    # a budget in which the smallest model would read the ~5,000 tokens many times: it grows
    grown, step_s = fit_model_to_corpus(config, 0.001, corpus, cfg, torch.device("cpu"), 1.0, max_passes=1.0)
    assert (grown.n_layers, grown.emb_dim) in MODEL_LADDER[1:] and grown.n_heads == grown.emb_dim // 32
    assert step_s > 0
    # a budget it cannot even read once in: it stays
    same, _ = fit_model_to_corpus(config, 10.0, corpus, cfg, torch.device("cpu"), 60.0, max_passes=1.0)
    assert same == config


def test_the_baseline_is_nanogpts_cpu_baby_gpt():
    assert NANOGPT_BABY.vocab_size == 257  # bytes: tinyshakespeare's characters are ASCII
    assert {k: NANOGPT_BABY.model[k] for k in ("context_length", "emb_dim", "n_layers", "n_heads", "drop_rate")} == \
        dict(context_length=64, emb_dim=128, n_layers=4, n_heads=4, drop_rate=0.0)
    assert {k: NANOGPT_BABY.train[k] for k in ("batch_size", "max_steps", "lr", "min_lr", "warmup_steps")} == \
        dict(batch_size=12, max_steps=2000, lr=1e-3, min_lr=1e-4, warmup_steps=100)
