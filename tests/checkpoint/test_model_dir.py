"""Tests for checkpoint.py: our model directories, Hugging Face GPT-2 import/export, downloads.

The reference is `transformers`: a random GPT2LMHeadModel imported here must give the same logits
and the same greedy tokens, and our random models exported must load there with the same logits.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import shutil
import threading
from pathlib import Path

import pytest
import torch

from scratchllm.checkpoint import hf
from scratchllm.checkpoint.convert import export_hf
from scratchllm.checkpoint.hf_families import GPT2Adapter, config_from_hf
from scratchllm.checkpoint.loader import load
from scratchllm.checkpoint.model_dir import read_model_config, resolve_model_dir, run_dir_choice, save_model
from scratchllm.core.download import download_file
from scratchllm.cli import main
from scratchllm.models.config import GPTConfig
from scratchllm.errors import ScratchLLMError
from scratchllm.inference.generation import generate_ids
from scratchllm.models.gpt import GPT

import transformers  # noqa: E402  (a test dependency: never skipped)
transformers.logging.set_verbosity_error()

# (n_embd, n_layer, n_head, n_positions, vocab_size, tie_word_embeddings, n_inner)
HF_CONFIGS = {
    "tiny": (64, 2, 4, 64, 1000, True, None),
    "odd-untied": (96, 3, 3, 64, 517, False, None),
    "narrow-mlp": (48, 1, 2, 64, 300, True, 96),
}


def hf_gpt2(name: str, seed: int = 0):
    n_embd, n_layer, n_head, n_positions, vocab, tie, n_inner = HF_CONFIGS[name]
    config = transformers.GPT2Config(
        n_embd=n_embd, n_layer=n_layer, n_head=n_head, n_positions=n_positions, vocab_size=vocab,
        n_inner=n_inner, tie_word_embeddings=tie, bos_token_id=None, eos_token_id=None,
        attn_implementation="eager",
    )
    torch.manual_seed(seed)
    hf = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # sharpened: at the init scale a random model repeats one token, whatever the input
        for p in hf.parameters():
            if p.dim() == 2:
                p.mul_(8.0)
    return hf


def tiny_gpt(seed: int = 0, **overrides) -> GPT:
    fields = dict(vocab_size=1000, context_length=64, emb_dim=64, n_layers=2, n_heads=4)
    torch.manual_seed(seed)
    return GPT(GPTConfig(**{**fields, **overrides})).eval()


def greedy(model: GPT, ids: torch.Tensor, steps: int) -> torch.Tensor:
    with torch.no_grad():
        for _ in range(steps):
            ids = torch.cat([ids, model(ids)[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids


def write_hf_dir(hf, directory: Path, layout: str) -> Path:
    """An HF GPT-2 directory: save_pretrained's safetensors, or a legacy pytorch_model.bin with bare
    GPT2Model names and the causal-mask buffers (as in OpenAI's original hub upload)."""
    if layout == "safetensors":
        hf.save_pretrained(directory)
        return directory
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(hf.config.to_json_string())
    state = {k.removeprefix("transformer."): v for k, v in hf.state_dict().items()}
    if hf.config.tie_word_embeddings:
        state.pop("lm_head.weight")
    n = hf.config.n_positions
    for i in range(hf.config.n_layer):
        state[f"h.{i}.attn.bias"] = torch.tril(torch.ones(n, n, dtype=torch.bool))[None, None]
        state[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    torch.save(state, directory / "pytorch_model.bin")
    return directory


def same_weights(a: GPT, b: GPT) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()  # drop what set-up printed (transformers' progress bars)
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# --------------------------------------------------------------------------------------------------
# Hugging Face GPT-2 -> ours


@pytest.mark.parametrize("layout", ["safetensors", "bin"])
@pytest.mark.parametrize("name", list(HF_CONFIGS))
def test_hf_import_matches_transformers_logits_and_greedy_tokens(tmp_path, name, layout):
    hf = hf_gpt2(name)
    d = write_hf_dir(hf, tmp_path / "hf", layout)
    model = load(d)[0]
    vocab = HF_CONFIGS[name][4]
    torch.manual_seed(1)
    ids = torch.randint(0, vocab, (3, 40))
    with torch.no_grad():
        diff = (model(ids) - hf(ids).logits).abs().max().item()
    assert diff < 1e-5
    assert model.config.tie_embeddings == HF_CONFIGS[name][5]
    assert model.config.mlp_ratio == (4 if HF_CONFIGS[name][6] is None else 2)
    prompt = ids[:1, :5]
    theirs = hf.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                         max_new_tokens=20, pad_token_id=0)
    assert theirs.shape == (1, 25)
    ours = generate_ids(model, [prompt[0].tolist()], 20, temperature=0)[0]  # our cached decoding
    assert ours == theirs[0, 5:].tolist()
    assert len(set(ours)) >= 8  # varied text: the cache and positions matter at every step


def test_import_gpt2_cli_writes_our_format(tmp_path, capsys):
    hf = hf_gpt2("odd-untied")
    d = write_hf_dir(hf, tmp_path / "hf", "safetensors")
    code, out, err = run_cli(capsys, "import-gpt2", "--source", str(d), "--out", str(tmp_path / "ours"))
    assert (code, out.strip()) == (0, str(tmp_path / "ours"))
    config = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert config["format"] == "scratchllm" and config["version"] == 1
    assert config["tokenizer"] == {"type": "gpt2"}
    assert config["imported_from"] == str(d)
    assert config["model"] == GPTConfig(vocab_size=517, context_length=64, emb_dim=96, n_layers=3, n_heads=3,
                                        tie_embeddings=False).to_dict()
    assert sorted(p.name for p in (tmp_path / "ours").iterdir()) == ["config.json", "model.safetensors"]
    model, tokenizer = load(tmp_path / "ours")
    ids = torch.arange(30)[None] * 7 % 517
    with torch.no_grad():
        assert (model(ids) - hf(ids).logits).abs().max().item() < 1e-5
    assert tokenizer.encode("Hello world") == [15496, 995]


def test_state_dict_from_hf_transposes_conv1d_and_drops_buffers():
    config = GPTConfig(vocab_size=10, context_length=8, emb_dim=4, n_layers=1, n_heads=2)
    w = torch.arange(4 * 12, dtype=torch.float32).reshape(4, 12)  # Conv1D: (in, out)
    sd = {"transformer.h.0.attn.c_attn.weight": w, "h.0.attn.bias": torch.ones(1, 1, 8, 8),
          "transformer.h.0.attn.masked_bias": torch.tensor(-1e4), "lm_head.weight": torch.zeros(10, 4)}
    out = GPT2Adapter().from_hf(sd, config)
    assert list(out) == ["blocks.0.attn.qkv.weight"]
    assert torch.equal(out["blocks.0.attn.qkv.weight"], w.t())
    with pytest.raises(ScratchLLMError, match=r"^w.bin: unexpected tensor 'h.0.attn.rotary' for a GPT-2 model$"):
        GPT2Adapter().from_hf({"h.0.attn.rotary": torch.ones(1)}, config, source="w.bin")


@pytest.mark.parametrize("setting, message", [
    ({"activation_function": "relu"}, "unsupported GPT-2 setting activation_function 'relu' (only gelu_new and relu2)"),
    ({"scale_attn_by_inverse_layer_idx": True}, "unsupported GPT-2 setting scale_attn_by_inverse_layer_idx true"),
    ({"reorder_and_upcast_attn": True}, "unsupported GPT-2 setting reorder_and_upcast_attn true"),
    ({"model_type": "bert"}, "model_type is 'bert'; only 'gpt2', 'llama', 'qwen2', 'qwen3', 'arcee', 'starcoder2', 'stablelm' models can be imported"),
    ({"n_inner": 100}, "n_inner 100 is not a multiple of n_embd 64"),
    ({"n_head": 5}, "config: emb_dim (64) must be divisible by n_heads (5)"),
])
def test_config_from_hf_rejects_unsupported_settings(setting, message):
    hf = {"model_type": "gpt2", "n_embd": 64, "n_layer": 2, "n_head": 4, "vocab_size": 100, **setting}
    with pytest.raises(ScratchLLMError) as info:
        config_from_hf(hf, source="x/config.json")
    assert str(info.value) == f"x/config.json: {message}"


# --------------------------------------------------------------------------------------------------
# Ours -> Hugging Face, and our own format


@pytest.mark.parametrize("overrides", [
    {}, {"tie_embeddings": False, "emb_dim": 96, "n_heads": 3, "vocab_size": 517},
    {"qkv_bias": False, "mlp_ratio": 2, "layer_norm_eps": 1e-6},
], ids=["tied", "untied-odd", "no-qkv-bias-mlp2"])
def test_export_hf_loads_in_transformers_with_same_logits(tmp_path, capsys, overrides):
    model = tiny_gpt(**overrides)
    with torch.no_grad():  # random biases and norms, so a mixed-up name would show in the logits
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    save_model(model, tmp_path / "ours")
    code, out, _ = run_cli(capsys, "export-hf", "--model", str(tmp_path / "ours"), "--out", str(tmp_path / "hf"))
    assert (code, out.strip()) == (0, str(tmp_path / "hf"))
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert type(hf).__name__ == "GPT2LMHeadModel"
    ids = torch.randint(0, model.config.vocab_size, (2, 50))
    with torch.no_grad():
        assert (hf(ids).logits - model(ids)).abs().max().item() < 1e-5
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["activation_function"] == "gelu_new" and config["architectures"] == ["GPT2LMHeadModel"]
    assert config["n_inner"] == (None if model.config.mlp_ratio == 4 else 128)
    again = load(tmp_path / "hf")[0]  # and back: identical except a zero q/k/v bias
    with torch.no_grad():
        assert (again(ids) - model(ids)).abs().max().item() < 1e-6


@pytest.mark.parametrize("switch, message", [
    ({"norm": "rmsnorm"}, "export: no Hugging Face family holds this model; the closest, Arcee \\(ArceeForCausalLM\\), "
                          "needs position 'rope' \\(got 'learned'\\)$"),
    ({"logit_softcap": 15.0}, "export: logit_softcap=15.0: none of the Hugging Face families \\(GPT-2, Llama, Qwen2, "
                              "Qwen3, Arcee, Starcoder2, StableLM\\) caps logits; train without it to export$"),
])
def test_export_hf_refuses_what_hugging_face_cannot_express(tmp_path, switch, message):
    save_model(tiny_gpt(**switch), tmp_path / "ours")
    with pytest.raises(ScratchLLMError, match=message):
        export_hf(tmp_path / "ours", tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
    model, _ = load(tmp_path / "ours")  # our own format keeps them
    assert {k: getattr(model.config, k) for k in switch} == switch


def test_export_hf_tokenizer_files_load_in_transformers(tmp_path):
    save_model(tiny_gpt(), tmp_path / "ours")
    export_hf(tmp_path / "ours", tmp_path / "hf")
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert tokenizer("Hello world, it's a test.")["input_ids"] == [15496, 995, 11, 340, 338, 257, 1332, 13]
    assert tokenizer.eos_token_id == 50256


def test_export_hf_writes_a_trained_tokenizer_that_transformers_encodes_alike(tmp_path, shared_data):
    """A tokenizer trained here leaves export-hf as a tokenizer.json that AutoTokenizer reads, giving
    our ids (the merge list spells out tiktoken's rule), and import-hf reads the directory back."""
    from scratchllm.tokenizer import Tokenizer

    verdict = (shared_data / "the-verdict.txt").read_text(encoding="utf-8")
    shakespeare = (shared_data / "tinyshakespeare.txt").read_text(encoding="utf-8")
    tokenizer = Tokenizer.train([shakespeare[:200_000]], vocab_size=700)
    save_model(tiny_gpt(vocab_size=700), tmp_path / "ours", tokenizer)
    export_hf(tmp_path / "ours", tmp_path / "hf")
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    for text in (verdict, shakespeare[200_000:260_000], "Ünïcödé 日本語 🙂 x=1234;\n\t  'S 's don't"):
        ids = tokenizer.encode(text)
        assert hf(text)["input_ids"] == ids and hf.decode(ids) == text
    assert hf.eos_token_id == tokenizer.eot_id == 699 and hf.model_max_length == 64
    _, back = load(tmp_path / "hf")
    assert back.encode(verdict) == tokenizer.encode(verdict)
    assert (tmp_path / "hf" / "scratchllm_tokenizer.json").read_bytes() == (tmp_path / "ours" / "tokenizer.json").read_bytes()


def test_save_load_round_trip_is_exact_and_reties_embeddings(tmp_path):
    model = tiny_gpt()
    path = save_model(model, tmp_path / "m")
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors"]
    loaded = load(tmp_path / "m")[0]
    assert same_weights(model, loaded) and not loaded.training
    assert loaded.out_head.weight is loaded.tok_emb.weight
    assert loaded.out_head.weight.data_ptr() == loaded.tok_emb.weight.data_ptr()
    ids = torch.randint(0, 1000, (2, 20))
    with torch.no_grad():
        assert torch.equal(loaded(ids), model(ids))
    half = load(tmp_path / "m", dtype="bfloat16")[0]
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}
    assert half.out_head.weight.data_ptr() == half.tok_emb.weight.data_ptr()
    assert torch.equal(half.blocks[0].attn.qkv.weight, model.blocks[0].attn.qkv.weight.to(torch.bfloat16))
    assert load(tmp_path / "m", dtype=torch.float16)[0].tok_emb.weight.dtype == torch.float16
    with pytest.raises(ScratchLLMError, match=r"^dtype 'float8': expected one of float32, bfloat16, float16$"):
        load(tmp_path / "m", dtype="float8")[0]
    with pytest.raises(ScratchLLMError, match=r"^dtype 'int8': expected one of float32, bfloat16, float16 "
                                              r"\(int8 weights: quantize 'int8'\)$"):
        load(tmp_path / "m", dtype="int8")[0]


def test_untied_model_and_extra_keys_round_trip(tmp_path):
    model = tiny_gpt(tie_embeddings=False)
    save_model(model, tmp_path / "m", extra={"prompt_style": "alpaca", "task": {"labels": ["ham", "spam"]}})
    config = read_model_config(tmp_path / "m")
    assert config["prompt_style"] == "alpaca" and config["task"] == {"labels": ["ham", "spam"]}
    loaded = load(tmp_path / "m")[0]
    assert same_weights(model, loaded)
    assert loaded.out_head.weight.data_ptr() != loaded.tok_emb.weight.data_ptr()
    with pytest.raises(ScratchLLMError, match=r"extra key\(s\) \['model'\] are reserved"):
        save_model(model, tmp_path / "n", extra={"model": 1})


def test_trained_tokenizer_is_saved_beside_the_weights(tmp_path, shared_data):
    from scratchllm.tokenizer import Tokenizer

    text = (shared_data / "the-verdict.txt").read_text(encoding="utf-8")
    tokenizer = Tokenizer.train([text], vocab_size=300)
    spec_before = tokenizer.spec
    save_model(tiny_gpt(vocab_size=300), tmp_path / "m", tokenizer)
    assert tokenizer.spec == spec_before  # the caller's tokenizer still points where it did
    spec = read_model_config(tmp_path / "m")["tokenizer"]
    blob = (tmp_path / "m" / "tokenizer.json").read_bytes()
    assert spec == {"type": "bpe", "file": "tokenizer.json", "sha256": hashlib.sha256(blob).hexdigest()}
    shutil.move(tmp_path / "m", tmp_path / "moved")  # the directory is self-contained
    model, loaded = load(tmp_path / "moved")
    assert loaded.encode(text[:500]) == tokenizer.encode(text[:500])
    with pytest.raises(ScratchLLMError, match=r"the tokenizer has 300 ids but the model's vocab_size is 299"):
        save_model(tiny_gpt(vocab_size=299), tmp_path / "small", tokenizer)


def test_resolve_model_dir_prefers_final_then_best_then_newest_step(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"lr": 3e-4}))  # a run's training config, not a model
    with pytest.raises(ScratchLLMError, match=r"not a model config .* and no final/, best/ or checkpoints/step-N/"):
        resolve_model_dir(run)
    assert run_dir_choice(run) is None
    models = {step: tiny_gpt(seed=step) for step in (100, 2000, 300)}
    for step, model in models.items():
        save_model(model, run / "checkpoints" / f"step-{step}")
    (run / "checkpoints" / "step-9999").mkdir()  # an empty leftover is not a checkpoint
    assert resolve_model_dir(run) == run / "checkpoints" / "step-2000"
    newest = f"{run}: no final/ or best/ (the run did not finish); loading its newest checkpoint, {run}/checkpoints/step-2000"
    assert run_dir_choice(run) == newest
    # the loader says which model it took, once, on stderr (the CLI's stderr)
    assert same_weights(load(run)[0], models[2000]) and capsys.readouterr().err == newest + "\n"
    best = tiny_gpt(seed=7)
    save_model(best, run / "best", extra={"training": {"step": 300, "val_loss": 4.2}})
    assert resolve_model_dir(run) == run / "best"
    choice = (f"{run}: no final/ (the run did not finish); loading {run}/best (step 300, the best validation result), "
              f"not the newer {run}/checkpoints/step-2000 (name it to load that)")
    assert run_dir_choice(run) == choice
    assert same_weights(load(run)[0], best) and capsys.readouterr().err == choice + "\n"
    save_model(best, run / "best", extra={"training": {"step": 2000}})  # best is the newest step
    assert run_dir_choice(run) == f"{run}: no final/ (the run did not finish); loading {run}/best (step 2000, the best validation result)"
    final = tiny_gpt(seed=8)
    save_model(final, run / "final")
    assert resolve_model_dir(run) == run / "final" and run_dir_choice(run) is None
    assert resolve_model_dir(run / "final" / "model.safetensors") == run / "final"
    assert same_weights(load(run)[0], final) and capsys.readouterr().err == ""  # a finished run: nothing to say
    assert run_dir_choice(run / "final") is None and run_dir_choice(run / "final" / "model.safetensors") is None


