"""Tests for evaluation/responses.py: `respond` lays each record out with the model's chat template by
default (or the prompt style asked for), feeds exactly that prompt to the model, and cuts the answer
at the style's end: the template's end-of-turn token, or alpaca's next "### Instruction:"."""

from __future__ import annotations

import json

import pytest

from scratchllm.evaluation import responses
from scratchllm.inference.generation import generate
from scratchllm.inference.session import InferenceSession
from scratchllm.prompts import get_style
from scratchllm.tokenizer import Tokenizer
from tests.inference.test_generation import bigram_gpt

RECORDS = [{"instruction": "Greet me.", "input": "", "output": "Hello there!"},
           {"instruction": "Greet", "input": "them", "output": "Hi"}]


def two_style_model(tok: Tokenizer):
    """A GPT that answers a ChatML prompt (ending "<|im_start|>assistant\\n") with "Hello there!" and an
    alpaca prompt (ending "### Response:\\n", whose last token here is ":\\n") with "Bye now.", each then
    <|im_end|>: which answer comes out tells which prompt the model was given."""
    chatml_last = tok.encode("<|im_start|>assistant\n", allowed_special="all")[-1]
    alpaca_last = tok.encode("### Response:\n")[-1]
    end = tok.special_tokens["<|im_end|>"]
    chain = {}
    for last, answer in ((chatml_last, "Hello there!"), (alpaca_last, "Bye now.")):
        script = tok.encode(answer)
        chain.update(zip([last, *script], [*script, end]))
    assert len(chain) == 2 + len(tok.encode("Hello there!")) + len(tok.encode("Bye now."))  # distinct tokens
    return bigram_gpt(tok, chain)


@pytest.mark.parametrize("prompt_style, expected, answer", [(None, "template", "Hello there!"),
                                                            ("alpaca", "alpaca", "Bye now.")])
def test_respond_uses_the_chat_template_by_default(prompt_style, expected, answer, hf_tokenizer_dir, tmp_path,
                                                   monkeypatch):
    tok = Tokenizer.from_hf(hf_tokenizer_dir("qwen2"))
    prompts = []

    def generate(session, batch, *args, **kw):  # what respond asks its model for
        prompts.extend(batch)
        return real(session, batch, *args, **kw)

    real = InferenceSession.generate
    monkeypatch.setattr(InferenceSession, "generate", generate)
    out = responses.respond(two_style_model(tok), RECORDS, out=tmp_path / "answers.json", tokenizer=tok,
                            max_new_tokens=10, progress=False, prompt_style=prompt_style)
    style = get_style(expected, tok)
    assert sorted(prompts) == sorted(style.format_instruction(r["instruction"], r["input"]) for r in RECORDS)
    assert out == [{**r, "model_response": answer} for r in RECORDS]  # the answer ends at <|im_end|>
    assert json.loads((tmp_path / "answers.json").read_text()) == out


def test_an_alpaca_answer_stops_before_the_next_instruction():
    """A model that goes on to write the next turn ("\\n\\n### Instruction:...") is cut before it."""
    tok = Tokenizer.gpt2()
    prompt_end = tok.encode(get_style("alpaca").format_instruction("Greet me.", ""))[-1]  # "\n"
    script = [*tok.encode("Hello there!"), 628, *tok.encode("### Instruction:"), *tok.encode("Bye")]  # 628: "\n\n"
    chain = dict(zip([prompt_end, *script], [*script, tok.eot_id]))
    assert len(chain) == len(script) + 1
    model = bigram_gpt(tok, chain)
    out = responses.respond(model, RECORDS, tokenizer=tok, max_new_tokens=20, progress=False, prompt_style="alpaca")
    assert [r["model_response"] for r in out] == ["Hello there!", "Hello there!"]
    # Without the stop strings the same model writes on (what the cut removes):
    full = generate(model, tok, get_style("alpaca").format_instruction("Greet me.", ""), max_new_tokens=20,
                              temperature=0)
    assert full == "Hello there!\n\n### Instruction:Bye"
