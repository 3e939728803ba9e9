"""Every decoder the project trains leaves through `export-hf` into a family transformers ships, read
from its switches: the demo recipe's model (RMSNorm, RoPE, squared ReLU, untied head) as Arcee, the
nanoGPT recipe's bias-free GPT as GPT-2 with zero biases, fixed sinusoidal positions and grouped-query
attention as GPT-2, biases on the output projection and MLP only as Llama, LayerNorm with rotary
positions as Starcoder2 (non-gated MLP) or StableLM (SwiGLU). The logits of the export equal ours
(1e-4) and the directory imports back to the same logits.
"""

from __future__ import annotations

import json

import pytest
import torch
import transformers

from scratchllm.checkpoint import load, save_model
from scratchllm.checkpoint.convert import export_hf
from scratchllm.models.config import GPTConfig
from scratchllm.models.gpt import GPT
from scratchllm.recipes.demo import NANOGPT_BABY, SMALL_BUDGET

transformers.logging.set_verbosity_error()

VOCAB = 300
_SMALL = dict(emb_dim=64, n_heads=4, n_layers=2, context_length=96)
_ROPE = dict(norm="rmsnorm", position="rope")

# name: (config fields, the transformers class it exports as, whether the directory imports back)
SWITCHES = {
    "demo-recipe": ({**SMALL_BUDGET.model, "context_length": 96}, "ArceeForCausalLM", True),
    "nanogpt-recipe": ({**NANOGPT_BABY.model, "context_length": 96}, "GPT2LMHeadModel", True),
    "sinusoidal-gqa-relu2": ({**_SMALL, "position": "sinusoidal", "n_kv_heads": 2, "mlp": "relu2", "bias": False},
                             "GPT2LMHeadModel", True),
    "rope-gelu-tied": ({**_SMALL, **_ROPE, "mlp": "gelu", "bias": True, "qkv_bias": True}, "ArceeForCausalLM", True),
    "o-and-mlp-bias-only": ({**_SMALL, **_ROPE, "mlp": "swiglu", "qkv_bias": False, "bias": True, "n_kv_heads": 1},
                            "LlamaForCausalLM", True),
    "layernorm-rope-gelu-gqa": ({**_SMALL, "position": "rope", "n_kv_heads": 2, "head_dim": 32},
                                "Starcoder2ForCausalLM", True),
    "layernorm-rope-relu2-no-bias": ({**_SMALL, "position": "rope", "mlp": "relu2", "bias": False, "qkv_bias": False,
                                      "tie_embeddings": False}, "Starcoder2ForCausalLM", True),
    "layernorm-rope-swiglu": ({**_SMALL, "position": "rope", "mlp": "swiglu", "bias": False, "qkv_bias": True,
                               "n_kv_heads": 2}, "StableLmForCausalLM", True),
    # Arcee has no switch for q/k/v biases alone: attention_bias puts one on o too (written as zeros),
    # and import takes attention_bias only together with mlp_bias
    "relu2-qkv-bias": ({**_SMALL, **_ROPE, "mlp": "relu2", "qkv_bias": True, "bias": False, "tie_embeddings": False},
                       "ArceeForCausalLM", False),
}


@pytest.mark.parametrize("name", list(SWITCHES))
def test_export_holds_every_decoder_with_its_logits(tmp_path, name):
    fields, architecture, imports = SWITCHES[name]
    torch.manual_seed(0)
    model = GPT(GPTConfig(**{**fields, "vocab_size": VOCAB})).eval()
    with torch.no_grad():  # off the init (zero projections, unit norms, zero biases) so a misplaced tensor shows
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    save_model(model, tmp_path / "ours")
    export_hf(tmp_path / "ours", tmp_path / "hf")
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["architectures"] == [architecture]
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert type(theirs).__name__ == architecture
    ids = torch.randint(0, VOCAB, (2, 90), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model(ids)
        assert ours.std() > 0.3  # a real comparison
        torch.testing.assert_close(theirs(ids).logits, ours, atol=1e-4, rtol=0)
        if imports:
            torch.testing.assert_close(load(tmp_path / "hf")[0](ids), ours, atol=1e-4, rtol=0)


def test_the_demo_recipe_exports_as_arcee_with_relu2():
    from scratchllm.checkpoint.hf_families import adapter_for_model

    config = GPTConfig(**{**SMALL_BUDGET.model, "vocab_size": VOCAB})
    hf = adapter_for_model(config).config_to_hf(config)
    assert (hf["model_type"], hf["hidden_act"], hf["tie_word_embeddings"]) == ("arcee", "relu2", False)
    assert (hf["attention_bias"], hf["mlp_bias"]) == (False, False)