# --------------------------------------------------------------------------------------------------
# Bad input: one line on stderr naming the file, exit code 2


def _truncate(d: Path) -> str:
    w = d / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    return f"{w}: corrupt or truncated safetensors file ("


def _wider_config(d: Path) -> str:
    config = json.loads((d / "config.json").read_text())
    config["model"]["emb_dim"] = 96
    (d / "config.json").write_text(json.dumps(config))
    return (f"{d / 'model.safetensors'}: tensor 'tok_emb.weight' has shape (1000, 64) but {d / 'config.json'} "
            "expects (1000, 96) (the config does not match the weights)")


def _fewer_layers(d: Path) -> str:
    config = json.loads((d / "config.json").read_text())
    config["model"]["n_layers"] = 1
    (d / "config.json").write_text(json.dumps(config))
    return (f"{d / 'model.safetensors'}: unexpected tensor 'blocks.1.attn.proj.bias' of shape (64,) for the model in "
            f"{d / 'config.json'} (the config does not match the weights)")


def _bad_json(d: Path) -> str:
    (d / "config.json").write_text('{"format": "scratchllm",')
    return f"{d / 'config.json'}: not valid JSON ("


def _no_weights(d: Path) -> str:
    (d / "model.safetensors").unlink()
    return f"{d / 'model.safetensors'}: not found"


