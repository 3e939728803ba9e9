"""Perplexity with a sliding window (evaluation/perplexity.py): every token scored once with enough
context, checked against a uniform model (loss = ln V), a brute-force per-token computation, a data
directory's val split, and the CLI's report."""

from __future__ import annotations

import json
import math

import pytest
import torch

from scratchllm.checkpoint import save_model
from scratchllm.data import TokenData, prepare
from scratchllm.errors import ScratchLLMError
from scratchllm.evaluation.lm import evaluate_perplexity
from scratchllm.evaluation.perplexity import sliding_windows
from tests.helpers import run_cli, tiny_gpt


@pytest.mark.parametrize("n, ctx, stride", [(2, 8, 8), (9, 8, 8), (10, 8, 8), (100, 8, 8), (100, 8, 3),
                                            (100, 8, 1), (57, 16, 5), (17, 16, 16), (5, 16, 4)])
def test_sliding_windows_score_each_token_once_with_enough_context(n, ctx, stride):
    windows = sliding_windows(n, ctx, stride)
    scored = [p for begin, end, new in windows for p in range(end - new, end)]
    assert scored == list(range(1, n))  # every target once, in order
    for begin, end, new in windows:
        assert 1 <= new <= end - begin - 1 and end - begin <= ctx + 1
        for p in range(end - new, end):
            assert p - begin >= min(p, ctx + 1 - stride)  # left context of target p
    if n > ctx + 1:
        assert all(end - begin == ctx + 1 for begin, end, _ in windows)  # equal lengths: they batch


def test_sliding_windows_reject_bad_stride():
    with pytest.raises(ScratchLLMError, match=r"stride 9: expected 1..context_length \(8\)"):
        sliding_windows(100, 8, 9)


@pytest.mark.parametrize("stride, batch_size", [(64, 8), (17, 3), (1, 64)])
def test_uniform_model_has_loss_ln_vocab_and_counts_every_token_once(tmp_path, gpt2_tok, shared_data, stride, batch_size):
    text = (shared_data / "the-verdict.txt").read_text(encoding="utf-8")[:2500]
    path = tmp_path / "text.txt"
    path.write_text(text, encoding="utf-8")
    model = tiny_gpt(gpt2_tok.vocab_size, tie_embeddings=False)
    with torch.no_grad():
        model.out_head.weight.zero_()  # every logit 0: the uniform distribution
    report = evaluate_perplexity(model, path, tokenizer=gpt2_tok, stride=stride, batch_size=batch_size)
    V = gpt2_tok.vocab_size
    assert report["tokens"] == len(gpt2_tok.encode(text))  # end-of-text first, so every token is a target
    assert report["first_token_scored"] is True
    assert report["bytes"] == len(text.encode("utf-8"))
    assert report["loss"] == pytest.approx(math.log(V), abs=1e-5)
    assert report["perplexity"] == pytest.approx(V, rel=1e-4)
    assert report["bits_per_byte"] == pytest.approx(
        report["loss"] * report["tokens"] / report["bytes"] / math.log(2), rel=1e-12)
    assert report["windows"] == len(sliding_windows(report["tokens"] + 1, 64, stride))


def test_stride_one_equals_brute_force_with_full_context(tmp_path, small_tok):
    text = "It had always been his fate to have women say such things of him."
    path = tmp_path / "t.txt"
    path.write_text(text, encoding="utf-8")
    model = tiny_gpt(small_tok.vocab_size, seed=3, context_length=8)
    report = evaluate_perplexity(model, path, tokenizer=small_tok, stride=1, batch_size=5)
    seq = [small_tok.eot_id] + small_tok.encode(text)
    nats = 0.0
    with torch.no_grad():
        for p in range(1, len(seq)):
            ctx = seq[max(0, p - 8):p]  # the 8 tokens before p (fewer at the start)
            logp = torch.log_softmax(model(torch.tensor([ctx]))[0, -1], dim=-1)
            nats -= float(logp[seq[p]])
    assert report["tokens"] == len(seq) - 1
    assert report["nats"] == pytest.approx(nats, rel=1e-5)
    assert report["loss"] == pytest.approx(nats / (len(seq) - 1), rel=1e-5)
    # A larger stride gives less context to some tokens, so a different (here: valid) total.
    coarse = evaluate_perplexity(model, path, tokenizer=small_tok, stride=8)
    assert coarse["tokens"] == report["tokens"] and coarse["bytes"] == report["bytes"]


