"""The BERT-style encoder: the mask token, BERT's masking rule, MLM training through the shared loop,
fill-mask, and classification on an encoder body."""

from __future__ import annotations

import json
import random

import pytest
import torch

from scratchllm.checkpoint import load, save_model
from scratchllm.cli import main
from scratchllm.data import load_corpus
from scratchllm.models.config import GPTConfig
from scratchllm.errors import ScratchLLMError
from scratchllm.inference.fill_mask import MASK_TOKEN, fill_mask, mask_token_id, with_mask_token
from scratchllm.models.classifier import Classifier
from scratchllm.models.gpt import GPT
from scratchllm.recipes.mlm import MaskingConfig, MLMTask, mask_tokens, mlm_loss
from scratchllm.recipes.pretrain import pretrain
from scratchllm.tokenizer import BPETokenizer, Tokenizer

SENTENCES = ["the cat sat on the mat.", "the dog ran in the park.", "a bird sang in the tree.", "my fish swam in the bowl."]


# --------------------------------------------------------------------------------------------------
# The mask token


def test_mask_token_is_appended_after_the_vocabulary_and_survives_a_model_directory(tmp_path):
    gpt2 = Tokenizer.gpt2()
    tok = with_mask_token(gpt2)
    assert tok.vocab_size == 50258 and mask_token_id(tok) == 50257 and tok.eot_id == 50256
    assert with_mask_token(tok) is tok  # idempotent
    assert tok.encode("Hello world") == gpt2.encode("Hello world") == [15496, 995]
    assert tok.encode(f"a {MASK_TOKEN}", allowed_special={MASK_TOKEN}) == [64, 220, 50257]
    model = GPT(GPTConfig.from_preset("gpt-tiny", vocab_size=tok.vocab_size, causal=False))
    save_model(model, tmp_path / "enc", tok)
    _, loaded = load(tmp_path / "enc")
    assert loaded.special_tokens == {"<|endoftext|>": 50256, MASK_TOKEN: 50257}
    assert loaded.encode("Hello world") == [15496, 995]


def test_a_tokenizer_without_mask_token_is_refused_by_name():
    with pytest.raises(ScratchLLMError, match=r"the tokenizer has no <\|mask\|> token .*--objective mlm"):
        mask_token_id(BPETokenizer([], {"<|endoftext|>": 256}))


# --------------------------------------------------------------------------------------------------
# The masking rule (Devlin et al. 2019: 15% selected; 80% mask, 10% random, 10% unchanged)


def test_masking_proportions_on_a_large_batch_and_never_padding_or_specials():
    eot, mask = 998, 999  # a vocabulary of 1000: the specials take the last ids, 998 ordinary ids
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 998, (128, 512), generator=g)
    ids[torch.rand(ids.shape, generator=g) < 0.05] = eot  # document separators in the windows
    lengths = torch.randint(200, 513, (128,), generator=g)
    attention = torch.arange(512)[None, :] < lengths[:, None]  # right padding
    ids[~attention] = eot  # padded with end-of-text, as the classifier pads
    inputs, labels = mask_tokens(ids, mask, [eot, mask], 998, attention, generator=torch.Generator().manual_seed(1))

    selected = labels != -100
    candidates = attention & (ids != eot)
    assert not (selected & ~candidates).any()  # never padding, never a special token
    assert torch.equal(labels[selected], ids[selected])  # labels are the original ids ...
    assert torch.equal(inputs[~selected], ids[~selected])  # ... and nothing else is touched
    rate = selected.sum().item() / candidates.sum().item()
    assert abs(rate - 0.15) < 0.01, rate  # ~40k candidates: the standard error is 0.002

    n = selected.sum().item()
    became_mask = (inputs[selected] == mask).sum().item() / n
    unchanged = (inputs[selected] == ids[selected]).sum().item() / n
    random_token = 1 - became_mask - unchanged
    assert abs(became_mask - 0.8) < 0.02 and abs(unchanged - 0.1) < 0.02 and abs(random_token - 0.1) < 0.02
    replaced = inputs[selected & (inputs != mask) & (inputs != ids)]
    assert replaced.numel() > 0 and replaced.max() < 998  # random replacements are ordinary tokens


