"""LoRA adapters: the update is exactly (alpha/r) x A^T B^T, only A and B learn, a merged model gives
the same logits as base + adapter, adapters save alone (small) and load back, and merge-lora writes a
plain model directory from either kind of input."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn

from scratchllm.checkpoint import load, save_model
from scratchllm.cli import main
from scratchllm.models.config import GPTConfig
from scratchllm.errors import ScratchLLMError
from scratchllm.checkpoint.adapter_dir import ADAPTER_CONFIG, ADAPTER_WEIGHTS, load_adapters, save_adapters
from scratchllm.models.lora import LoRALinear, apply_lora, count_parameters, lora_state_dict, merge_lora
from scratchllm.models.gpt import GPT

VOCAB = 300  # a byte-level BPE trained below: 256 bytes + 43 merges + <|endoftext|>


@pytest.fixture(scope="module")
def tokenizer(shared_data):
    from scratchllm.tokenizer import Tokenizer

    return Tokenizer.train([(shared_data / "the-verdict.txt").read_text(encoding="utf-8")], VOCAB)


def tiny(seed: int = 0, **overrides) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig.from_preset("gpt-tiny", vocab_size=VOCAB, **overrides))


def randomise_adapters(model: nn.Module, seed: int = 1) -> None:
    """B starts at zero (a no-op adapter); give it values so that merging has something to fold in."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LoRALinear):
                m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=g) * 0.05)


def test_lora_linear_is_the_base_at_init_and_adds_alpha_over_r_times_BA():
    torch.manual_seed(0)
    base = nn.Linear(5, 3)
    x = torch.randn(2, 7, 5)
    expected = base(x)
    layer = LoRALinear(base, rank=2, alpha=4.0)
    assert torch.equal(layer(x), expected)  # B = 0
    assert layer.weight is base.weight and not layer.weight.requires_grad and not layer.bias.requires_grad
    with torch.no_grad():
        layer.lora_A.fill_(1.0)  # (2, 5)
        layer.lora_B.fill_(1.0)  # (3, 2)
    ones = torch.ones(1, 5)
    # x A^T = [5, 5]; (x A^T) B^T = [10, 10, 10]; times alpha / r = 2 -> 20 on top of the base
    torch.testing.assert_close(layer(ones), base(ones) + 20.0)


def test_apply_lora_trains_only_A_and_B_and_counts_them():
    model = apply_lora(tiny(), rank=4, alpha=8.0, verbose=False)
    # per block: qkv 4*(64+192) + proj 4*(64+64) + fc 4*(64+256) + proj 4*(256+64) = 4096; two blocks
    trainable, total = count_parameters(model)
    assert trainable == 8192
    assert total == tiny().num_parameters() + 8192
    idx = torch.randint(0, VOCAB, (2, 16))
    model.loss(idx, torch.randint(0, VOCAB, (2, 16))).backward()
    with_grad = sorted(n for n, p in model.named_parameters() if p.grad is not None)
    assert with_grad == sorted(n for n, _ in model.named_parameters() if n.endswith((".lora_A", ".lora_B")))
    assert len(with_grad) == 16  # 2 blocks x 4 layers x (A, B)
    # B = 0 at init, so A's first gradient is zero and B's is not
    assert model.blocks[0].attn.qkv.lora_B.grad.abs().sum() > 0


def test_apply_lora_prints_the_trainable_count(capsys):
    apply_lora(tiny(), rank=2, alpha=4, targets=["attn.qkv"])
    # 2 blocks x 2 * (64 + 192) = 1024
    assert "LoRA r=2 alpha=4 on 2 layers: trainable parameters 1,024 of " in capsys.readouterr().err


def test_trainable_modules_stay_trainable_besides_the_adapters():
    model = apply_lora(tiny(), rank=2, alpha=4, trainable=["final_norm"], verbose=False)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {"final_norm.weight", "final_norm.bias"} <= names
    assert set(lora_state_dict(model)) == names  # the adapter file carries them too


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(targets=["attn.nope"]), "LoRA target 'attn.nope' matches no module of the model (e.g. attn.qkv, attn.proj, mlp.fc, mlp.proj)"),
        (dict(targets=["norm1"]), "LoRA target 'norm1' matches 'blocks.0.norm1', a LayerNorm, not an nn.Linear"),
        (dict(targets=["out_head"]), "LoRA target 'out_head': the LM head 'out_head' cannot take an adapter"),
        (dict(rank=0), "LoRA rank must be an integer >= 1, got 0"),
        (dict(alpha=-1.0), "LoRA alpha must be a number > 0, got -1.0"),
        (dict(trainable=["nothing"]), "trainable module 'nothing' matches no parameter of the model"),
    ],
)
def test_apply_lora_rejects_bad_settings(kwargs, message):
    with pytest.raises(ScratchLLMError) as err:
        apply_lora(tiny(), **{"rank": 2, "alpha": 4.0, "verbose": False, **kwargs})
    assert str(err.value) == message


