"""The encoder-decoder: a reversal task learned to high exact match through `pretrain --objective
seq2seq`, greedy and beam search (beam 1 == greedy, the best hypothesis under controlled scores, KV
cache == recompute), padding, saving and loading, and the translate CLI's errors."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch

from scratchllm.checkpoint import load, save_model
from scratchllm.cli import main
from scratchllm.models.config import GPTConfig
from scratchllm.errors import ScratchLLMError
from scratchllm.models.gpt import GPT
from scratchllm.evaluation.info import model_info
from scratchllm.inference.translate import translate
from scratchllm.models.encoder_decoder import DecoderSteps, EncoderDecoder, beam_decode, beam_search, greedy_decode
from scratchllm.recipes.pretrain import pretrain
from scratchllm.recipes.seq2seq import collate_pairs, encode_pairs, exact_match, load_pairs
from scratchllm.tokenizer import BPETokenizer, Tokenizer

EOT = 256  # the byte-level tokenizer: ids 0..255 are bytes, 256 is <|endoftext|>
LETTERS = "abcdefgh"


def byte_tokenizer() -> Tokenizer:
    return BPETokenizer([], {"<|endoftext|>": EOT})


def reversal_words(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    words: set[str] = set()
    while len(words) < n:
        words.add("".join(rng.choice(LETTERS) for _ in range(rng.randint(3, 8))))
    out = sorted(words)
    rng.shuffle(out)
    return out


def tiny(**overrides) -> EncoderDecoder:
    torch.manual_seed(0)
    return EncoderDecoder(GPTConfig.from_preset("gpt-tiny", vocab_size=257, context_length=24, **overrides)).eval()


def scrambled() -> EncoderDecoder:
    """An untied model with large random weights: its greedy outputs differ from source to source
    (a fresh model with GPT-2's small init mostly predicts end-of-text at once)."""
    model = tiny(tie_embeddings=False)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.3)
    return model


# --------------------------------------------------------------------------------------------------
# Learning a task with a known answer


@pytest.fixture(scope="module")
def reversal(tmp_path_factory):
    """An encoder-decoder trained by the CLI to reverse strings of 3-8 letters (2,700 training pairs,
    held-out words never seen in training); ~25 s on one thread."""
    root = tmp_path_factory.mktemp("reverse")
    words = reversal_words(3200)
    train, held_out = words[:2700], words[2700:]
    (root / "pairs.tsv").write_text("".join(f"{w}\t{w[::-1]}\n" for w in train), encoding="utf-8")
    byte_tokenizer().save(root / "bytes.json")
    args = ["pretrain", "--objective", "seq2seq", "--data", str(root / "pairs.tsv"), "--tokenizer", str(root / "bytes.json"),
            "--model", "gpt-tiny", "--context-length", "16", "--out", str(root / "run"), "--max-steps", "300",
            "--batch-size", "64", "--lr", "3e-3", "--min-lr", "3e-4", "--warmup-steps", "20", "--weight-decay", "0",
            "--eval-every", "0", "--save-every", "0", "--log-every", "50", "--device", "cpu", "--no-progress"]
    assert main(args) == 0
    model, tok = load(root / "run", kind="seq2seq")
    return root, model, tok, held_out


def test_reversal_is_learned_to_high_exact_match_on_held_out_pairs(reversal):
    root, model, tok, held_out = reversal
    pairs = encode_pairs(tok, [(w, w[::-1]) for w in held_out], model.config.context_length)
    assert exact_match(model, pairs, tok.eot_id) >= 0.9  # 500 words never seen in training (measured: 1.0)
    summary = [json.loads(line) for line in (root / "run" / "metrics.jsonl").read_text().splitlines()][-1]
    assert summary["val_exact_match"] >= 0.9 and summary["val_loss"] < 0.1
    assert translate(model, tok, "abcdefg") == "gfedcba"
    assert translate(model, tok, "hhgab", beam=4) == "baghh"