def _unknown_key(d: Path) -> str:
    config = json.loads((d / "config.json").read_text())
    config["model"]["n_layer"] = 2
    (d / "config.json").write_text(json.dumps(config))
    return f"{d / 'config.json'} field 'model': unknown config key(s) 'n_layer'; known keys: "


def _missing_dir(d: Path) -> str:
    shutil.rmtree(d)
    return f"{d}: no such directory"


@pytest.mark.parametrize("breaker", [_truncate, _wider_config, _fewer_layers, _bad_json, _no_weights, _unknown_key,
                                     _missing_dir])
def test_bad_model_directory_is_one_line_error(tmp_path, capsys, breaker):
    d = tmp_path / "m"
    save_model(tiny_gpt(), d)
    expected = breaker(d)
    code, out, err = run_cli(capsys, "export-hf", "--model", str(d), "--out", str(tmp_path / "hf"))
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith(f"scratchllm export-hf: error: {expected}"), err
    assert not (tmp_path / "hf").exists()


@pytest.mark.parametrize("source, message", [
    ("gpt5", "'gpt5': no such directory, and not a hub name (a GPT-2 name, one of gpt2, gpt2-medium, gpt2-large, "
             "gpt2-xl, or OWNER/NAME such as HuggingFaceTB/SmolLM2-135M)"),
    ("./nowhere", "nowhere: no such directory"),
])
def test_import_gpt2_unknown_source(tmp_path, capsys, source, message):
    code, out, err = run_cli(capsys, "import-gpt2", "--source", source, "--out", str(tmp_path / "o"))
    assert (code, out, err) == (2, "", f"scratchllm import-gpt2: error: {message}\n")


