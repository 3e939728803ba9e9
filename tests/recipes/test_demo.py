"""The small-budget recipe and `scratchllm demo`: the tokenizer learns from the training text only,
validation is held out text measured in its own bytes, a time budget covers the whole run, the
embedded corpus is Python's own library, a faster machine gets a larger model, not more passes,
`dtype="auto"` takes bf16 only where measured faster, and the baseline is nanoGPT's, field by field."""

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
from scratchllm.core.cpu_probe import CpuProbe
from scratchllm.core.device import cpu_has_native_bf16
from scratchllm.data.tokens import corpus_from_texts
from scratchllm.recipes import demo as demo_module
from scratchllm.recipes.demo import (MODEL_LADDER, NANOGPT_BABY, SMALL_BUDGET, choose_precision, demo, fit_model_to_corpus,
                                     python_corpus, split_documents, split_stretches, split_text, tokenizer_sample,
                                     train_recipe)
from scratchllm.tokenizer import Tokenizer
from scratchllm.training.run_dir import checkpoint_dirs

TINY = dict(emb_dim=32, n_layers=1, n_heads=2, context_length=32)


@pytest.fixture(scope="module")
def verdict_text(shared_data) -> str:
    return (shared_data / "the-verdict.txt").read_text(encoding="utf-8")


def test_demo_on_a_file_holds_out_a_tenth_from_model_and_tokenizer(tmp_path, verdict_text, shared_data, capsys):
    summary = demo(tmp_path / "demo", data=shared_data / "the-verdict.txt", max_steps=6, vocab_size=300, batch_size=4,
                   lr=2e-3, n_kv_heads=None, **TINY)  # None keeps the recipe's value
    train_docs, val_docs = split_stretches(verdict_text, 0.1)
    model, tok = load(tmp_path / "demo")
    # the tokenizer is the one trained on the training parts alone, not on the whole text
    assert tok.merges == Tokenizer.train(train_docs, 300).merges != Tokenizer.train([verdict_text], 300).merges
    assert (model.config.n_layers, model.config.mlp, model.config.position) == (1, "relu2", "rope")
    corpus = summary["corpus"]
    assert corpus["val_bytes"] == sum(len(d.encode("utf-8")) for d in val_docs)
    assert corpus["val_bytes_per_token"] == corpus["val_bytes"] / corpus["val_tokens"]
    # bits per byte: the loss in bits over the UTF-8 bytes of the held-out tokens evaluated
    e = summary["eval"]
    ids = np.array([i for d in val_docs for i in (*tok.encode_ordinary(d), tok.eot_id)])
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


def test_a_text_is_held_out_in_stretches_cut_at_line_breaks():
    text = "".join(f"line {i:02d}\n" for i in range(100))  # 800 characters, a line every 8
    train, val = split_stretches(text, 0.1, pieces=4)
    # 20 characters in the middle of each quarter (90..110 in the first), widened to whole lines
    assert val[0] == "line 12\nline 13\nline 14\n" and len(val) == 4 and len(train) == 5
    assert all(v.startswith("line") and v.endswith("\n") for v in val)
    assert "".join(t + v for t, v in zip(train, val)) + train[-1] == text  # in order, nothing lost or repeated
    assert sum(map(len, val)) == 4 * 24
    tinyshakespeare_like = "".join(f"{'ACT' if i % 50 == 0 else 'SPEAKER'} {i}:\nwords words words\n\n" for i in range(2000))
    held = sum(map(len, split_stretches(tinyshakespeare_like, 0.1)[1])) / len(tinyshakespeare_like)
    assert 0.1 <= held < 0.105  # about a tenth: each stretch is widened to whole lines
    assert split_stretches("abcdefghij", 0.2) == (["abcdefgh"], ["ij"])  # too short to spread: its end
    with pytest.raises(ScratchLLMError, match="val_fraction 0: expected a number in \\(0, 1\\)"):
        split_stretches("abc", 0)


def test_tokenizer_sample_takes_evenly_spaced_documents_up_to_the_byte_budget():
    docs = [str(i) * 100 for i in range(10)]
    assert tokenizer_sample(docs, max_bytes=2000) == docs
    sample = tokenizer_sample(docs, max_bytes=300)
    assert sample == [docs[0], docs[3], docs[6]]