def test_translate_cli_prints_the_translation(reversal, capsys):
    root, *_ = reversal
    assert main(["translate", "--model", str(root / "run"), "--text", "cabbage", "--beam", "3"]) == 0
    assert capsys.readouterr().out == "egabbac\n"


def test_the_run_directory_is_a_seq2seq_model_that_a_gpt_loader_refuses_clearly(reversal):
    root, *_ = reversal
    saved = json.loads((root / "run" / "final" / "config.json").read_text())
    assert saved["format"] == "scratchllm" and saved["kind"] == "seq2seq" and saved["tokenizer"]["type"] == "bpe"
    run_config = json.loads((root / "run" / "run_config.json").read_text())
    assert run_config["objective"] == "seq2seq" and run_config["data"]["train_pairs"] == 2430
    assert isinstance(load(root / "run")[0], EncoderDecoder)
    with pytest.raises(ScratchLLMError, match=r"an encoder-decoder \(seq2seq\), not a GPT decoder; an encoder-decoder is "
                                              r"used with `scratchllm translate`"):
        load(root / "run", kind="gpt")


# --------------------------------------------------------------------------------------------------
# Decoding


def test_beam_1_is_greedy_decoding_and_the_cache_changes_nothing():
    model = scrambled()
    rng = random.Random(1)
    sources = [[rng.randrange(256) for _ in range(rng.randint(2, 12))] for _ in range(8)]
    greedy = greedy_decode(model, sources, EOT, max_new_tokens=12)
    assert greedy == greedy_decode(model, sources, EOT, max_new_tokens=12, use_cache=False)
    assert len(set(map(tuple, greedy))) > 1  # a real comparison: the outputs differ between sources
    for source, expected in zip(sources, greedy):
        assert greedy_decode(model, [source], EOT, max_new_tokens=12)[0] == expected  # batching: no effect
        best = beam_decode(model, source, EOT, beam_size=1, max_new_tokens=12)[0]
        assert best.tokens == expected
        with_cache = beam_decode(model, source, EOT, beam_size=3, max_new_tokens=12)
        without = beam_decode(model, source, EOT, beam_size=3, max_new_tokens=12, use_cache=False)
        assert [h.tokens for h in with_cache] == [h.tokens for h in without]
        assert [h.log_prob for h in with_cache] == pytest.approx([h.log_prob for h in without], abs=1e-4)


def test_decoder_steps_with_cache_match_recompute_and_teacher_forcing():
    model = scrambled()
    src = torch.randint(0, 256, (2, 9))
    tgt = torch.randint(0, 256, (2, 10))
    with torch.no_grad():
        memory = model.encode(src)
        full = torch.log_softmax(model(src, tgt), dim=-1)  # (2, 10, V)
        cached, plain = DecoderSteps(model, memory, None), DecoderSteps(model, memory, None, use_cache=False)
        for t in range(1, 11):
            a, b = cached(tgt[:, :t]), plain(tgt[:, :t])
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-5)  # large random weights: logits ~ 10-100
            torch.testing.assert_close(a, full[:, t - 1], atol=1e-4, rtol=1e-5)


# Controlled scores over the tokens 0 = end-of-text (also the start), 1 = A, 2 = B, 3 = C:
# P(A) = .6, P(B) = .4; after A: C .5, end .3, B .2; after B: end .9; after A C: end 1.
# Greedy takes A, C, end (p = .30); beam 2 also finds B, end (p = .36), which wins on raw
# log-probability, while per-token normalisation prefers the longer A C end (ln .30 / 3 > ln .36 / 2).
TABLE = {(0,): [0.0, 0.6, 0.4, 0.0], (0, 1): [0.3, 0.0, 0.2, 0.5], (0, 2): [0.9, 0.05, 0.0, 0.05],
         (0, 1, 3): [1.0, 0.0, 0.0, 0.0], (0, 1, 2): [1.0, 0.0, 0.0, 0.0]}