def test_import_gpt2_rejects_unsupported_hf_config(tmp_path, capsys):
    d = write_hf_dir(hf_gpt2("tiny"), tmp_path / "hf", "safetensors")
    config = json.loads((d / "config.json").read_text())
    config["scale_attn_by_inverse_layer_idx"] = True
    (d / "config.json").write_text(json.dumps(config))
    code, _, err = run_cli(capsys, "import-gpt2", "--source", str(d), "--out", str(tmp_path / "o"))
    assert (code, err) == (2, f"scratchllm import-gpt2: error: {d / 'config.json'}: unsupported GPT-2 setting "
                              "scale_attn_by_inverse_layer_idx true\n")


def test_load_unknown_name():
    with pytest.raises(ScratchLLMError, match=r"^'gpt-7b': no such directory, and not a hub name \(a GPT-2 name"):
        load("gpt-7b")


# --------------------------------------------------------------------------------------------------
# Atomic directory writes


def test_failed_save_keeps_previous_directory_and_leaves_no_temp(tmp_path, monkeypatch):
    import safetensors.torch

    save_model(tiny_gpt(seed=0), tmp_path / "m", extra={"task": "old"})
    before = {p.name: p.read_bytes() for p in (tmp_path / "m").iterdir()}

    def broken_save(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", broken_save)
    with pytest.raises(ScratchLLMError, match=r"m: not enough disk space: needs more than the [\d,.]+ MB that were "
                                              r"free \(the disk filled up after [\d.]+ MB\); nothing was replaced"):
        save_model(tiny_gpt(seed=1), tmp_path / "m", extra={"task": "new"})
    assert {p.name: p.read_bytes() for p in (tmp_path / "m").iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    monkeypatch.undo()
    save_model(tiny_gpt(seed=1), tmp_path / "m", extra={"task": "new"})
    assert read_model_config(tmp_path / "m")["task"] == "new"
    assert same_weights(load(tmp_path / "m")[0], tiny_gpt(seed=1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_save_refuses_to_replace_a_directory_that_is_not_a_model(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    with pytest.raises(ScratchLLMError, match=r"notes: exists and is not a scratchllm model directory of the same kind \(gpt\); refusing"):
        save_model(tiny_gpt(), tmp_path / "notes")
    assert (tmp_path / "notes" / "todo.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes"]


# --------------------------------------------------------------------------------------------------
# Downloads (file:// and a loopback server standing in for the hub; never the network)


def test_download_file_checks_sha256_and_size(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"weights" * 1000)
    sha = hashlib.sha256(src.read_bytes()).hexdigest()
    dest = tmp_path / "cache" / "w.bin"
    assert download_file(src.as_uri(), dest, sha256=sha, progress=False) == dest
    assert dest.read_bytes() == src.read_bytes()
    with pytest.raises(ScratchLLMError, match=rf"SHA-256 is {sha}, expected {'0' * 64}$"):
        download_file(src.as_uri(), tmp_path / "cache" / "x.bin", sha256="0" * 64, progress=False)
    with pytest.raises(ScratchLLMError, match=r"got 7000 bytes, expected 7001 \(interrupted\?\)$"):
        download_file(src.as_uri(), tmp_path / "cache" / "x.bin", size=7001, progress=False)
    with pytest.raises(ScratchLLMError, match=r"^download file://.*missing.bin: "):
        download_file((tmp_path / "missing.bin").as_uri(), tmp_path / "cache" / "x.bin", progress=False)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["w.bin"]


class _Hub(http.server.BaseHTTPRequestHandler):
    """/resolve/<file> redirects to /cdn/<file> with the hub's X-Linked-Etag / X-Linked-Size headers."""

    files: dict[str, bytes] = {}
    etags: dict[str, str] = {}

    def do_GET(self):
        kind, _, name = self.path.strip("/").partition("/")
        data = self.files.get(name)
        if data is None:
            self.send_error(404)
        elif kind == "resolve":
            self.send_response(302)
            self.send_header("Location", f"/cdn/{name}")
            self.send_header("X-Linked-Etag", f'"{self.etags[name]}"')
            self.send_header("X-Linked-Size", str(len(data)))
            self.end_headers()
        else:
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_download_file_verifies_the_hubs_linked_etag(tmp_path, monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    data = bytes(range(256)) * 64
    _Hub.files = {"good.bin": data, "bad.bin": data}
    _Hub.etags = {"good.bin": hashlib.sha256(data).hexdigest(), "bad.bin": "f" * 64}
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        assert download_file(f"{base}/resolve/good.bin", tmp_path / "good.bin", progress=False).read_bytes() == data
        with pytest.raises(ScratchLLMError, match=rf"bad.bin: SHA-256 is {_Hub.etags['good.bin']}, expected {'f' * 64}$"):
            download_file(f"{base}/resolve/bad.bin", tmp_path / "bad.bin", progress=False)
        with pytest.raises(ScratchLLMError, match=r"nope.bin: Not Found$"):
            download_file(f"{base}/resolve/nope.bin", tmp_path / "nope.bin", progress=False)
    finally:
        server.shutdown()
        server.server_close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.bin"]


def test_load_gpt2_name_downloads_once_into_the_cache(tmp_path, monkeypatch):
    hub = write_hf_dir(hf_gpt2("tiny"), tmp_path / "hub" / "gpt2", "safetensors")
    monkeypatch.setenv("SCRATCHLLM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(hf, "HF_URL", (tmp_path / "hub").as_uri() + "/{name}/{file}")
    model, tokenizer = load("gpt2-small")  # alias of "gpt2"
    cached = tmp_path / "cache" / "hf" / "gpt2"
    assert sorted(p.name for p in cached.iterdir()) == ["config.json", "model.safetensors"]
    assert (cached / "model.safetensors").read_bytes() == (hub / "model.safetensors").read_bytes()
    assert tokenizer.eot_id == 50256
    shutil.rmtree(tmp_path / "hub")  # from now on only the cache can answer
    again = load("gpt2", dtype="bfloat16")[0]
    assert again.tok_emb.weight.dtype == torch.bfloat16
    assert torch.equal(again.tok_emb.weight, model.tok_emb.weight.to(torch.bfloat16))
    with pytest.raises(ScratchLLMError, match=r"^download file://.*/gpt2-medium/config.json: .*; without network, "
                                              r"put config.json, model.safetensors of gpt2-medium in .*/hf/gpt2-medium"):
        load("gpt2-medium")
