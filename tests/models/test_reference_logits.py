"""Every architecture switch gives, bit for bit, the initial weights and the outputs that the code of
commit 46963e8 gave (before attention, its inspection hook and its precision handling were split
apart): tests/fixtures/reference_logits.safetensors holds, per case, the weights `GPT(config)` made
from seed 0 and the logits of fixed inputs (full pass, left padding, KV-cache decoding, the manual
attention path, bfloat16 on a CPU).

Regenerate (only when a change of the numbers is intended, and say so in the commit):
    python -m tests.models.test_reference_logits tests/fixtures/reference_logits.safetensors
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from scratchllm.models.config import GPTConfig
from scratchllm.models.encoder_decoder import DecoderSteps, EncoderDecoder, memory_mask
from scratchllm.models.gpt import GPT, KVCache

FIXTURE = Path(__file__).parents[1] / "fixtures" / "reference_logits.safetensors"
BASE = dict(vocab_size=32, context_length=16, emb_dim=16, n_layers=2, n_heads=4)
_LLAMA = dict(norm="rmsnorm", position="rope", mlp="swiglu", mlp_hidden_dim=24, bias=False, qkv_bias=False,
              tie_embeddings=False)
CASES = {
    "gpt2": {},  # LayerNorm, learned positions, GELU, biases, tied head
    "llama": _LLAMA,  # RMSNorm, RoPE, SwiGLU, no biases, untied head
    "gqa": {**_LLAMA, "n_kv_heads": 2, "qkv_bias": True},  # Qwen2.5: grouped-query attention, q/k/v biases
    "qk_norm": {**_LLAMA, "n_kv_heads": 2, "qk_norm": True, "head_dim": 8},  # Qwen3: norms, wide heads
    "relu2": {"mlp": "relu2", "logit_softcap": 3.0},  # the speedrun's squared ReLU and soft cap
    "encoder": {"causal": False, "position": "sinusoidal"},  # bidirectional (BERT-style)
    "encoder_decoder": {"position": "rope", "n_kv_heads": 2, "qk_norm": True},  # cross-attention too
}


def build(case: str, **overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    config = GPTConfig(**BASE, **CASES[case], **overrides)
    return (EncoderDecoder(config) if case == "encoder_decoder" else GPT(config)).eval()


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: t.detach().clone() for name, t in model.state_dict().items()}


def sharpen(model: torch.nn.Module) -> None:
    """At init scale every row of attention is nearly uniform; scaled-up matrices make the outputs
    depend on every part of the model."""
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(10.0)


def inputs() -> tuple[torch.Tensor, torch.Tensor]:
    """ids (2, 12) and a padding mask (2, 12) whose first row is left-padded by 3."""
    ids = torch.randint(0, BASE["vocab_size"], (2, 12), generator=torch.Generator().manual_seed(1))
    pad = torch.ones(2, 12, dtype=torch.long)
    pad[0, :3] = 0
    return ids, pad


@torch.no_grad()
def gpt_outputs(model: GPT) -> dict[str, torch.Tensor]:
    ids, pad = inputs()
    out = {"logits": model(ids), "padded": model(ids, attention_mask=pad)}
    if model.config.causal:
        out["decode"] = decode(model, ids)
    manual = GPT(dataclasses.replace(model.config, attn_impl="manual")).eval()
    manual.load_state_dict(model.state_dict())
    out["manual"] = manual(ids)
    half = model.to(torch.bfloat16)  # last (it rounds the weights); on a CPU attention and the cache run in float32
    out["bf16"] = half(ids)
    if model.config.causal:
        out["bf16_decode"] = decode(half, ids)
    return out


def decode(model: GPT, ids: torch.Tensor) -> torch.Tensor:
    """A prefill of 8 positions, then 4 single-token steps with the KV cache: last logits (2, 5, V)."""
    cache = KVCache.allocate(model.config, 2, 12, "cpu", model.tok_emb.weight.dtype)
    steps = [model(ids[:, :8], cache=cache)[:, -1]]
    for t in range(8, 12):
        steps.append(model(ids[:, t : t + 1], cache=cache)[:, -1])
    return torch.stack(steps, dim=1)


@torch.no_grad()
def seq2seq_outputs(model: EncoderDecoder) -> dict[str, torch.Tensor]:
    ids, pad = inputs()
    src, src_mask = ids.flip(0), pad.flip(0)  # right-padded sources need the mask on the other side
    src_mask = src_mask.flip(1)
    tgt = ids[:, :7]
    out = {"logits": model(src, tgt, src_mask)}
    memory = model.encode(src, src_mask)
    steps = DecoderSteps(model, memory, memory_mask(src_mask), use_cache=True, max_len=7)
    out["decode"] = torch.stack([steps(tgt[:, : t + 1]) for t in range(7)], dim=1)  # (2, 7, V)
    out["bf16"] = model.to(torch.bfloat16)(src, tgt, src_mask)  # last: it rounds the weights
    return out


def outputs(case: str, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    sharpen(model)
    return seq2seq_outputs(model) if case == "encoder_decoder" else gpt_outputs(model)


@pytest.fixture(scope="module")
def reference() -> dict[str, torch.Tensor]:
    return load_file(FIXTURE)


@pytest.fixture(scope="module")
def parameter_order() -> dict[str, str]:
    with safe_open(FIXTURE, "pt") as f:
        return f.metadata()


@pytest.mark.parametrize("case", CASES)
def test_seed_zero_gives_the_same_initial_weights(case, reference, parameter_order):
    model = build(case)
    # the names in order: an optimizer's saved state is matched to parameters by position
    assert [name for name, _ in model.named_parameters()] == json.loads(parameter_order[case])
    got = weights(model)
    want = {name[len(case) + 6:]: t for name, t in reference.items() if name.startswith(f"{case}.init.")}
    assert sorted(got) == sorted(want)  # the state-dict names too
    for name, t in want.items():
        assert torch.equal(got[name], t), name


@pytest.mark.parametrize("case", CASES)
def test_same_weights_give_bit_identical_logits(case, reference):
    model = build(case)
    model.load_state_dict({name[len(case) + 6:]: t for name, t in reference.items() if name.startswith(f"{case}.init.")})
    got = outputs(case, model)
    want = {name[len(case) + 5:]: t for name, t in reference.items() if name.startswith(f"{case}.out.")}
    assert sorted(got) == sorted(want)
    for key, t in want.items():
        assert got[key].dtype == t.dtype and torch.equal(got[key], t), key
    assert want["logits"].std() > 0.5  # sharpened: far from the uniform distribution of an untrained model


def write(path: str) -> None:
    tensors, order = {}, {}
    for case in CASES:
        model = build(case)
        order[case] = json.dumps([name for name, _ in model.named_parameters()])
        tensors.update({f"{case}.init.{name}": t for name, t in weights(model).items()})
        tensors.update({f"{case}.out.{key}": t.contiguous() for key, t in outputs(case, model).items()})
    save_file(tensors, path, metadata=order)


if __name__ == "__main__":
    torch.set_num_threads(1)  # as the tests run (tests/conftest.py)
    write(sys.argv[1])
