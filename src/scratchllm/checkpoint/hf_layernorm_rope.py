"""Hugging Face families with LayerNorm and rotary positions, for our models that keep GPT-2's norm
but rotate queries and keys as Llama does: Starcoder2 (`Starcoder2ForCausalLM`: a non-gated MLP,
c_proj(act(c_fc(x))), with GELU's tanh form or squared ReLU, one `use_bias` switch for every
projection) and StableLM (`StableLmForCausalLM`: SwiGLU without biases, biases on q/k/v when
`use_qkv_bias`). Both have LayerNorm biases and sequential blocks (StableLM's parallel residual off);
they share the Llama family's tensor names (hf_llama.py) but for Starcoder2's MLP and the norms' biases.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from scratchllm.checkpoint.hf_adapter import check_hf_types
from scratchllm.checkpoint.hf_llama import LLAMA_BLOCK, LLAMA_TOP, LlamaAdapter, rope_from_hf
from scratchllm.errors import ScratchLLMError
from scratchllm.models.config import GPTConfig

_NORM_BIAS = {"model.norm.bias": "final_norm.bias"}


class _LayerNormRopeAdapter(LlamaAdapter):
    """What the two share: LayerNorm (with biases, zero where our model has none), rotary positions."""

    top_names = {**LLAMA_TOP, **_NORM_BIAS}
    norm = "layernorm"
    eps_key = ""  # the config.json key of the norms' epsilon
    shared_types = {**dict.fromkeys(("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                     "num_attention_heads", "num_key_value_heads", "max_position_embeddings", "head_dim"),
                                    int),
                    "tie_word_embeddings": bool, "rope_theta": float, "partial_rotary_factor": float, "hidden_act": str}

    def finish_hf_config(self, hf: dict[str, Any], config: GPTConfig) -> dict[str, Any]:
        hf[self.eps_key] = hf.pop("rms_norm_eps")
        return hf

    def zero_biases(self, config: GPTConfig) -> dict[str, int]:
        wanted = super().zero_biases(config)
        if not config.bias:  # our LayerNorm without a bias is theirs with a zero one
            C = config.emb_dim
            wanted["model.norm.bias"] = C
            for i in range(config.n_layers):
                wanted.update({f"model.layers.{i}.input_layernorm.bias": C,
                               f"model.layers.{i}.post_attention_layernorm.bias": C})
        return wanted

    def from_hf(self, sd: Mapping[str, torch.Tensor], config: GPTConfig, source: str = "weights") -> dict[str, torch.Tensor]:
        """As Llama's, and for a model without biases (our `bias` covers the norms and the projections
        together) the norms' biases must be zero, as an export from here writes them; they are dropped."""
        out = super().from_hf(sd, config, source)
        if not config.bias:
            for name in [n for n in out if n.endswith("norm1.bias") or n.endswith("norm2.bias") or n == "final_norm.bias"]:
                if out[name].count_nonzero():
                    raise ScratchLLMError(f"{source}: LayerNorm bias {name!r} is not zero in a {self.family} model "
                                          "without projection biases; scratchllm's `bias` covers both")
                del out[name]
        return out

    def shape_from_hf(self, h: Mapping[str, Any], source: str) -> dict[str, Any]:
        """GPTConfig fields every LayerNorm + rotary family reads alike (rotary settings checked)."""
        theta, scaling, problems = rope_from_hf(h)
        for bad, what in problems:
            if bad:
                raise ScratchLLMError(f"{source}: unsupported {self.family} setting {what}")
        heads = h["num_attention_heads"]
        return dict(vocab_size=h["vocab_size"], context_length=h["max_position_embeddings"], emb_dim=h["hidden_size"],
                    n_layers=h["num_hidden_layers"], n_heads=heads, n_kv_heads=h.get("num_key_value_heads") or heads,
                    head_dim=h.get("head_dim"), mlp_hidden_dim=h["intermediate_size"], drop_rate=0.0,
                    tie_embeddings=h.get("tie_word_embeddings", False), layer_norm_eps=h[self.eps_key],
                    norm="layernorm", position="rope", rope_theta=theta, rope_scaling=scaling)

    def build(self, fields: dict[str, Any], source: str) -> GPTConfig:
        try:
            return GPTConfig(**fields)
        except ScratchLLMError as exc:
            raise ScratchLLMError(f"{source}: {exc}") from None


