"""The generic runner (evaluation/runner.py): one loader for every kind of model source, and batched
scoring that gives each request the scores it gets alone."""

from __future__ import annotations

import pytest
import torch

from scratchllm.errors import ScratchLLMError
from scratchllm.evaluation.runner import EvalModel, Request, load_eval_model, score_requests
from scratchllm.evaluation.scoring import continuation_logprobs
from tests.helpers import Bigram, tiny_gpt


def test_a_directory_a_module_and_an_eval_model_load_alike(gpt2_model_dir, gpt2_tok):
    loaded = load_eval_model(gpt2_model_dir, device="cpu")
    assert loaded.name == str(gpt2_model_dir) and loaded.context_length == 64 and not loaded.module.training
    assert loaded.tokenizer.spec["type"] == "gpt2" and loaded.device == torch.device("cpu")
    assert load_eval_model(loaded) is loaded
    module = tiny_gpt(gpt2_tok.vocab_size).train()
    built = load_eval_model(module, "gpt2", dtype="bfloat16")
    assert built.module is module and not module.training and module.tok_emb.weight.dtype == torch.bfloat16
    assert built.name == "GPT" and built.tokenizer.vocab_size == 50257


@pytest.mark.parametrize("model, tokenizer, message", [
    (tiny_gpt(300), None, "tokenizer: a model object was given without its tokenizer"),
    (tiny_gpt(300), "gpt2", None),
    (42, "gpt2", "model int: expected a model directory or name, a module, or an EvalModel"),
])
def test_bad_model_sources_are_one_line(model, tokenizer, message):
    if message is None:  # a bad dtype is named before anything is loaded
        with pytest.raises(ScratchLLMError, match=r"^dtype 'float8': expected one of float32, bfloat16, float16$"):
            load_eval_model(model, tokenizer, dtype="float8")
        return
    with pytest.raises(ScratchLLMError) as info:
        load_eval_model(model, tokenizer)
    assert str(info.value) == message


@pytest.mark.parametrize("batch_size", [1, 2, 5])
def test_batched_requests_score_as_they_do_alone(small_tok, batch_size):
    torch.manual_seed(0)
    model = EvalModel(Bigram(torch.randn(small_tok.vocab_size, small_tok.vocab_size) * 3, context_length=12),
                      small_tok, "bigram")
    texts = ["It had always been", "his fate", "to have women say such things of him", "x", "Gisburn"]
    requests = [Request(small_tok.encode(t), [small_tok.encode(" a"), small_tok.encode(" lot of it")][: 1 + i % 2])
                for i, t in enumerate(texts)]
    alone = [continuation_logprobs(model.module, r.context, r.continuations, 12) for r in requests]
    batched = list(score_requests(model, requests, batch_size))
    assert [len(s) for s in batched] == [len(r.continuations) for r in requests]
    for got, want in zip(batched, alone):
        for g, w in zip(got, want):
            assert g["logprob"] == pytest.approx(w["logprob"], abs=1e-5)
            assert (g["tokens"], g["greedy"], g["truncated"]) == (w["tokens"], w["greedy"], w["truncated"])
    assert any(s["truncated"] for scores in alone for s in scores)  # the long row is cut to the context


def test_batch_size_is_checked(small_tok):
    with pytest.raises(ScratchLLMError, match=r"^batch_size 0: expected an integer >= 1$"):
        list(score_requests(EvalModel(tiny_gpt(small_tok.vocab_size), small_tok, "m"), [], 0))
