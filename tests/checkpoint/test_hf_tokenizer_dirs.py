"""Tests for model directories that carry a Hugging Face tokenizer: `save_model` copies its files and
records {"type": "hf", ...}; `read_tokenizer`, `hf_tokenizer`, `import_hf` and `export_hf` keep the ids,
the chat template and the stop ids (generation_config.json's eos_token_id); transformers reads the
exported directory back."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from scratchllm.checkpoint.convert import export_hf, import_hf
from scratchllm.checkpoint.hf import hf_tokenizer
from scratchllm.checkpoint.loader import load, load_tokenizer
from scratchllm.checkpoint.model_dir import read_model_config, read_tokenizer, save_model
from scratchllm.errors import ScratchLLMError
from scratchllm.models.config import GPTConfig
from scratchllm.models.gpt import GPT
from scratchllm.tokenizer import Tokenizer

pytest.importorskip("tokenizers")
transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

TEXT = "Hello <|eot_id|> 1234567 日本語 🎉"


def test_model_directory_keeps_the_hf_tokenizer(hf_tokenizer_dir, tmp_path):
    src = hf_tokenizer_dir("llama3")
    tok = Tokenizer.from_hf(src, stop_ids=[1])
    model = GPT(GPTConfig.from_preset("gpt-tiny", vocab_size=tok.vocab_size))
    d = save_model(model, tmp_path / "model", tok, extra={"prompt_style": "template"})
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        assert (d / name).read_bytes() == (src / name).read_bytes()
    spec = read_model_config(d)["tokenizer"]
    assert spec == {"type": "hf", "file": "tokenizer.json", "sha256": tok.spec["sha256"], "stop_ids": [1]}
    back = read_tokenizer(d)
    assert back.encode(TEXT, allowed_special="all") == tok.encode(TEXT, allowed_special="all")
    assert back.stop_ids == tok.stop_ids == {1, tok.eot_id} and back.bos_ids == tok.bos_ids
    assert back.chat_template.source == tok.chat_template.source
    _, loaded = load(d)
    assert loaded.spec["type"] == "hf" and load_tokenizer(d).eot_id == tok.eot_id
    # a changed tokenizer.json is caught by its SHA-256
    (d / "tokenizer.json").write_bytes((d / "tokenizer.json").read_bytes().replace(b'"ignore_merges": true', b'"ignore_merges": false'))
    with pytest.raises(ScratchLLMError, match=r"tokenizer.json: SHA-256 is .* as recorded in .*config.json"):
        read_tokenizer(d)


def test_bad_stop_ids_in_config(hf_tokenizer_dir, tmp_path):
    tok = Tokenizer.from_hf(hf_tokenizer_dir("qwen2"))
    d = save_model(GPT(GPTConfig.from_preset("gpt-tiny", vocab_size=tok.vocab_size)), tmp_path / "m", tok)
    config = json.loads((d / "config.json").read_text())
    config["tokenizer"]["stop_ids"] = "eos"
    (d / "config.json").write_text(json.dumps(config))
    with pytest.raises(ScratchLLMError, match=r"tokenizer 'stop_ids' is 'eos', expected a list of token ids"):
        read_tokenizer(d)


def test_hf_tokenizer_of_a_directory(hf_tokenizer_dir, tmp_path):
    assert hf_tokenizer(tmp_path).spec == {"type": "gpt2"}  # no tokenizer.json: GPT-2's
    shutil.copytree(hf_tokenizer_dir("qwen2"), tmp_path / "qwen")
    tok = hf_tokenizer(tmp_path / "qwen")
    ids = tok.special_tokens
    assert tok.stop_ids == {ids["<|im_end|>"]}
    (tmp_path / "qwen" / "generation_config.json").write_text(json.dumps({"eos_token_id": [ids["<|im_end|>"], ids["<|endoftext|>"]]}))
    assert hf_tokenizer(tmp_path / "qwen").stop_ids == {ids["<|im_end|>"], ids["<|endoftext|>"]}
    (tmp_path / "qwen" / "generation_config.json").write_text(json.dumps({"eos_token_id": "<|im_end|>"}))
    with pytest.raises(ScratchLLMError, match=r"generation_config.json: eos_token_id is '<\|im_end\|>'; expected an id"):
        hf_tokenizer(tmp_path / "qwen")


def test_import_and_export_keep_the_tokenizer(hf_tokenizer_dir, tmp_path):
    """A random Llama saved by transformers with the llama3 test tokenizer: import_hf keeps the files
    and the generation_config stop ids; the imported model gives transformers' logits on our ids."""
    src = hf_tokenizer_dir("llama3")
    tok = Tokenizer.from_hf(src)
    eot, end_of_text = tok.special_tokens["<|eot_id|>"], tok.special_tokens["<|end_of_text|>"]
    config = transformers.LlamaConfig(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                      bos_token_id=tok.bos_ids[0], eos_token_id=[end_of_text, eot])
    torch.manual_seed(0)
    reference = transformers.LlamaForCausalLM(config).eval()
    hf_dir = tmp_path / "hf"
    reference.save_pretrained(hf_dir)
    assert json.loads((hf_dir / "generation_config.json").read_text())["eos_token_id"] == [end_of_text, eot]
    for name in tok.hf_files:
        shutil.copy(src / name, hf_dir / name)

    ours = import_hf(hf_dir, tmp_path / "ours")
    for name in tok.hf_files:
        assert (ours / name).read_bytes() == (src / name).read_bytes()
    model, imported = load(ours)
    assert imported.stop_ids == {eot, end_of_text}
    ids = imported.encode(TEXT, allowed_special="all", add_special_tokens=True)
    assert ids == transformers.AutoTokenizer.from_pretrained(hf_dir)(TEXT)["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(model(torch.tensor([ids])), reference(torch.tensor([ids])).logits, atol=1e-4, rtol=1e-4)

    # and back: the exported Llama names the same BOS and stop ids and gives the same logits
    out = export_hf(ours, tmp_path / "exported")
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation == {"bos_token_id": tok.bos_ids[0], "eos_token_id": sorted([end_of_text, eot])}
    assert json.loads((out / "config.json").read_text())["bos_token_id"] == tok.bos_ids[0]
    back = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert set(back.generation_config.eos_token_id) == {eot, end_of_text}
    with torch.no_grad():
        torch.testing.assert_close(back(torch.tensor([ids])).logits, reference(torch.tensor([ids])).logits, atol=1e-5, rtol=1e-5)
    assert load(import_hf(out, tmp_path / "again"))[1].stop_ids == {eot, end_of_text}


def test_export_writes_the_tokenizer_files(hf_tokenizer_dir, tmp_path):
    """A GPT-2-layout model with the llama3 test tokenizer: transformers reads the exported directory's
    tokenizer back with the same ids, and its config names the tokenizer's eos token."""
    src = hf_tokenizer_dir("llama3")
    tok = Tokenizer.from_hf(src)
    d = save_model(GPT(GPTConfig.from_preset("gpt-tiny", vocab_size=tok.vocab_size)), tmp_path / "model", tok)
    out = export_hf(d, tmp_path / "exported")
    for name in tok.hf_files:
        assert (out / name).read_bytes() == (src / name).read_bytes()
    ids = transformers.AutoTokenizer.from_pretrained(out)(TEXT)["input_ids"]
    assert ids == tok.encode(TEXT, allowed_special="all", add_special_tokens=True)
    assert json.loads((out / "config.json").read_text())["eos_token_id"] == tok.eot_id