def test_masks_depend_only_on_the_generator():
    ids = torch.randint(0, 50, (4, 64))
    a = mask_tokens(ids, 51, [50, 51], 50, generator=torch.Generator().manual_seed(5))
    b = mask_tokens(ids, 51, [50, 51], 50, generator=torch.Generator().manual_seed(5))
    assert all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize(
    "fields, message",
    [({"mask_prob": 1.5}, "'mask_prob' must be a number in \\[0, 1\\]"),
     ({"mask_prob": 0.0}, "'mask_prob' must be > 0"),
     ({"replace_mask": 0.95, "replace_random": 0.1}, "replace_mask \\+ replace_random = 1.05 exceeds 1")],
)
def test_masking_config_is_validated(fields, message):
    with pytest.raises(ScratchLLMError, match=message):
        MaskingConfig(**fields)


# --------------------------------------------------------------------------------------------------
# The encoder


def test_encoder_attends_both_ways_and_ignores_padding():
    torch.manual_seed(0)
    enc = GPT(GPTConfig.from_preset("gpt-tiny", vocab_size=60, causal=False)).eval()
    dec = GPT(GPTConfig.from_preset("gpt-tiny", vocab_size=60)).eval()
    dec.load_state_dict(enc.state_dict())
    idx = torch.randint(0, 58, (1, 12))
    later = idx.clone()
    later[0, -1] = (idx[0, -1] + 1) % 58
    with torch.no_grad():
        assert not torch.allclose(enc.hidden_states(idx)[0, 0], enc.hidden_states(later)[0, 0], atol=1e-4)
        torch.testing.assert_close(dec.hidden_states(idx)[0, 0], dec.hidden_states(later)[0, 0])  # causal: blind
        # Right padding with a mask: the real positions are as without padding.
        padded = torch.cat([idx, torch.full((1, 5), 59)], dim=1)
        mask = torch.cat([torch.ones(1, 12), torch.zeros(1, 5)], dim=1)
        torch.testing.assert_close(enc.hidden_states(padded, attention_mask=mask)[:, :12], enc.hidden_states(idx),
                                   atol=1e-5, rtol=1e-5)