def test_merged_model_gives_the_same_logits_as_base_plus_adapter():
    model = apply_lora(tiny(), rank=4, alpha=16.0, verbose=False)
    randomise_adapters(model)
    idx = torch.randint(0, VOCAB, (3, 40))
    with torch.no_grad():
        adapted = model(idx)
        base = tiny()(idx)
    assert (adapted - base).abs().max() > 1e-3  # the adapters do change the model
    merge_lora(model)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    assert set(model.state_dict()) == set(tiny().state_dict())  # plain names again
    with torch.no_grad():
        torch.testing.assert_close(model(idx), adapted, atol=1e-5, rtol=0)


def test_adapters_save_alone_and_load_onto_a_fresh_base(tmp_path, tokenizer):
    model = apply_lora(tiny(), rank=4, alpha=16.0, verbose=False)
    randomise_adapters(model)
    save_adapters(model, tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / ADAPTER_CONFIG).read_text())
    assert config == {"rank": 4, "alpha": 16.0, "targets": ["attn.qkv", "attn.proj", "mlp.fc", "mlp.proj"],
                      "dropout": 0.0, "trainable": [], "base_model": None}
    save_model(tiny(), tmp_path / "base", tokenizer)
    size = (tmp_path / "adapter" / ADAPTER_WEIGHTS).stat().st_size
    assert size < (tmp_path / "base" / "model.safetensors").stat().st_size / 5  # 8,192 of ~120k floats
    fresh = load_adapters(tiny(seed=0), tmp_path / "adapter")
    idx = torch.randint(0, VOCAB, (2, 30))
    with torch.no_grad():
        torch.testing.assert_close(fresh(idx), model(idx), atol=0, rtol=0)


def test_load_adapters_names_a_mismatch(tmp_path):
    save_adapters(apply_lora(tiny(), rank=4, alpha=16.0, verbose=False), tmp_path / "a")
    wider = tiny(emb_dim=32, n_heads=4)
    with pytest.raises(ScratchLLMError, match=r"blocks\.0\.attn\.qkv\.lora_A has shape \(4, 64\), the model expects \(4, 32\)"):
        load_adapters(wider, tmp_path / "a")


def _logits(model, idx):
    with torch.no_grad():
        return model.eval()(idx)


def test_merge_lora_cli_from_base_plus_adapter_and_from_a_checkpoint_with_lora_tensors(tmp_path, tokenizer):
    save_model(tiny(), tmp_path / "base", tokenizer)
    model = apply_lora(tiny(), rank=4, alpha=16.0, verbose=False, base_model=str(tmp_path / "base"))
    randomise_adapters(model)
    idx = torch.randint(0, VOCAB, (2, 25))
    want = _logits(model, idx)
    save_adapters(model, tmp_path / "adapter")
    # 1. --adapter (its config names the base)
    assert main(["merge-lora", "--adapter", str(tmp_path / "adapter"), "--out", str(tmp_path / "m1")]) == 0
    merged, _ = load(tmp_path / "m1")
    torch.testing.assert_close(_logits(merged, idx), want, atol=1e-5, rtol=0)
    # 2. --model: a training checkpoint holding base + lora tensors with "lora" in config.json
    save_model(model, tmp_path / "ckpt", tokenizer, extra={"lora": json.loads((tmp_path / "adapter" / ADAPTER_CONFIG).read_text()),
                                                      "prompt_style": "alpaca"})
    assert main(["merge-lora", "--model", str(tmp_path / "ckpt"), "--out", str(tmp_path / "m2")]) == 0
    merged, _ = load(tmp_path / "m2")
    torch.testing.assert_close(_logits(merged, idx), want, atol=1e-5, rtol=0)
    stored = json.loads((tmp_path / "m2" / "config.json").read_text())
    assert stored["prompt_style"] == "alpaca" and stored["lora_merged"]["rank"] == 4 and "lora" not in stored
    # 3. --model: a base directory with the adapter files beside its weights
    for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
        (tmp_path / "base" / name).write_bytes((tmp_path / "adapter" / name).read_bytes())
    unmerged, _ = load(tmp_path / "base", merge=False)
    assert isinstance(unmerged.blocks[0].mlp.fc, LoRALinear)
    torch.testing.assert_close(_logits(unmerged, idx), want, atol=0, rtol=0)


def test_merge_lora_cli_errors(tmp_path, capsys, tokenizer):
    save_model(tiny(), tmp_path / "plain", tokenizer)
    assert main(["merge-lora", "--model", str(tmp_path / "plain"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"scratchllm merge-lora: error: {tmp_path / 'plain'}: no LoRA adapters found")
    assert main(["merge-lora", "--out", str(tmp_path / "o")]) == 2
    assert "give --model DIR (base + adapter in one directory) or --adapter DIR [--base DIR]" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_a_lora_step_checkpoint_loads_through_the_common_loader_merged(tmp_path, tokenizer):
    """A LoRA run's step checkpoints hold base weights + adapters with the LoRA settings in config.json
    (as the training loop writes them); `checkpoint.load` merges them so every verb can use them."""
    from dataclasses import asdict

    model = apply_lora(tiny(), rank=4, alpha=8.0, verbose=False)
    randomise_adapters(model)
    save_model(model, tmp_path / "step", tokenizer, extra={"lora": asdict(model.lora_config)})
    loaded, _ = load(tmp_path / "step")
    assert not any(isinstance(m, LoRALinear) for m in loaded.modules())
    ids = torch.randint(0, VOCAB, (2, 17))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids), model.eval()(ids), atol=1e-5, rtol=1e-5)
