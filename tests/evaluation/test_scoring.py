"""Scoring continuations (evaluation/scoring.py): log-probabilities against a bigram table by hand, left
truncation, the empty context, and agreement with `transformers` on an exported model (what
lm-evaluation-harness's `hf` model computes) and with its tokenizers' contexts."""

from __future__ import annotations

import pytest
import torch

from scratchllm.checkpoint.convert import export_hf
from scratchllm.evaluation.runner import load_eval_model
from scratchllm.evaluation.scoring import continuation_logprobs, encode_request, loglikelihood
from scratchllm.tokenizer import Tokenizer
from tests.helpers import Bigram


def test_continuation_logprobs_match_a_bigram_table_by_hand(small_tok):
    torch.manual_seed(0)
    V = small_tok.vocab_size
    model = Bigram(torch.randn(V, V) * 3)
    logp = torch.log_softmax(model.table.detach(), dim=-1)
    ctx = small_tok.encode("It had always")
    conts = [small_tok.encode(" been his fate"), small_tok.encode(" x")]
    scores = continuation_logprobs(model, ctx, conts)
    for cont, score in zip(conts, scores):
        full = ctx + cont
        expected = sum(float(logp[full[i - 1], full[i]]) for i in range(len(ctx), len(full)))
        assert score["logprob"] == pytest.approx(expected, abs=1e-4)
        assert score["tokens"] == len(cont) and not score["truncated"]
    # Left truncation keeps the last max_length + 1 tokens; the continuation stays fully scored.
    long_ctx = small_tok.encode("a b c d e f g h i j k l m n o p q r s t u v w x y z " * 3)
    (cut,) = continuation_logprobs(model, long_ctx, [conts[0]], max_length=10)
    full = (long_ctx + conts[0])[-11:]
    expected = sum(float(logp[full[i - 1], full[i]]) for i in range(11 - len(conts[0]), 11))
    assert cut["truncated"] and cut["logprob"] == pytest.approx(expected, abs=1e-4)


def test_empty_context_is_scored_after_end_of_text(small_tok):
    torch.manual_seed(2)
    V = small_tok.vocab_size
    model = Bigram(torch.randn(V, V))
    cont = small_tok.encode("Hello")
    logp = torch.log_softmax(model.table.detach(), dim=-1)
    seq = [small_tok.eot_id] + cont
    expected = sum(float(logp[seq[i - 1], seq[i]]) for i in range(1, len(seq)))
    assert loglikelihood(model, small_tok, "", "Hello") == pytest.approx(expected, abs=1e-4)



# --------------------------------------------------------------------------------------------------
# Interoperability: an exported model scores the same in transformers (what lm-eval's `hf` model uses)


def test_exported_model_gives_the_same_loglikelihoods_in_transformers(tmp_path, gpt2_tok, gpt2_model_dir):
    import transformers

    transformers.logging.set_verbosity_error()
    hf_dir = export_hf(gpt2_model_dir, tmp_path / "hf")
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
    ours = load_eval_model(gpt2_model_dir, device="cpu").module
    context, choices = "The capital of France is", [" Paris", " a large city in Europe"]
    ctx, conts = encode_request(gpt2_tok, context, choices)
    assert hf_tok(context)["input_ids"] == ctx and [hf_tok(c)["input_ids"] for c in choices] == conts
    expected = []
    with torch.no_grad():
        for cont in conts:
            full = torch.tensor([ctx + cont])
            logp = torch.log_softmax(hf_model(full).logits[0, :-1].float(), dim=-1)  # (T-1, V)
            targets = full[0, 1:]
            expected.append(float(logp[torch.arange(len(targets)), targets][-len(cont):].sum()))
    got = [s["logprob"] for s in continuation_logprobs(ours, ctx, conts)]
    assert got == pytest.approx(expected, abs=1e-4)
    # The same scoring code, handed the transformers model, agrees too.
    assert [s["logprob"] for s in continuation_logprobs(hf_model, ctx, conts)] == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("kind, starts_with_bos", [("llama3", True), ("qwen2", False)])
def test_contexts_start_as_transformers_tokenizes_them(hf_tokenizer_dir, kind, starts_with_bos):
    """A Llama 3 context starts with <|begin_of_text|> as `tokenizer(context)` gives it (Qwen has no
    BOS); an empty context and a scored file start from the document start (BOS, else end-of-text)."""
    import transformers

    tok = Tokenizer.from_hf(hf_tokenizer_dir(kind))
    hf_tok = transformers.AutoTokenizer.from_pretrained(hf_tokenizer_dir(kind))
    context = "The capital of France is"
    ctx, conts = encode_request(tok, context, [" Paris"])
    assert ctx == hf_tok(context)["input_ids"]
    start = list(tok.bos_ids) if starts_with_bos else [tok.eot_id]
    assert bool(tok.bos_ids) == starts_with_bos and ctx[: len(tok.bos_ids)] == list(tok.bos_ids)
    assert encode_request(tok, "", [" Paris"])[0] == start == tok.document_start