def table_step(tokens: torch.Tensor, parents) -> torch.Tensor:
    rows = [TABLE.get(tuple(r), [0.25] * 4) for r in tokens.tolist()]
    return torch.tensor(rows, dtype=torch.float64).log()


def all_sequences(max_len: int):
    """Every finished sequence of at most max_len tokens with its probability, from TABLE."""
    out, stack = [], [((0,), 1.0)]
    while stack:
        prefix, p = stack.pop()
        for token, q in enumerate(TABLE.get(prefix, [0.25] * 4)):
            if q == 0:
                continue
            if token == 0:
                out.append((list(prefix[1:]), p * q))
            elif len(prefix) < max_len:
                stack.append((prefix + (token,), p * q))
    return out


def test_beam_search_returns_the_highest_scoring_hypothesis():
    greedy = beam_search(table_step, 0, 0, beam_size=1, max_new_tokens=5)
    assert greedy[0].tokens == [1, 3] and greedy[0].log_prob == pytest.approx(math.log(0.30))
    raw = beam_search(table_step, 0, 0, beam_size=2, max_new_tokens=5, length_penalty=0.0)
    assert [h.tokens for h in raw] == [[2], [1, 3]] and raw[0].log_prob == pytest.approx(math.log(0.36))
    assert all(h.finished for h in raw)
    normalised = beam_search(table_step, 0, 0, beam_size=2, max_new_tokens=5, length_penalty=1.0)
    assert normalised[0].tokens == [1, 3] and normalised[0].score == pytest.approx(math.log(0.30) / 3)
    # A wide beam finds the most probable finished sequence of all (enumerated exhaustively).
    best_tokens, best_p = max(all_sequences(4), key=lambda s: s[1])
    wide = beam_search(table_step, 0, 0, beam_size=8, max_new_tokens=4, length_penalty=0.0)
    assert wide[0].tokens == best_tokens == [2] and wide[0].log_prob == pytest.approx(math.log(best_p))


def test_unfinished_hypotheses_are_returned_when_max_new_tokens_is_reached():
    hyps = beam_search(lambda tokens, parents: torch.tensor([[-10.0, -0.1, -3.0]] * len(tokens)), 0, 0,
                       beam_size=2, max_new_tokens=3)
    assert hyps[0].tokens == [1, 1, 1] and not hyps[0].finished


# --------------------------------------------------------------------------------------------------
# Padding, files, errors


