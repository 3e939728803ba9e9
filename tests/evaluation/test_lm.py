"""Tests for evaluate.py: perplexity with a sliding window, few-shot prompting, multiple choice.

Scoring is checked against models whose logits are known by construction (a uniform model, a
constant-logit GPT, a bigram lookup table), against a brute-force per-token computation, against a
tiny model trained here for a few seconds, and against `transformers` on an exported model.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from scratchllm.data.labelled import Examples, load_labelled, stratified_split
from scratchllm.evaluation import lm as ev
from scratchllm.evaluation.metrics import classification_report
from scratchllm.checkpoint import save_model
from scratchllm.checkpoint.convert import export_hf
from scratchllm.cli import main
from scratchllm.data import TokenData, prepare
from scratchllm.models.config import GPTConfig
from scratchllm.errors import ScratchLLMError
from scratchllm.models.gpt import GPT
from scratchllm.tokenizer import Tokenizer


def tiny_gpt(vocab_size: int, seed: int = 0, **overrides) -> GPT:
    fields = dict(vocab_size=vocab_size, context_length=64, emb_dim=16, n_layers=2, n_heads=2)
    torch.manual_seed(seed)
    return GPT(GPTConfig(**{**fields, **overrides})).eval()


def constant_logit_gpt(vocab_size: int, logits: torch.Tensor, **overrides) -> GPT:
    """A real GPT whose logits are `logits` (V,) at every position: the final LayerNorm outputs
    its bias b whatever its input (weight 0), and the untied head maps b to W b = logits."""
    model = tiny_gpt(vocab_size, tie_embeddings=False, **overrides)
    C = model.config.emb_dim
    with torch.no_grad():
        model.final_norm.weight.zero_()
        model.final_norm.bias.zero_()
        model.final_norm.bias[0] = 1.0
        model.out_head.weight.zero_()
        model.out_head.weight[:, 0] = logits
    assert C > 1
    return model


class Bigram(nn.Module):
    """logits[b, t] = table[idx[b, t]]: the next token depends on the current one only, so any
    off-by-one in which position scores which target changes the result."""

    def __init__(self, table: torch.Tensor, context_length: int = 32):
        super().__init__()
        self.table = nn.Parameter(table)
        self.config = GPTConfig(vocab_size=table.shape[0], context_length=context_length, emb_dim=8,
                                n_layers=1, n_heads=1)

    def forward(self, idx):
        return self.table[idx]  # (B, T, V)


@pytest.fixture(scope="module")
def gpt2_tok() -> Tokenizer:
    return Tokenizer.gpt2()


@pytest.fixture(scope="module")
def small_tok(shared_data) -> Tokenizer:
    text = (shared_data / "the-verdict.txt").read_text(encoding="utf-8")
    return Tokenizer.train([text], vocab_size=300)


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


# --------------------------------------------------------------------------------------------------
# Sliding windows and perplexity


@pytest.mark.parametrize("n, ctx, stride", [(2, 8, 8), (9, 8, 8), (10, 8, 8), (100, 8, 8), (100, 8, 3),
                                            (100, 8, 1), (57, 16, 5), (17, 16, 16), (5, 16, 4)])
def test_sliding_windows_score_each_token_once_with_enough_context(n, ctx, stride):
    windows = ev.sliding_windows(n, ctx, stride)
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
        ev.sliding_windows(100, 8, 9)


@pytest.mark.parametrize("stride, batch_size", [(64, 8), (17, 3), (1, 64)])
def test_uniform_model_has_loss_ln_vocab_and_counts_every_token_once(tmp_path, gpt2_tok, shared_data, stride, batch_size):
    text = (shared_data / "the-verdict.txt").read_text(encoding="utf-8")[:2500]
    path = tmp_path / "text.txt"
    path.write_text(text, encoding="utf-8")
    model = tiny_gpt(gpt2_tok.vocab_size, tie_embeddings=False)
    with torch.no_grad():
        model.out_head.weight.zero_()  # every logit 0: the uniform distribution
    report = ev.evaluate_perplexity(model, path, tokenizer=gpt2_tok, stride=stride, batch_size=batch_size)
    V = gpt2_tok.vocab_size
    assert report["tokens"] == len(gpt2_tok.encode(text))  # end-of-text first, so every token is a target
    assert report["bytes"] == len(text.encode("utf-8"))
    assert report["loss"] == pytest.approx(math.log(V), abs=1e-5)
    assert report["perplexity"] == pytest.approx(V, rel=1e-4)
    assert report["bits_per_byte"] == pytest.approx(
        report["loss"] * report["tokens"] / report["bytes"] / math.log(2), rel=1e-12)
    assert report["windows"] == len(ev.sliding_windows(report["tokens"] + 1, 64, stride))


def test_stride_one_equals_brute_force_with_full_context(tmp_path, small_tok):
    text = "It had always been his fate to have women say such things of him."
    path = tmp_path / "t.txt"
    path.write_text(text, encoding="utf-8")
    model = tiny_gpt(small_tok.vocab_size, seed=3, context_length=8)
    report = ev.evaluate_perplexity(model, path, tokenizer=small_tok, stride=1, batch_size=5)
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
    coarse = ev.evaluate_perplexity(model, path, tokenizer=small_tok, stride=8)
    assert coarse["tokens"] == report["tokens"] and coarse["bytes"] == report["bytes"]


def test_perplexity_on_a_data_directory_scores_its_val_split(tmp_path, small_tok, shared_data):

    tok_file = small_tok.save(tmp_path / "tok.json")
    prepare([str(shared_data / "the-verdict.txt")], str(tok_file), str(tmp_path / "data"), val_fraction=0.2,
            progress=False, context_length=32)
    val = TokenData.open(tmp_path / "data").val
    model = tiny_gpt(small_tok.vocab_size, tie_embeddings=False)
    with torch.no_grad():
        model.out_head.weight.zero_()
    report = ev.evaluate_perplexity(model, tmp_path / "data", tokenizer=small_tok, batch_size=16)
    first = int(val.window(0, 1)[0])
    assert report["source"] == "val split"
    assert report["tokens"] == len(val) - 1  # all but the first token have a left context
    assert report["bytes"] == val.bytes - (0 if first == small_tok.eot_id else len(small_tok.token_bytes(first)))
    assert report["loss"] == pytest.approx(math.log(small_tok.vocab_size), abs=1e-5)
    # A model whose tokenizer is not the data's is refused.
    with pytest.raises(ScratchLLMError, match="tokenized with"):
        ev.evaluate_perplexity(tiny_gpt(50257), tmp_path / "data", tokenizer="gpt2")


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


# --------------------------------------------------------------------------------------------------
# Continuation scoring and multiple choice


def test_continuation_logprobs_match_a_bigram_table_by_hand(small_tok):
    torch.manual_seed(0)
    V = small_tok.vocab_size
    model = Bigram(torch.randn(V, V) * 3)
    logp = torch.log_softmax(model.table.detach(), dim=-1)
    ctx = small_tok.encode("It had always")
    conts = [small_tok.encode(" been his fate"), small_tok.encode(" x")]
    scores = ev.continuation_logprobs(model, ctx, conts)
    for cont, score in zip(conts, scores):
        full = ctx + cont
        expected = sum(float(logp[full[i - 1], full[i]]) for i in range(len(ctx), len(full)))
        assert score["logprob"] == pytest.approx(expected, abs=1e-4)
        assert score["tokens"] == len(cont) and not score["truncated"]
    # Left truncation keeps the last max_length + 1 tokens; the continuation stays fully scored.
    long_ctx = small_tok.encode("a b c d e f g h i j k l m n o p q r s t u v w x y z " * 3)
    (cut,) = ev.continuation_logprobs(model, long_ctx, [conts[0]], max_length=10)
    full = (long_ctx + conts[0])[-11:]
    expected = sum(float(logp[full[i - 1], full[i]]) for i in range(11 - len(conts[0]), 11))
    assert cut["truncated"] and cut["logprob"] == pytest.approx(expected, abs=1e-4)


def test_choice_scoring_against_constant_logits(tmp_path, small_tok):
    V = small_tok.vocab_size
    torch.manual_seed(1)
    logits = torch.randn(V) * 2
    model = constant_logit_gpt(V, logits)
    logp = torch.log_softmax(logits, dim=-1)
    rows = [
        {"context": "The cat sat on the ", "choices": ["mat", "window sill", "rug"], "label": 1},
        {"context": "", "choices": [" yes", " no"], "label": 0},
        {"context": "She said", "choices": [" hello there", " hi"], "label": 1},
    ]
    data = tmp_path / "mc.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    report = ev.evaluate_choice(model, data, tokenizer=small_tok)
    hits = {"acc": 0, "acc_norm": 0, "acc_norm_tokens": 0}
    for row, pred in zip(rows, report["predictions"]):
        moved = row["context"][len(row["context"].rstrip()):]  # trailing spaces join the choice
        ids = [small_tok.encode(moved + c) for c in row["choices"]]
        ll = [float(sum(logp[i] for i in cont)) for cont in ids]
        assert pred["logprobs"] == pytest.approx(ll, abs=1e-4)
        assert pred["tokens"] == [len(c) for c in ids]
        by = {"acc": ll, "acc_norm": [x / len(c) for x, c in zip(ll, row["choices"])],
              "acc_norm_tokens": [x / len(c) for x, c in zip(ll, ids)]}
        for key, values in by.items():
            pick = max(range(len(values)), key=values.__getitem__)
            assert pred[f"pred_{key}"] == pick
            hits[key] += pick == row["label"]
    for key, count in hits.items():
        assert report[key] == count / 3 and report["correct"][key] == count
    assert report["chance"] == pytest.approx((1 / 3 + 1 / 2 + 1 / 2) / 3)


def test_empty_context_is_scored_after_end_of_text(small_tok):
    torch.manual_seed(2)
    V = small_tok.vocab_size
    model = Bigram(torch.randn(V, V))
    cont = small_tok.encode("Hello")
    logp = torch.log_softmax(model.table.detach(), dim=-1)
    seq = [small_tok.eot_id] + cont
    expected = sum(float(logp[seq[i - 1], seq[i]]) for i in range(1, len(seq)))
    assert ev.loglikelihood(model, small_tok, "", "Hello") == pytest.approx(expected, abs=1e-4)


SENTENCES = ["the cat sat on the mat.", "the dog ran to the park.", "a bird sang in the tree.",
             "my fish swam in the bowl."]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny GPT trained for a few seconds on the four sentences above, repeated in random order."""
    rng = random.Random(0)
    text = " ".join(rng.choice(SENTENCES) for _ in range(600))
    tok = Tokenizer.train([text], vocab_size=290)
    ids = torch.tensor(tok.encode(text))
    model = tiny_gpt(tok.vocab_size, context_length=32, emb_dim=48, n_heads=4)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3)
    gen = torch.Generator().manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # matrices this small train faster on one thread than on two busy ones
    try:
        for _ in range(100):
            starts = torch.randint(0, len(ids) - 33, (16,), generator=gen)
            batch = torch.stack([ids[s:s + 33] for s in starts])
            loss = model.loss(batch[:, :-1], batch[:, 1:])
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    model.eval()
    # ~0.17 nats/token is the floor: which sentence comes next is random; the rest is determined.
    assert loss.item() < 0.5
    directory = save_model(model, tmp_path_factory.mktemp("trained") / "model", tok)
    return model, tok, directory


