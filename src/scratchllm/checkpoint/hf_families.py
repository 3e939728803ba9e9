"""Hugging Face model families: the adapters (one per family) by model_type, and the choice of one.

On import the family is config.json's model_type (`adapter_for`, `config_from_hf`); on export it is
read from the model's switches (`adapter_for_model`): each family holds the models its switches
describe, so nothing needs recording and import then export gives the family back.

    family       transformers class     our switches it holds
    GPT-2        GPT2LMHeadModel        layernorm; learned or sinusoidal positions; gelu or relu2;
                                        head_dim = emb_dim / n_heads (missing biases written as zeros,
                                        grouped-query attention as repeated key/value heads)
    Llama        LlamaForCausalLM       rmsnorm, rope (Llama 3 scaling too), swiglu; any biases
    Qwen2        Qwen2ForCausalLM       as Llama, with biases on q/k/v only
    Qwen3        Qwen3ForCausalLM       as Llama, with qk_norm and no biases
    Arcee        ArceeForCausalLM       rmsnorm, rope, relu2 or gelu (not gated): the demo recipe's model
    Starcoder2   Starcoder2ForCausalLM  layernorm, rope, gelu or relu2 (not gated); any biases
    StableLM     StableLmForCausalLM    layernorm, rope, swiglu; biases on q/k/v only or none

What no family holds is a one-line error naming the closest family and the switches it needs:
logit_softcap (no family here caps logits), RMSNorm with absolute positions, SwiGLU with absolute
positions, query/key norms outside Qwen3's switches, LayerNorm + rotary + SwiGLU with output and MLP
biases. The adapters live in hf_gpt2.py, hf_llama.py and hf_layernorm_rope.py (base class
hf_adapter.py); reading directories and downloading from the hub in hf.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from scratchllm.checkpoint.hf_adapter import HFAdapter
from scratchllm.checkpoint.hf_gpt2 import GPT2Adapter
from scratchllm.checkpoint.hf_layernorm_rope import StableLMAdapter, Starcoder2Adapter
from scratchllm.checkpoint.hf_llama import ArceeAdapter, LlamaAdapter, Qwen2Adapter, Qwen3Adapter
from scratchllm.errors import ScratchLLMError
from scratchllm.models.config import GPTConfig

__all__ = ["ADAPTERS", "ArceeAdapter", "GPT2Adapter", "HFAdapter", "LlamaAdapter", "Qwen2Adapter", "Qwen3Adapter",
           "StableLMAdapter", "Starcoder2Adapter", "adapter_for", "adapter_for_model", "config_from_hf"]

ADAPTERS: dict[str, HFAdapter] = {a.model_type: a for a in (GPT2Adapter(), LlamaAdapter(), Qwen2Adapter(),
                                                              Qwen3Adapter(), ArceeAdapter(), Starcoder2Adapter(),
                                                              StableLMAdapter())}

# The order families are tried on export: the narrower first (Qwen2 is a Llama with q/k/v-only biases).
EXPORT_ORDER = ("qwen2", "qwen3", "llama", "arcee", "gpt2", "starcoder2", "stablelm")


def adapter_for_model(config: GPTConfig) -> HFAdapter:
    """The family that holds a model of `config` when it is exported, read from its switches (see the
    module docstring). A model no family holds is a one-line error naming what the closest one needs."""
    if config.logit_softcap is not None:  # no family here has it: exporting would change the logits
        raise ScratchLLMError(f"export: logit_softcap={config.logit_softcap!r}: none of the Hugging Face families "
                              f"({', '.join(a.family for a in ADAPTERS.values())}) caps logits; train without it to export")
    candidates = [ADAPTERS[t] for t in EXPORT_ORDER]
    for adapter in candidates:
        if not adapter.mismatches(config):
            return adapter
    closest = min(candidates, key=lambda a: len(a.mismatches(config)))  # the first of those that need least
    raise ScratchLLMError(f"export: no Hugging Face family holds this model; the closest, {closest.family} "
                          f"({closest.architecture}), needs {', '.join(closest.mismatches(config))}")


def adapter_for(hf_config: Mapping[str, Any], source: str = "config.json") -> HFAdapter:
    """The adapter of a Hugging Face config.json's model_type (a one-line error for other families)."""
    model_type = hf_config.get("model_type")
    if not isinstance(model_type, str) or model_type not in ADAPTERS:
        known = ", ".join(map(repr, ADAPTERS))
        raise ScratchLLMError(f"{source}: model_type is {model_type!r}; only {known} models can be imported")
    return ADAPTERS[model_type]


def config_from_hf(hf_config: Mapping[str, Any], source: str = "config.json") -> GPTConfig:
    """GPTConfig of any supported Hugging Face config.json; settings our model lacks are errors."""
    return adapter_for(hf_config, source).config_from_hf(hf_config, source)