def test_a_time_budget_covers_the_whole_run(tmp_path, verdict_text):
    train_text, val_text = split_text(verdict_text, 0.1)
    recipe = SMALL_BUDGET.replace(vocab_size=300, model=TINY)
    summary = train_recipe(recipe, [train_text], [val_text], tmp_path / "run", minutes=0.1, device="cpu")
    train = json.loads((tmp_path / "run/run_config.json").read_text())["train"]
    # 6 s for everything: training gets what the tokenizer, the data and the step timing left of it,
    # on a clock of its own (the learning rate follows it), and runs until that is spent
    assert train["schedule"] == "time" and 6.0 - summary["prep_s"] <= train["max_time"] < 6.0
    assert summary["stopped"] == "max_time" and summary["steps"] < train["max_steps"]
    (step, last), = checkpoint_dirs(tmp_path / "run")  # checkpoints=1: the one at the end
    trainer = torch.load(last / "trainer.pt", map_location="cpu", weights_only=True)
    assert step == summary["steps"] and trainer["elapsed_s"] >= train["max_time"]
    assert summary["tokens"] == summary["steps"] * 32 * TINY["context_length"]  # batch 32 windows of the context
    with pytest.raises(ScratchLLMError, match="speedrun: the validation text is empty"):
        train_recipe(recipe, [train_text], [""], tmp_path / "x", max_steps=1, source="speedrun")


def test_a_fast_machine_gets_a_larger_model_not_more_passes(verdict_text):
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


def test_the_baseline_is_nanogpts_cpu_baby_gpt_field_by_field(tmp_path, monkeypatch, verdict_text):
    """Every field of the model and of the training config the baseline runs with, as nanoGPT's
    README CPU command and model.py set them: a changed default anywhere must fail here."""
    seen = {}

    def fake_fit(model, task, cfg, out, tokenizer=None, extra_config=None):  # the resolved run, not trained
        seen.update(model=model.config.to_dict(), train=cfg.to_dict())
        return {"steps": 0, "tokens": 0}

    monkeypatch.setattr(demo_module, "fit", fake_fit)
    train_text, val_text = split_text(verdict_text, 0.1)
    train_recipe(NANOGPT_BABY, [train_text], [val_text], tmp_path / "baseline", device="cpu", checkpoints=8)
    assert seen["model"] == dict(
        vocab_size=257, context_length=64, emb_dim=128, n_layers=4, n_heads=4, drop_rate=0.0, qkv_bias=False,
        tie_embeddings=True, mlp_ratio=4, layer_norm_eps=1e-05, attn_impl="sdpa", norm="layernorm", position="learned",
        mlp="gelu", mlp_hidden_dim=None, n_kv_heads=None, bias=False, rope_theta=10000.0, causal=True, head_dim=None,
        qk_norm=False, rope_scaling=None, zero_init_proj=False, logit_softcap=None)
    assert seen["train"] == dict(
        max_steps=2000, max_time=None, batch_size=12, context_length=None, grad_accum=1, tokens_per_step=None,
        lr=1e-3, min_lr=1e-4, warmup_steps=100, weight_decay=0.1, beta1=0.9, beta2=0.99, grad_clip=1.0,
        fused_adamw=True, schedule="steps", optimizer="adamw", muon_lr=0.02, muon_momentum=0.95,
        eval_every=250, eval_batches=20, patience=0, log_every=100, save_every=250, keep_last=8, sample_every=0,
        sample_prompt="\n", sample_tokens=80, seed=1337, device="cpu", dtype="float32", compile=False, fsdp=False,
        progress=False)


def fake_probe(features: tuple[str, ...], speedup: float) -> CpuProbe:
    return CpuProbe("a CPU", features, 2, 300.0, 300.0 * speedup, torch.__version__)


