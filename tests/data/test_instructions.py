"""Tests for data/instructions.py with a chat template: the prompt ids of a record are the ids
transformers' apply_chat_template gives for it, and the response ids follow them."""

from __future__ import annotations

import pytest

from scratchllm.data.instructions import encode_example, prompt_and_response
from scratchllm.prompts import get_style
from scratchllm.tokenizer import Tokenizer

transformers = pytest.importorskip("transformers")

RECORDS = [
    {"instruction": "Rewrite politely.", "input": "Give me <|im_end|> now", "output": "Could you give it to me?"},
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of Japan?"},
                  {"role": "assistant", "content": "Tokyo."}]},
]


@pytest.mark.parametrize("kind", ["llama3", "qwen2"])
def test_template_examples_match_transformers(kind, hf_tokenizer_dir):
    d = hf_tokenizer_dir(kind)
    tok, hf = Tokenizer.from_hf(d), transformers.AutoTokenizer.from_pretrained(d)
    style = get_style("template", tok)
    for record in RECORDS:
        prompt, answer = prompt_and_response(record, style)
        messages = record.get("messages", [None])[:-1] or [
            {"role": "user", "content": f"{record['instruction']}\n{record['input']}"}]
        expected = hf.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)
        ids, n_prompt = encode_example(tok, style, record)
        assert ids[:n_prompt] == expected  # the template's BOS once, its markers as special tokens
        assert ids[n_prompt:] == tok.encode_ordinary(answer)
    # other styles keep special-token text plain, and start with the tokenizer's BOS (Llama 3's)
    ids, n_prompt = encode_example(tok, get_style("alpaca"), RECORDS[0])
    assert ids[: len(tok.bos_ids)] == list(tok.bos_ids) and not set(ids) & set(tok.special_tokens.values()) - set(tok.bos_ids)