def test_trained_model_answers_the_choices_it_saw(tmp_path, capsys, trained):
    _, _, directory = trained
    rows = [
        {"context": "the cat sat on the", "choices": [" park.", " mat.", " bowl."], "label": 1},
        {"context": "the dog ran to the", "choices": [" park.", " tree.", " mat."], "label": 0},
        {"context": "a bird sang in the", "choices": [" bowl.", " mat.", " tree."], "label": 2},
        {"context": "my fish swam in the ", "choices": ["park.", "bowl.", "tree."], "label": 1},
        {"context": "the dog", "choices": [" sat on the mat.", " ran to the park."], "label": 1},
    ]
    data = tmp_path / "mc.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    out = tmp_path / "report.json"
    rc, stdout, _ = run_cli(capsys, "evaluate", "choice", "--model", directory, "--data", data,
                            "--device", "cpu", "--out", out)
    assert rc == 0
    report = json.loads(out.read_text())
    assert (report["n"], report["acc"], report["acc_norm"], report["acc_norm_tokens"]) == (5, 1.0, 1.0, 1.0)
    assert report["truncated"] == 0 and report["model"] == str(directory)
    assert "acc_norm (chars)   1.0000" in stdout


# --------------------------------------------------------------------------------------------------
# Few-shot classification