def test_mlm_loss_reads_only_the_selected_positions():
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_preset("gpt-tiny", vocab_size=40, causal=False))
    inputs = torch.randint(0, 38, (2, 16))
    labels = torch.full_like(inputs, -100)
    labels[0, 3], labels[1, 9] = 7, 21
    logits = model(inputs)
    expected = torch.nn.functional.cross_entropy(torch.stack([logits[0, 3], logits[1, 9]]), torch.tensor([7, 21]))
    torch.testing.assert_close(mlm_loss(model, inputs, labels), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("pooling", ["mean", "first"])
def test_classifier_on_an_encoder_body_does_not_see_the_padding(pooling):
    torch.manual_seed(0)
    body = GPT(GPTConfig.from_preset("gpt-tiny", vocab_size=60, causal=False)).eval()
    clf = Classifier(body, ["ham", "spam"], pooling).eval()
    short, long = torch.randint(0, 58, (6,)), torch.randint(0, 58, (10,))
    batch = torch.full((2, 10), 59)
    batch[0, :6], batch[1] = short, long
    with torch.no_grad():
        alone = clf(short[None], torch.tensor([6]))
        together = clf(batch, torch.tensor([6, 10]))
    torch.testing.assert_close(together[0], alone[0], atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------------------------------
# Training through the shared loop, and fill-mask


@pytest.fixture(scope="module")
def trained_encoder(tmp_path_factory):
    """A tiny encoder trained by `pretrain(objective="mlm")` on four memorised sentences (~5 s)."""
    root = tmp_path_factory.mktemp("mlm")
    rng = random.Random(0)
    text = " ".join(rng.choice(SENTENCES) for _ in range(600))
    (root / "corpus.txt").write_text(text, encoding="utf-8")
    Tokenizer.train([text], 300).save(root / "tok.json")
    # Rotary positions: with learned absolute ones the loss sits at the unigram level (~2.7) for ~1,200
    # steps before attention to the neighbours is found (measured; see docs/LOG.md); with RoPE ~250.
    summary = pretrain(root / "corpus.txt", {"preset": "gpt-tiny", "position": "rope"}, root / "run", tokenizer=str(root / "tok.json"), objective="mlm",
                       context_length=32, batch_size=16, max_steps=300, lr=3e-3, min_lr=3e-4, warmup_steps=20,
                       weight_decay=0.0, eval_every=0, eval_batches=4, log_every=10, save_every=0, device="cpu",
                       progress=False)
    rows = [json.loads(line) for line in (root / "run" / "metrics.jsonl").read_text().splitlines()]
    return root, summary, rows


def test_mlm_loss_falls_and_the_run_directory_holds_an_encoder(trained_encoder):
    root, summary, rows = trained_encoder
    losses = [r["loss"] for r in rows if "loss" in r]
    assert losses[0] > 5.0  # about ln(301): nothing known yet
    assert summary["eval"]["val_loss"] < 1.0 and summary["eval"]["val_accuracy"] > 0.7
    run_config = json.loads((root / "run" / "run_config.json").read_text())
    assert run_config["objective"] == "mlm" and run_config["model"]["causal"] is False
    saved = json.loads((root / "run" / "final" / "config.json").read_text())
    assert saved["objective"] == "mlm" and saved["mask_token"] == MASK_TOKEN
    model, tok = load(root / "run")  # a plain scratchllm model directory: checkpoint.load reads it
    assert model.config.causal is False and mask_token_id(tok) == 300


@pytest.mark.parametrize(
    "text, word",
    [("the [MASK] ran in the park.", " dog"), ("a bird sang in the [MASK].", " tree"), ("my fish [MASK] in the bowl.", " swam")],
)
def test_fill_mask_finds_the_memorised_word(trained_encoder, text, word):
    root, _, _ = trained_encoder
    model, tok = load(root / "run")
    (best, *rest), = fill_mask(model, tok, text, top_k=3)
    assert best.token == word and best.probability > 0.5
    assert best.text == text.replace(" [MASK]", word)
    assert len(rest) == 2 and best.probability >= rest[0].probability >= rest[1].probability


def test_fill_mask_cli_prints_fillers_and_rejects_bad_input(trained_encoder, tmp_path, capsys):
    root, _, _ = trained_encoder
    assert main(["fill-mask", "--model", str(root / "run"), "--text", "the [MASK] sat on the [MASK].", "--top-k", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "[MASK] 1 of 2:" and out[3] == "[MASK] 2 of 2:" and len(out) == 6
    prob, word, filled = out[1].split(None, 2)
    assert word == "cat" and float(prob) > 0.5 and filled == "the cat sat on the [MASK]."
    assert out[4].split()[1] == "mat"

    decoder = tmp_path / "decoder"
    save_model(GPT(GPTConfig.from_preset("gpt-tiny", vocab_size=301)), decoder, load(root / "run")[1])
    for args, message in [
        (["--model", str(root / "run"), "--text", "no marker here"], "the text has no [MASK] marker: 'no marker here'"),
        (["--model", str(root / "run"), "--text", "  "], "--text is empty; give a sentence with [MASK] in it"),
        (["--model", str(tmp_path / "missing"), "--text", "a [MASK]"], "missing: no such directory"),
        (["--model", str(decoder), "--text", "a [MASK]"], "a GPT decoder, not an encoder (causal false)"),
    ]:
        assert main(["fill-mask", *args]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err


def test_mlm_task_resumes_with_the_same_masks(trained_encoder):
    root, _, _ = trained_encoder
    tok = with_mask_token(Tokenizer.load(root / "tok.json"))
    corpus = load_corpus(root / "corpus.txt", tok)
    task = MLMTask(corpus, 4, 32, tok, seed=3)
    task.next_batch()
    state = task.state_dict()
    expected = task.next_batch()
    other = MLMTask(corpus, 4, 32, tok, seed=3)
    other.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(other.next_batch(), expected))