def test_source_padding_does_not_change_the_logits():
    model = scrambled()
    short, long = [5, 6, 7], [1, 2, 3, 4, 5, 6, 7, 8]
    src, src_mask, tgt_in, _ = collate_pairs([(short, [9, 9, EOT]), (long, [9, 9, EOT])], EOT, EOT)
    with torch.no_grad():
        together = model(src, tgt_in, src_mask)
        alone = model(torch.tensor([short]), tgt_in[:1])
    torch.testing.assert_close(together[0], alone[0], atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("position", ["learned", "sinusoidal", "rope"])
def test_save_and_load_give_the_same_logits_and_store_the_shared_embedding_once(tmp_path, position):
    from safetensors.torch import load_file

    model = tiny(position=position)
    save_model(model, tmp_path / "m", byte_tokenizer(), extra={"note": "x"})
    loaded, tok = load(tmp_path / "m", kind="seq2seq")
    src, tgt = torch.randint(0, 256, (2, 7)), torch.randint(0, 256, (2, 5))
    with torch.no_grad():
        torch.testing.assert_close(loaded(src, tgt), model(src, tgt), atol=0, rtol=0)
    names = set(load_file(tmp_path / "m" / "model.safetensors"))
    assert "encoder.tok_emb.weight" in names and not names & {"decoder.tok_emb.weight", "decoder.out_head.weight",
                                                              "encoder.out_head.weight"}
    assert loaded.decoder.out_head.weight is loaded.encoder.tok_emb.weight is loaded.decoder.tok_emb.weight
    assert tok.vocab_size == 257
    assert json.loads((tmp_path / "m" / "config.json").read_text())["note"] == "x"


def test_load_pairs_names_the_bad_line(tmp_path):
    bad = tmp_path / "pairs.tsv"
    bad.write_text("a\tb\n\nno tab here\n", encoding="utf-8")
    with pytest.raises(ScratchLLMError, match=r"pairs.tsv:3: expected source<TAB>target \(2 tab-separated fields\), got 1"):
        load_pairs(bad)
    bad.write_text("a\t \n", encoding="utf-8")
    with pytest.raises(ScratchLLMError, match=r"pairs.tsv:1: empty target"):
        load_pairs(bad)


def test_translate_cli_errors_are_one_line_with_exit_code_2(tmp_path, capsys):
    model = tiny()
    save_model(model, tmp_path / "s2s", byte_tokenizer())
    save_model(GPT(GPTConfig.from_preset("gpt-tiny", vocab_size=257)), tmp_path / "gpt", byte_tokenizer())
    for args, message in [
        (["--model", str(tmp_path / "missing"), "--text", "abc"], "missing: no such directory"),
        (["--model", str(tmp_path / "s2s"), "--text", "   "], "--text is empty; give the source text to translate"),
        (["--model", str(tmp_path / "gpt"), "--text", "abc"], "not an encoder-decoder (seq2seq)"),
        (["--model", str(tmp_path / "s2s"), "--text", "abc", "--max-new-tokens", "40"],
         "max_new_tokens 40: at most context_length - 1 = 23 for this model"),
        (["--model", str(tmp_path / "s2s"), "--text", "abc", "--beam", "0"], "beam 0: expected an integer >= 1"),
        (["--model", str(tmp_path / "s2s"), "--text", "x" * 30], "the text to translate is 30 tokens, more than the model's context of 24"),
    ]:
        assert main(["translate", *args]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err


def test_resume_continues_exactly_and_keeps_the_objective(tmp_path):
    """8 steps in one go, or 4 then a resume (objective taken from the run) to 8: the same weights."""
    from safetensors.torch import load_file

    words = reversal_words(200, seed=3)
    (tmp_path / "pairs.tsv").write_text("".join(f"{w}\t{w[::-1]}\n" for w in words), encoding="utf-8")
    byte_tokenizer().save(tmp_path / "bytes.json")
    flags = dict(tokenizer=str(tmp_path / "bytes.json"), context_length=16, batch_size=8, lr=1e-3, min_lr=1e-3,
                 warmup_steps=0, eval_every=0, save_every=4, log_every=1, device="cpu", progress=False)
    pretrain(tmp_path / "pairs.tsv", "gpt-tiny", tmp_path / "a", objective="seq2seq", max_steps=8, **flags)
    pretrain(tmp_path / "pairs.tsv", "gpt-tiny", tmp_path / "b", objective="seq2seq", max_steps=4, **flags)
    pretrain(out=tmp_path / "b", resume=True, max_steps=8)
    a, b = (load_file(tmp_path / d / "final" / "model.safetensors") for d in ("a", "b"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((tmp_path / "b" / "final" / "config.json").read_text())["objective"] == "seq2seq"


def test_info_counts_both_stacks_of_an_encoder_decoder_directory(tmp_path):
    model = tiny()
    save_model(model, tmp_path / "s2s", byte_tokenizer())
    info = model_info(tmp_path / "s2s")
    assert info["architecture"] == "encoder-decoder"
    assert info["parameters"] == sum(p.numel() for p in model.parameters())  # shared tensors once
    assert info["breakdown"]["attention"] == sum(
        p.numel() for n, p in model.named_parameters() if ".attn." in n or ".cross_attn." in n
    )