@pytest.fixture(scope="module")
def sms_slice(tmp_path_factory, shared_data) -> Path:
    lines = (shared_data / "sms_spam_collection.tsv").read_text(encoding="utf-8").splitlines()[:90]
    path = tmp_path_factory.mktemp("sms") / "sms.tsv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def gpt2_model_dir(tmp_path_factory):
    return save_model(tiny_gpt(50257, seed=5), tmp_path_factory.mktemp("gpt2tiny") / "model")


@pytest.mark.parametrize("shots", [0, 1, 3, 5])
def test_fewshot_on_sms_reports_consistent_counts(tmp_path, capsys, sms_slice, gpt2_model_dir, shots):
    out = tmp_path / "fewshot.json"
    rc, stdout, _ = run_cli(capsys, "evaluate", "fewshot", "--model", gpt2_model_dir, "--data", sms_slice,
                            "--shots", shots, "--seed", 1, "--device", "cpu", "--out", out)
    assert rc == 0
    r = json.loads(out.read_text())
    rows = [line.split("\t") for line in sms_slice.read_text().splitlines()]
    matrix = r["confusion_matrix"]
    assert r["labels"] == ["ham", "spam"] and r["candidates"] == [" ham", " spam"]
    assert r["n"] + r["train_examples"] == len(rows) == 90
    assert sum(map(sum, matrix)) == r["n"] == len(r["predictions"])
    assert r["accuracy"] == (matrix[0][0] + matrix[1][1]) / r["n"] == r["correct"] / r["n"]
    assert [r["per_class"][c]["support"] for c in r["labels"]] == [sum(matrix[0]), sum(matrix[1])]
    n_spam = sum(1 for label, _ in rows if label == "spam")
    assert r["per_class"]["spam"]["support"] == n_spam - round(n_spam * 0.7)  # the stratified split
    assert r["truncated"] == sum(p["truncated"] for p in r["predictions"])
    assert sum(p["predicted"] == p["label"] for p in r["predictions"]) == r["correct"]
    first = r["first_example"]
    assert len(first["shots"]) == shots and first["prompt"].endswith(f"Message: {first['text']}\nLabel:")
    if shots == 0:
        assert r["truncated"] == 0 and first["prompt"] == f"Message: {first['text']}\nLabel:"
    if shots == 5:
        assert r["truncated"] > 0  # five SMS messages rarely fit a 64-token context
    assert stdout.startswith("fewshot: ") and "confusion (rows true, columns predicted)" in stdout


