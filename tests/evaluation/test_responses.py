"""Tests for evaluation/responses.py with a model that has a chat template: `respond` lays each record
out with the template by default and the answer ends at the template's end-of-turn token."""

from __future__ import annotations

import pytest

from scratchllm.evaluation import responses
from scratchllm.prompts import get_style
from scratchllm.tokenizer import Tokenizer

RECORDS = [{"instruction": "Greet me.", "input": "", "output": "Hello there!"},
           {"instruction": "Greet", "input": "them", "output": "Hi"}]


@pytest.mark.parametrize("prompt_style, expected", [(None, "template"), ("alpaca", "alpaca")])
def test_respond_uses_the_chat_template_by_default(prompt_style, expected, hf_tokenizer_dir, tmp_path, monkeypatch):
    pytest.importorskip("tokenizers")
    from tests.inference.test_chat import chatml_model

    tok = Tokenizer.from_hf(hf_tokenizer_dir("qwen2"))
    prompts = []

    def generate(model, tokenizer, batch, **kw):
        prompts.extend(batch)
        return real(model, tokenizer, batch, **kw)

    real = responses.generate
    monkeypatch.setattr(responses, "generate", generate)
    out = responses.respond(chatml_model(tok, "<|im_end|>"), RECORDS, out=tmp_path / "answers.json", tokenizer=tok,
                            max_new_tokens=10, progress=False, prompt_style=prompt_style)
    style = get_style(expected, tok)
    assert sorted(prompts) == sorted(style.format_instruction(r["instruction"], r["input"]) for r in RECORDS)
    if expected == "template":  # the prompt ends with "<|im_start|>assistant\n"; the answer ends at <|im_end|>
        assert [r["model_response"] for r in out] == ["Hello there!", "Hello there!"]
    assert (tmp_path / "answers.json").is_file()