@pytest.mark.parametrize("features, speedup, f32_ms, bf16_ms, dtype, reason", [
    ((), 0.03, None, None, "float32",
     "this CPU reports no native bf16 (no avx512_bf16 / amx_bf16); bf16 matmuls measured 0.03x float32's"),
    (("avx512_bf16", "amx_bf16"), 3.0, 300, 150, "bfloat16", "bf16 matmuls measured 3.00x float32's "
     "(avx512_bf16+amx_bf16); a step of the 1 x 256 model 150 ms in bf16 vs 300 in float32"),
    (("avx512_bf16", "amx_bf16"), 3.0, 300, 290, "float32", "bf16 matmuls measured 3.00x float32's "
     "(avx512_bf16+amx_bf16), but a step of the 1 x 256 model 290 ms in bf16 vs 300 in float32"),
])
def test_dtype_auto_on_a_cpu_takes_bf16_only_where_measured_faster(monkeypatch, verdict_text, features, speedup,
                                                                    f32_ms, bf16_ms, dtype, reason):
    monkeypatch.setattr(demo_module, "probe_cpu", lambda: fake_probe(features, speedup))
    timed = []

    def time_steps(model, corpus, cfg, device, context_length, n=4):
        timed.append((cfg.dtype, model.config.emb_dim))
        return {"float32": f32_ms, "bfloat16": bf16_ms}[cfg.dtype] / 1e3

    monkeypatch.setattr(demo_module, "time_steps", time_steps)
    recipe = SMALL_BUDGET.replace(vocab_size=300, model=dict(TINY, emb_dim=64), name="t",
                                  bf16=dict(model=dict(emb_dim=256, n_heads=8), train=dict(batch_size=16)))
    tok = Tokenizer.train([verdict_text[:5000]], 300)
    corpus = corpus_from_texts([verdict_text[:5000]], [verdict_text[5000:6000]], tok)
    chosen, got, why, step_s = choose_precision(recipe, "auto", corpus, tok.vocab_size, torch.device("cpu"))
    assert (got, why) == (dtype, reason)
    if dtype == "bfloat16":  # the recipe's bf16 form, whose step was timed
        assert (chosen.model["emb_dim"], chosen.model["n_heads"], chosen.train["batch_size"], chosen.bf16) == (256, 8, 16, {})
        assert step_s == bf16_ms / 1e3
    else:
        assert chosen == recipe and step_s is None
    # no native bf16: nothing is timed; else both dtypes, in turn, twice, on the bf16 form
    assert timed == ([] if not features else [("float32", 256), ("bfloat16", 256)] * 2)
    # other requests pass through untouched
    assert choose_precision(recipe, "float32", corpus, 300, torch.device("cpu")) == (recipe, "float32", None, None)


def test_fields_set_by_hand_win_over_the_recipes_bf16_form():
    recipe = SMALL_BUDGET.replace(bf16=dict(model=dict(emb_dim=256, n_heads=8), train=dict(batch_size=16)))
    mine = recipe.replace(model=dict(emb_dim=192, context_length=64), train=dict(lr=1e-3))
    assert mine.bf16 == dict(model=dict(n_heads=8), train=dict(batch_size=16))
    bf16 = mine.in_bf16()
    assert (bf16.model["emb_dim"], bf16.model["n_heads"], bf16.model["context_length"]) == (192, 8, 64)
    assert (bf16.train["batch_size"], bf16.train["lr"]) == (16, 1e-3)


def test_a_run_with_dtype_auto_says_which_and_why(tmp_path, verdict_text, capsys, monkeypatch):
    """On whatever CPU runs the tests: the header and run_config.json name the dtype chosen and why."""
    monkeypatch.setenv("SCRATCHLLM_CACHE", str(tmp_path / "cache"))  # the probe's cache
    train_text, val_text = split_text(verdict_text, 0.1)
    recipe = SMALL_BUDGET.replace(vocab_size=300, model=TINY)
    summary = train_recipe(recipe, [train_text], [val_text], tmp_path / "run", max_steps=2, device="cpu", dtype="auto")
    precision = json.loads((tmp_path / "run/run_config.json").read_text())["precision"]
    assert precision == summary["precision"] and precision["requested"] == "auto"
    assert precision["dtype"] == summary["dtype"] in ("float32", "bfloat16")
    assert f"dtype auto -> {precision['dtype']}: {precision['reason']}" in capsys.readouterr().err
    if not cpu_has_native_bf16():
        assert precision["dtype"] == "float32" and "no native bf16" in precision["reason"]
