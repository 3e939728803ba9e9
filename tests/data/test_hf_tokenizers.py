"""Tests for the data layer with Hugging Face tokenizers: instruction records laid out by a chat template
get the ids transformers' apply_chat_template gives (instructions.py), and a prepared DATADIR keeps the
tokenizer's files (prepare.py)."""

from __future__ import annotations

import pytest
import transformers

from scratchllm.data.instructions import encode_example, prompt_and_response
from scratchllm.prompts import get_style
from scratchllm.tokenizer import Tokenizer

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
        if "<|im_end|>" in tok.special_tokens and "<|im_end|>" in record.get("input", ""):
            # The <|im_end|> a message spells is text here (a user cannot close its turn), where
            # transformers makes it the control token; the template's own markers are control tokens.
            forged = expected.index(tok.special_tokens["<|im_end|>"], expected.index(tok.encode("Give")[0]))
            expected[forged:forged + 1] = tok.encode_ordinary("<|im_end|>")
        ids, n_prompt = encode_example(tok, style, record)
        assert ids[:n_prompt] == expected  # the template's BOS once, its markers as special tokens
        assert ids[n_prompt:] == tok.encode_ordinary(answer)
    # other styles keep special-token text plain, and start with the tokenizer's BOS (Llama 3's)
    ids, n_prompt = encode_example(tok, get_style("alpaca"), RECORDS[0])
    assert ids[: len(tok.bos_ids)] == list(tok.bos_ids) and not set(ids) & set(tok.special_tokens.values()) - set(tok.bos_ids)


def test_prepared_data_keeps_the_hf_tokenizer(hf_tokenizer_dir, tmp_path, shared_data):
    """A DATADIR tokenized with a Hugging Face tokenizer carries its files, so it reopens with the same
    tokenizer (eos_token as the document separator, the chat template) and the same ids."""
    from scratchllm.data import TokenData, prepare

    src = hf_tokenizer_dir("llama3")
    tok = Tokenizer.from_hf(src)
    meta = prepare([str(shared_data / "the-verdict.txt")], tok, str(tmp_path / "data"), context_length=64, progress=False)
    for name in tok.hf_files:
        assert (tmp_path / "data" / name).read_bytes() == (src / name).read_bytes()
    assert meta["tokenizer"]["type"] == "hf" and meta["eot_id"] == tok.eot_id == tok.special_tokens["<|eot_id|>"]
    data = TokenData.open(tmp_path / "data")
    back = data.tokenizer()
    assert back.spec["file"] == str((tmp_path / "data" / "tokenizer.json").absolute())
    assert back.eot_id == tok.eot_id and back.chat_template.source == tok.chat_template.source
    text = (shared_data / "the-verdict.txt").read_text(encoding="utf-8")
    ids = [*data.train.window(0, len(data.train)), *data.val.window(0, len(data.val))]  # one document: val is its tail
    assert ids == back.encode_ordinary(text) + [tok.eot_id]