def test_fewshot_prompt_is_exact_and_shots_come_from_train(tmp_path, capsys, gpt2_tok):
    rows = [("ham", f"see you at {h} o'clock") for h in range(1, 9)] + [("spam", f"WIN {k}00 pounds now") for k in range(1, 7)]
    data = tmp_path / "small.tsv"
    data.write_text("".join(f"{label}\t{text}\n" for label, text in rows), encoding="utf-8")
    model = tiny_gpt(gpt2_tok.vocab_size, context_length=128)
    r = ev.evaluate_fewshot(model, data, 3, tokenizer=gpt2_tok, seed=7, template="SMS: {text}\nClass:")
    first = r["first_example"]
    expected = "".join(f"SMS: {s['text']}\nClass: {s['label']}\n\n" for s in first["shots"]) + \
        f"SMS: {first['text']}\nClass:"
    assert first["prompt"] == expected and not first["truncated"]
    assert first["prompt_tokens"] == len(gpt2_tok.encode(expected))
    train, test = stratified_split(Examples([t for _, t in rows], [label for label, _ in rows]), (0.7, 0.3), 7)
    train_texts = set(train.texts)
    assert all(s["text"] in train_texts for s in first["shots"]) and first["text"] not in train_texts
    assert first["text"] == test.texts[0]
    again = ev.evaluate_fewshot(model, data, 3, tokenizer=gpt2_tok, seed=7, template="SMS: {text}\nClass:")
    assert again["predictions"] == r["predictions"]  # seeded: the same shots, the same scores


