"""Multiple choice (evaluation/choice.py): every choice's summed log-probability against a constant-logit
GPT by hand, acc / acc_norm / acc_norm_tokens picks, a tiny model trained here that answers the choices
it saw, and the one-line errors of a malformed JSONL file."""

from __future__ import annotations

import json
import random

import pytest
import torch

from scratchllm.checkpoint import save_model
from scratchllm.evaluation.lm import evaluate_choice
from scratchllm.tokenizer import Tokenizer
from tests.helpers import constant_logit_gpt, run_cli, tiny_gpt


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
    report = evaluate_choice(model, data, tokenizer=small_tok)
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
