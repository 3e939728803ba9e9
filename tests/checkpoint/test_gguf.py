"""GGUF export checked against llama.cpp itself (llama-cpp-python, in a process of its own).

For each family a small random model (seeded, its matrices scaled up so that every token depends on
the whole window and greedy decoding does not repeat one token) with a tokenizer of each kind goes out
through `export-gguf`: GPT-2 with GPT-2's tokenizer, Llama with a Llama 3 tokenizer.json (BOS first),
SmolLM2's Llama with its tokenizer.json (single digits), Qwen2 with a Qwen2 tokenizer.json (NFC,
added non-special tokens), Qwen3 with a GPT-2-style tokenizer.json, the demo recipe's model (Arcee)
and a LayerNorm + RoPE model (Starcoder2) with a tokenizer trained here, StableLM with a GPT-2-style
tokenizer.json. llama.cpp must give our token ids on texts of every kind (accents,
CJK, emoji, whitespace runs, special-token text), our greedy continuation of 32 tokens at f32, and
our logits; at bf16 and q8_0 the agreement has a floor (benchmarks/gguf_agreement.py measures it).
Bad input is one line and leaves no file.
"""

from __future__ import annotations

import unicodedata

import numpy as np
import pytest
import torch

from scratchllm.checkpoint import save_model
from scratchllm.checkpoint.gguf_file import export_gguf, save_gguf
from scratchllm.errors import ScratchLLMError
from scratchllm.inference.generation import generate_ids
from scratchllm.inference.llama_cpp_run import decode_logits, run_llama_cpp
from scratchllm.models.config import GPTConfig
from scratchllm.models.gpt import GPT
from scratchllm.recipes.demo import SMALL_BUDGET
from scratchllm.tokenizer import Tokenizer
from tests.helpers import run_cli
from tests.hf_tokenizers import TEXTS

_BASE = dict(emb_dim=64, n_heads=4, n_layers=2, context_length=128)
_ROPE = dict(norm="rmsnorm", position="rope", mlp="swiglu", bias=False, qkv_bias=False)

# name: (config fields, tokenizer, llama.cpp architecture, llama.cpp pre-tokenizer)
FAMILIES = {
    "gpt2": (_BASE, "gpt2", "gpt2", "gpt-2"),
    "llama": ({**_BASE, **_ROPE, "n_kv_heads": 2, "tie_embeddings": False}, "hf-llama3", "llama", "llama-bpe"),
    "smollm2": ({**_BASE, **_ROPE, "n_kv_heads": 2}, "hf-smollm2", "llama", "smollm"),
    "qwen2": ({**_BASE, **_ROPE, "qkv_bias": True, "n_kv_heads": 2}, "hf-qwen2", "qwen2", "qwen2"),
    "qwen3": ({**_BASE, **_ROPE, "qk_norm": True, "head_dim": 32, "n_kv_heads": 2}, "hf-gpt2", "qwen3", "gpt-2"),
    "demo-recipe": ({**SMALL_BUDGET.model, "context_length": 128}, "trained", "arcee", "gpt-2"),
    "starcoder2": ({**_BASE, "position": "rope", "n_kv_heads": 2, "bias": False}, "trained", "starcoder2", "gpt-2"),
    "stablelm": ({**_BASE, "position": "rope", "mlp": "swiglu", "bias": False, "qkv_bias": True}, "hf-gpt2",
                 "stablelm", "gpt-2"),
}
PROMPT = "I had always thought Jack Gisburn rather a cheap genius"


@pytest.fixture(scope="module")
def tokenizers(hf_tokenizer_dir, shared_data):
    made: dict[str, Tokenizer] = {}

    def get(kind: str) -> Tokenizer:
        if kind not in made:
            if kind == "gpt2":
                made[kind] = Tokenizer.gpt2()
            elif kind == "trained":
                made[kind] = Tokenizer.train([(shared_data / "the-verdict.txt").read_text(encoding="utf-8")], 384)
            else:
                made[kind] = Tokenizer.from_hf(hf_tokenizer_dir(kind.removeprefix("hf-")))
        return made[kind]

    return get