def test_without_bos_or_end_of_text_the_first_token_is_context_and_a_warning_says_so(tmp_path, capsys):
    """A byte-level tokenizer with no special token has nothing to predict the first token from: it is
    left out of the tokens, the bytes and the loss, and the run says so (it used to be silent)."""
    from scratchllm.tokenizer import BPETokenizer

    tok = BPETokenizer([], {})  # the 256 bytes, no special tokens
    text = "Tokens after the first."
    path = tmp_path / "t.txt"
    path.write_text(text, encoding="utf-8")
    model = tiny_gpt(tok.vocab_size, seed=1, context_length=8)
    report = evaluate_perplexity(model, path, tokenizer=tok, stride=1)
    assert capsys.readouterr().err == (f"warning: data file {path}: the tokenizer has neither a BOS nor an end-of-text "
                                       "token to start the text from, so its first token (b'T') is context only, "
                                       "not scored\n")
    seq = list(text.encode("utf-8"))
    nats = 0.0
    with torch.no_grad():
        for p in range(1, len(seq)):
            logp = torch.log_softmax(model(torch.tensor([seq[max(0, p - 8):p]]))[0, -1], dim=-1)
            nats -= float(logp[seq[p]])
    assert report["first_token_scored"] is False
    assert (report["tokens"], report["bytes"]) == (len(seq) - 1, len(seq) - 1)
    assert report["nats"] == pytest.approx(nats, rel=1e-5)


def test_perplexity_on_a_data_directory_scores_its_val_split(tmp_path, small_tok, shared_data):

    tok_file = small_tok.save(tmp_path / "tok.json")
    prepare([str(shared_data / "the-verdict.txt")], str(tok_file), str(tmp_path / "data"), val_fraction=0.2,
            progress=False, context_length=32)
    val = TokenData.open(tmp_path / "data").val
    model = tiny_gpt(small_tok.vocab_size, tie_embeddings=False)
    with torch.no_grad():
        model.out_head.weight.zero_()
    report = evaluate_perplexity(model, tmp_path / "data", tokenizer=small_tok, batch_size=16)
    first = int(val.window(0, 1)[0])
    assert report["source"] == "val split"
    assert report["tokens"] == len(val) - 1  # all but the first token have a left context
    assert report["first_token_scored"] is False
    assert report["bytes"] == val.bytes - (0 if first == small_tok.eot_id else len(small_tok.token_bytes(first)))
    assert report["loss"] == pytest.approx(math.log(small_tok.vocab_size), abs=1e-5)
    # A model whose tokenizer is not the data's is refused.
    with pytest.raises(ScratchLLMError, match="tokenized with"):
        evaluate_perplexity(tiny_gpt(50257), tmp_path / "data", tokenizer="gpt2")


def test_perplexity_max_tokens_and_cli_report(tmp_path, capsys, small_tok, shared_data):
    model_dir = save_model(tiny_gpt(small_tok.vocab_size), tmp_path / "model", small_tok)
    out = tmp_path / "report.json"
    rc, stdout, _ = run_cli(capsys, "evaluate", "perplexity", "--model", model_dir, "--data",
                            shared_data / "the-verdict.txt", "--max-tokens", 300, "--stride", 32, "--device", "cpu",
                            "--out", out)
    assert rc == 0
    report = json.loads(out.read_text())
    assert report["tokens"] == 300 and report["stride"] == 32 and report["context_length"] == 64
    assert report["perplexity"] == pytest.approx(math.exp(report["loss"]))
    lines = stdout.splitlines()
    assert lines[0].startswith("perplexity: ") and any(line.split()[:1] == ["perplexity"] for line in lines[1:])
    assert "  tokens            300" in stdout