class Starcoder2Adapter(_LayerNormRopeAdapter):
    """Starcoder2ForCausalLM (BigCode's StarCoder2): LayerNorm, rotary positions, grouped-query attention,
    a non-gated MLP whose activation is hidden_act, and `use_bias` on every projection (zero biases fill
    a model with biases on some only)."""

    model_type = "starcoder2"
    family = "Starcoder2"
    architecture = "Starcoder2ForCausalLM"
    activations = {"gelu_pytorch_tanh": "gelu", "relu2": "relu2"}
    block_names = {**{k: v for k, v in LLAMA_BLOCK.items() if not k.startswith("mlp.")},
                   "mlp.c_fc": "mlp.fc", "mlp.c_proj": "mlp.proj"}
    eps_key = "norm_epsilon"
    defaults = dict(vocab_size=49152, hidden_size=3072, intermediate_size=12288, num_hidden_layers=30,
                    num_attention_heads=24, num_key_value_heads=2, max_position_embeddings=4096, norm_epsilon=1e-5,
                    hidden_act="gelu_pytorch_tanh", use_bias=True, tie_word_embeddings=True)

    def config_from_hf(self, hf_config: Mapping[str, Any], source: str = "config.json") -> GPTConfig:
        check_hf_types(hf_config, {**self.shared_types, "norm_epsilon": float, "use_bias": bool,
                                   "sliding_window": int}, source)
        h = {**self.defaults, **{k: v for k, v in hf_config.items() if v is not None}}
        act = h.get("hidden_act")
        unsupported = [(act not in self.activations, f"hidden_act {act!r} (only {' and '.join(self.activations)})"),
                       (h.get("sliding_window") is not None, "sliding_window (sliding-window attention)")]
        for bad, what in unsupported:
            if bad:
                raise ScratchLLMError(f"{source}: unsupported {self.family} setting {what}")
        use_bias = h["use_bias"]
        fields = {**self.shape_from_hf(h, source),
                  "mlp": self.activations[act], "qkv_bias": use_bias, "bias": use_bias}
        return self.build(fields, source)

    def biases_to_hf(self, config: GPTConfig) -> dict[str, Any]:
        return {"use_bias": config.qkv_bias or config.bias, "sliding_window": None, "residual_dropout": 0.0,
                "embedding_dropout": 0.0}

    def zero_biases(self, config: GPTConfig) -> dict[str, int]:
        wanted = _LayerNormRopeAdapter.zero_biases(self, config)
        if config.qkv_bias or config.bias:  # use_bias: every projection has one
            C, q_dim, kv_dim = config.emb_dim, config.n_heads * config.head_dim, config.kv_heads * config.head_dim
            for i in range(config.n_layers):
                attn, mlp = f"model.layers.{i}.self_attn", f"model.layers.{i}.mlp"
                wanted.update({f"{attn}.q_proj.bias": q_dim, f"{attn}.k_proj.bias": kv_dim,
                               f"{attn}.v_proj.bias": kv_dim, f"{attn}.o_proj.bias": C,
                               f"{mlp}.c_fc.bias": config.hidden_dim, f"{mlp}.c_proj.bias": C})
        return wanted


class StableLMAdapter(_LayerNormRopeAdapter):
    """StableLmForCausalLM (Stability's StableLM 2): LayerNorm, rotary positions on every channel
    (partial_rotary_factor 1), SwiGLU without biases, biases on q/k/v when use_qkv_bias; heads of
    emb_dim / n_heads."""

    model_type = "stablelm"
    family = "StableLM"
    architecture = "StableLmForCausalLM"
    eps_key = "layer_norm_eps"
    defaults = dict(vocab_size=50304, hidden_size=2560, intermediate_size=6912, num_hidden_layers=32,
                    num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096,
                    layer_norm_eps=1e-5, hidden_act="silu", tie_word_embeddings=False)

    def config_from_hf(self, hf_config: Mapping[str, Any], source: str = "config.json") -> GPTConfig:
        check_hf_types(hf_config, {**self.shared_types, "layer_norm_eps": float, "use_qkv_bias": bool,
                                   "qk_layernorm": bool, "use_parallel_residual": bool}, source)
        h = {**self.defaults, **{k: v for k, v in hf_config.items() if v is not None}}
        unsupported = [(h.get("hidden_act") != "silu", f"hidden_act {h.get('hidden_act')!r} (only silu)"),
                       (bool(h.get("qk_layernorm")), "qk_layernorm true (LayerNorm on each query/key head)"),
                       (bool(h.get("use_parallel_residual")), "use_parallel_residual true (parallel blocks)")]
        for bad, what in unsupported:
            if bad:
                raise ScratchLLMError(f"{source}: unsupported {self.family} setting {what}")
        fields = {**self.shape_from_hf(h, source), "mlp": "swiglu", "qkv_bias": h.get("use_qkv_bias", False),
                  "bias": False}
        return self.build(fields, source)

    def bias_mismatches(self, config: GPTConfig) -> list[str]:
        problems = []
        if config.bias:
            problems.append("bias False (got True: StableLM's output projection and MLP have none)")
        if config.n_heads * config.head_dim != config.emb_dim:
            problems.append(f"head_dim emb_dim / n_heads (got {config.head_dim})")
        return problems

    def biases_to_hf(self, config: GPTConfig) -> dict[str, Any]:
        return {"use_qkv_bias": config.qkv_bias, "qk_layernorm": False, "use_parallel_residual": False,
                "partial_rotary_factor": 1.0, "hidden_dropout": 0.0}

    def finish_hf_config(self, hf: dict[str, Any], config: GPTConfig) -> dict[str, Any]:
        hf = super().finish_hf_config(hf, config)
        hf["rope_parameters"] = {**hf["rope_parameters"], "partial_rotary_factor": 1.0}
        hf.pop("head_dim")  # StableLM's heads are always hidden_size / num_attention_heads
        return hf