def family_model(fields: dict, vocab_size: int, seed: int = 0) -> GPT:
    """A random model of `fields` whose greedy output follows its input: matrices scaled up, norms
    and biases moved off 1 and 0 (so a misplaced one shows)."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(**{**fields, "vocab_size": vocab_size})).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.mul_(3.0 if "emb" in name else 10.0)
            else:
                p.add_(0.2 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module", params=list(FAMILIES))
def exported(request, tokenizers, shared_data, tmp_path_factory):
    """(family, model, tokenizer, scored text ids, llama.cpp's answer for the f32 export), once per family."""
    fields, kind, _, _ = FAMILIES[request.param]
    tokenizer = tokenizers(kind)
    model = family_model(fields, tokenizer.vocab_size)
    d = tmp_path_factory.mktemp(request.param)
    save_model(model, d / "model", tokenizer)
    path = export_gguf(d / "model", d / "model.gguf")
    nfc = "NFC" in str(tokenizer.hf_files.get("tokenizer.json", b""))  # llama.cpp has no normalizer: NFC text in
    texts = [unicodedata.normalize("NFC", t) if nfc else t for t in TEXTS]
    scored = tokenizer.encode((shared_data / "the-verdict.txt").read_text(encoding="utf-8")[:2000])[:100]
    answer = run_llama_cpp(path, tokenize=texts, add_bos=True, logits=[scored],
                           greedy=[{"prompt": tokenizer.encode(PROMPT), "max_tokens": 32}])
    return request.param, model, tokenizer, scored, answer


def test_llama_cpp_tokenizes_every_kind_of_text_as_we_do(exported):
    """Ids of texts of every kind, BOS included where the tokenizer puts one (Llama 3's) and special-token
    text matched as special tokens, as transformers' tokenizer(text) gives them."""
    family, _, tokenizer, _, answer = exported
    for text, theirs in zip(TEXTS, answer["tokens"]):
        assert theirs == tokenizer.encode(text, allowed_special="all", add_special_tokens=True), (family, text)
    assert answer["tokens"][0] == list(tokenizer.bos_ids) and bool(tokenizer.bos_ids) == (family == "llama")  # "" -> the BOS alone


def test_the_file_records_the_tokenizer_and_the_model_settings(exported):
    family, model, tokenizer, _, answer = exported
    meta = answer["metadata"]
    arch = FAMILIES[family][2]
    assert meta["general.architecture"] == arch and meta[f"{arch}.context_length"] == "128"
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == FAMILIES[family][3]
    assert int(meta["tokenizer.ggml.eos_token_id"]) == tokenizer.eot_id
    assert meta["tokenizer.ggml.add_bos_token"] == ("true" if family == "llama" else "false")
    template = tokenizer.chat_template
    assert meta.get("tokenizer.chat_template") == (template.source if template is not None else None)
    # the special token that ends an assistant turn: ChatML's <|im_end|>, Llama 3's <|eot_id|>, none without a template
    turn_end = {"llama": "<|eot_id|>", "smollm2": "<|im_end|>", "qwen2": "<|im_end|>"}.get(family)
    assert meta.get("tokenizer.ggml.eot_token_id") == (str(tokenizer.special_tokens[turn_end]) if turn_end else None)
    if family == "qwen2":  # ChatML: the turn ends with <|im_end|>, the eos of this tokenizer
        assert tokenizer.eot_id == tokenizer.special_tokens["<|im_end|>"]
    if family == "llama":  # eos <|eot_id|> ends a turn; <|begin_of_text|> begins a text
        assert int(meta["tokenizer.ggml.bos_token_id"]) == tokenizer.special_tokens["<|begin_of_text|>"]
        assert int(meta["tokenizer.ggml.eos_token_id"]) == tokenizer.special_tokens["<|eot_id|>"]


def test_llama_cpp_greedy_continuation_and_logits_equal_ours_at_f32(exported):
    family, model, tokenizer, scored, answer = exported
    ours = generate_ids(model, [tokenizer.encode(PROMPT)], max_new_tokens=32, temperature=0)[0]
    assert len(set(ours)) >= 16  # the model follows its input: a real comparison, not one token repeated
    assert answer["greedy"][0] == ours
    theirs = torch.from_numpy(decode_logits(answer["logits"][0]).copy())
    with torch.no_grad():
        expected = model(torch.tensor([scored]))[0]
    # llama.cpp's GELU reads a float16 table (ggml's GGML_GELU_FP16); the rest is float32 throughout
    tolerance = 3e-3 if family in ("gpt2", "starcoder2") else 1e-4
    assert (theirs - expected).abs().max().item() < tolerance * expected.abs().max().item()
    assert torch.equal(theirs.argmax(-1), expected.argmax(-1))


@pytest.mark.parametrize("type, floor", [("bf16", 0.95), ("q8_0", 0.85)])
def test_half_and_eight_bit_files_stay_close(tmp_path, tokenizers, shared_data, type, floor):
    """The demo recipe's model at bf16 and q8_0: a quarter to a half of the f32 file, llama.cpp's next
    token the same as ours at most positions of real text (measured per family and type in
    benchmarks/gguf_agreement.py on trained models)."""
    tokenizer = tokenizers("trained")
    model = family_model(FAMILIES["demo-recipe"][0], tokenizer.vocab_size)
    path = save_gguf(model, tmp_path / f"{type}.gguf", tokenizer, type=type)
    full = save_gguf(model, tmp_path / "f32.gguf", tokenizer)
    assert path.stat().st_size < (0.55 if type == "bf16" else 0.3) * full.stat().st_size
    scored = tokenizer.encode((shared_data / "the-verdict.txt").read_text(encoding="utf-8")[:2000])[:100]
    theirs = decode_logits(run_llama_cpp(path, logits=[scored])["logits"][0])
    with torch.no_grad():
        expected = model(torch.tensor([scored]))[0].numpy()
    agree = float(np.mean(theirs.argmax(-1) == expected.argmax(-1)))
    assert agree >= floor


# --------------------------------------------------------------------------------------------------
# Bad input: one line, no file


def _directory(kind: str, tmp_path):
    from scratchllm.models.classifier import Classifier
    from scratchllm.models.encoder_decoder import EncoderDecoder
    from scratchllm.models.lora import apply_lora

    config = GPTConfig(vocab_size=50257, emb_dim=16, n_layers=1, n_heads=2, context_length=32)
    if kind == "encoder":
        model = GPT(GPTConfig(**{**config.to_dict(), "causal": False}))
    elif kind == "classifier":
        model = Classifier(GPT(config), ["ham", "spam"], "last", Tokenizer.gpt2())
    elif kind == "seq2seq":
        model = EncoderDecoder(config)
    else:
        model = apply_lora(GPT(config), 2, 4.0, ["attn.qkv"], 0.0, verbose=False)
    return save_model(model, tmp_path / kind)


@pytest.mark.parametrize("kind, message", [
    ("encoder", "an encoder (causal false) cannot be written as a GGUF file; the families written here are causal "
                "decoders: fill masks with `scratchllm fill-mask` or fine-tune it with `scratchllm finetune classify`"),
    ("classifier", "a classifier cannot be written as a GGUF file; its head has no place there: classify with "
                   "`scratchllm classify`"),
    ("seq2seq", "an encoder-decoder (seq2seq) cannot be written as a GGUF file; the families written here are "
                "decoders: translate with `scratchllm translate`"),
    ("lora", "a GPT with LoRA adapters cannot be written as a GGUF file; its LoRA adapters are not merged: write a "
             "plain model with `scratchllm merge-lora` first"),
])
def test_a_model_gguf_cannot_hold_is_one_line_and_no_file(tmp_path, capsys, kind, message):
    d = _directory(kind, tmp_path)
    code, out, err = run_cli(capsys, "export-gguf", "--model", str(d), "--out", str(tmp_path / "m.gguf"))
    assert (code, out) == (2, "")
    assert err == f"scratchllm export-gguf: error: {d}: {message}\n"
    assert not (tmp_path / "m.gguf").exists()


@pytest.mark.parametrize("fields, message", [
    ({"mlp": "relu2"}, "export-gguf: GPT-2 family (GPT2LMHeadModel): llama.cpp's gpt2 has a GELU MLP only "
                       "(got mlp 'relu2'); export-hf writes it for transformers"),
    ({"position": "rope", "mlp": "relu2"}, "export-gguf: Starcoder2 family (Starcoder2ForCausalLM): llama.cpp's "
                                           "starcoder2 has a GELU MLP only (got mlp 'relu2'); export-hf writes it for "
                                           "transformers"),
    ({**_ROPE, "mlp": "gelu"}, "export-gguf: Arcee family (ArceeForCausalLM): llama.cpp's arcee has a squared-ReLU MLP "
                               "only (got mlp 'gelu'); export-hf writes it for transformers"),
    ({"logit_softcap": 30.0}, "export: logit_softcap=30.0: none of the Hugging Face families (GPT-2, Llama, Qwen2, "
                              "Qwen3, Arcee, Starcoder2, StableLM) caps logits; train without it to export"),
])
def test_a_switch_llama_cpp_lacks_is_one_line(tmp_path, fields, message):
    model = GPT(GPTConfig(vocab_size=50257, emb_dim=16, n_layers=1, n_heads=2, context_length=32, **fields))
    with pytest.raises(ScratchLLMError) as info:
        save_gguf(model, tmp_path / "m.gguf")
    assert str(info.value) == message
    assert list(tmp_path.iterdir()) == []


def test_a_pre_tokenizer_llama_cpp_lacks_is_one_line(tmp_path, shared_data):
    text = (shared_data / "the-verdict.txt").read_text(encoding="utf-8")
    tokenizer = Tokenizer.train([text], 300, pattern=r"\w+|\s+|[^\w\s]+")
    model = GPT(GPTConfig(vocab_size=300, emb_dim=16, n_layers=1, n_heads=2, context_length=32))
    with pytest.raises(ScratchLLMError, match=r"^tokenizer: its pre-tokenizer \(\\w\+\|\\s\+\|\[\^\\w\\s\]\+\) is none "
                                              r"that llama.cpp implements .*; a GGUF file would split text differently$"):
        save_gguf(model, tmp_path / "m.gguf", tokenizer)
    assert list(tmp_path.iterdir()) == []


def test_an_existing_file_is_kept_unless_overwrite_and_a_failed_write_leaves_nothing(tmp_path, capsys, gpt2_model_dir,
                                                                                    monkeypatch):
    out = tmp_path / "m.gguf"
    out.write_bytes(b"mine")
    code, _, err = run_cli(capsys, "export-gguf", "--model", str(gpt2_model_dir), "--out", str(out))
    assert code == 2 and err == (f"scratchllm export-gguf: error: GGUF file {out}: already exists "
                                 "(pass overwrite=True / --overwrite to replace it)\n")
    assert out.read_bytes() == b"mine"

    import gguf

    def fail(self, *args, **kwargs):  # the tensors half written, then a failure
        self.fout[0].write(b"half")
        raise RuntimeError("write failed")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", fail)
    with pytest.raises(RuntimeError, match="write failed"):
        export_gguf(gpt2_model_dir, out, type="q8_0", overwrite=True)
    assert out.read_bytes() == b"mine" and sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf"]
    monkeypatch.undo()

    code, printed, _ = run_cli(capsys, "export-gguf", "--model", str(gpt2_model_dir), "--out", str(out),
                               "--type", "q8_0", "--overwrite")
    assert (code, printed.strip()) == (0, str(out))
    assert out.read_bytes()[:4] == b"GGUF"