def test_fewshot_predicts_the_label_the_logits_favour(tmp_path, gpt2_tok, sms_slice):
    logits = torch.zeros(gpt2_tok.vocab_size)
    logits[gpt2_tok.encode(" spam")] = 4.0  # " spam" is one token; the context cannot change it
    model = constant_logit_gpt(gpt2_tok.vocab_size, logits, context_length=64)
    r = ev.evaluate_fewshot(model, sms_slice, 1, tokenizer=gpt2_tok, labels=["ham", "spam"])
    spam = r["per_class"]["spam"]
    assert all(p["predicted"] == "spam" for p in r["predictions"])
    assert spam["recall"] == 1.0 and r["accuracy"] == spam["support"] / r["n"] == spam["precision"]
    assert r["per_class"]["ham"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": r["n"] - spam["support"]}
    assert r["predictions"][0]["logprobs"]["spam"] == pytest.approx(
        float(torch.log_softmax(logits, -1)[gpt2_tok.encode(" spam")[0]]), abs=1e-4)


def test_classification_metrics_by_hand():
    m = classification_report(["a", "a", "b", "b", "c"], ["a", "b", "b", "b", "a"], ["a", "b", "c"])
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert m["accuracy"] == 3 / 5
    assert m["per_class"]["b"] == {"precision": 2 / 3, "recall": 1.0, "f1": pytest.approx(0.8), "support": 2}
    assert m["per_class"]["c"]["f1"] == 0.0
    assert m["macro"]["f1"] == pytest.approx((0.5 + 0.8 + 0.0) / 3)


def test_read_labelled_header_and_jsonl(tmp_path):
    tsv = tmp_path / "h.tsv"
    tsv.write_text("id\tbody\tclass\n1\thello\tham\n2\tbuy now\tspam\n", encoding="utf-8")
    got = load_labelled(tsv, "body", "class")
    assert (got.texts, got.labels) == (["hello", "buy now"], ["ham", "spam"])
    got = load_labelled(tsv, "1", "2")  # positional: no header, so the header row is data
    assert (got.texts[1:], got.labels[1:]) == (["hello", "buy now"], ["ham", "spam"])
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text('{"text": "hi", "label": "ham"}\n\n{"text": "win", "label": "spam"}\n', encoding="utf-8")
    got = load_labelled(jsonl)
    assert (got.texts, got.labels) == (["hi", "win"], ["ham", "spam"])


# --------------------------------------------------------------------------------------------------
# Bad input: one line on stderr, exit code 2


@pytest.mark.parametrize("verb, content, suffix, extra, message", [
    ("fewshot", "id\tbody\tclass\n1\thello\tham\n", ".tsv", ["--text-column", "text", "--label-column", "class"],
     "no text column 'text'; columns found: 'id', 'body', 'class'"),
    ("fewshot", "", ".tsv", [], "empty file (expected rows with a text and a label)"),
    ("fewshot", '{"text": "hi"}\n', ".jsonl", [], "no label column 'label'; columns found: 'text'"),
    ("fewshot", "ham\thi\nspam\n", ".tsv", [], "line 2: 1 tab-separated fields, expected 2"),
    ("fewshot", "ham\thi\nspam\tyo\n", ".tsv", ["--shots", "5"], "shots 5: the train split has only 2 examples"),
    ("fewshot", "ham\thi\nspam\tyo\nham\tok\n", ".tsv", ["--labels", "ham,eggs"], "label 'spam' is not one of the labels ham, eggs"),
    ("choice", "", ".jsonl", [], "empty, expected JSON lines with context, choices, label"),
    ("choice", '{"context": "a", "choices": [" b", " c"], "label": 2}\n', ".jsonl", [],
     "line 1: field 'label' must be an index 0..1, got 2"),
    ("choice", '{"context": "a", "choices": " b c", "label": 0}\n', ".jsonl", [],
     "line 1: field 'choices' must be a list of at least 2 non-empty strings"),
    ("choice", '{"context": "a", "choices": [" b", " c"]}\n', ".jsonl", [], "line 1: missing field 'label'"),
    ("choice", '{"context": "a", "choices": [" b", " c"], "label": 0}\nnot json\n', ".jsonl", [], "line 2: not valid JSON"),
    ("perplexity", "", ".txt", [], "no text to score (the file is empty)"),
    ("perplexity", "some text", ".txt", ["--stride", "100"], "stride 100: expected 1..context_length (64)"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, gpt2_model_dir, verb, content, suffix, extra, message):
    data = tmp_path / f"data{suffix}"
    data.write_text(content, encoding="utf-8")
    rc, out, err = run_cli(capsys, "evaluate", verb, "--model", gpt2_model_dir, "--data", data,
                           "--device", "cpu", *extra)
    assert rc == 2 and out == ""
    assert err.startswith("scratchllm evaluate: error: ") and err.count("\n") == 1
    assert message in err


def test_evaluate_without_task_prints_help_and_exits_2(capsys):
    rc, _, err = run_cli(capsys, "evaluate")
    assert rc == 2 and "perplexity" in err and "fewshot" in err and "choice" in err


# --------------------------------------------------------------------------------------------------
# Interoperability: an exported model scores the same in transformers (what lm-eval's `hf` model uses)


def test_exported_model_gives_the_same_loglikelihoods_in_transformers(tmp_path, gpt2_tok, gpt2_model_dir):
    import transformers

    transformers.logging.set_verbosity_error()
    hf_dir = export_hf(gpt2_model_dir, tmp_path / "hf")
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
    ours, _ = ev.model_and_tokenizer(gpt2_model_dir, device="cpu")
    context, choices = "The capital of France is", [" Paris", " a large city in Europe"]
    ctx, conts = ev.encode_request(gpt2_tok, context, choices)
    assert hf_tok(context)["input_ids"] == ctx and [hf_tok(c)["input_ids"] for c in choices] == conts
    expected = []
    with torch.no_grad():
        for cont in conts:
            full = torch.tensor([ctx + cont])
            logp = torch.log_softmax(hf_model(full).logits[0, :-1].float(), dim=-1)  # (T-1, V)
            targets = full[0, 1:]
            expected.append(float(logp[torch.arange(len(targets)), targets][-len(cont):].sum()))
    got = [s["logprob"] for s in ev.continuation_logprobs(ours, ctx, conts)]
    assert got == pytest.approx(expected, abs=1e-4)
    # The same scoring code, handed the transformers model, agrees too.
    assert [s["logprob"] for s in ev.continuation_logprobs(hf_model, ctx, conts)] == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("kind, starts_with_bos", [("llama3", True), ("qwen2", False)])
def test_contexts_start_as_transformers_tokenizes_them(hf_tokenizer_dir, kind, starts_with_bos):
    """A Llama 3 context starts with <|begin_of_text|> as `tokenizer(context)` gives it (Qwen has no
    BOS); an empty context and a scored file start from the document start (BOS, else end-of-text)."""
    import transformers

    tok = Tokenizer.from_hf(hf_tokenizer_dir(kind))
    hf_tok = transformers.AutoTokenizer.from_pretrained(hf_tokenizer_dir(kind))
    context = "The capital of France is"
    ctx, conts = ev.encode_request(tok, context, [" Paris"])
    assert ctx == hf_tok(context)["input_ids"]
    start = list(tok.bos_ids) if starts_with_bos else [tok.eot_id]
    assert bool(tok.bos_ids) == starts_with_bos and ctx[: len(tok.bos_ids)] == list(tok.bos_ids)
    assert ev.encode_request(tok, "", [" Paris"])[0] == start == tok.document_start
