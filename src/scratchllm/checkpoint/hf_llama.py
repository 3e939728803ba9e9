"""The Llama family of Hugging Face adapters: Llama (`LlamaForCausalLM`, also SmolLM2's: RMSNorm,
rotary positions with Llama 3's scaling, SwiGLU, grouped-query attention), Qwen2 (`Qwen2ForCausalLM`,
Qwen2.5's: biases on q/k/v only), Qwen3 (`Qwen3ForCausalLM`: query/key norms, wider heads) and Arcee
(`ArceeForCausalLM`: Llama with a non-gated MLP, squared ReLU, the MLP of scratchllm's own
small-budget recipe). The four share tensor names: q/k/v projections are concatenated into our fused
qkv on import and split again on export.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

from scratchllm.checkpoint.hf_adapter import HFAdapter, check_hf_types, split_for_export, zero_biases
from scratchllm.errors import ScratchLLMError
from scratchllm.models.config import GPTConfig


# Per-block module names, Hugging Face -> ours (q/k/v projections are fused into our attn.qkv).
LLAMA_BLOCK = {
    "self_attn.o_proj": "attn.proj", "mlp.gate_proj": "mlp.gate", "mlp.up_proj": "mlp.fc",
    "mlp.down_proj": "mlp.proj", "input_layernorm": "norm1", "post_attention_layernorm": "norm2",
    "self_attn.q_norm": "attn.q_norm", "self_attn.k_norm": "attn.k_norm",
}
LLAMA_TOP = {"model.embed_tokens.weight": "tok_emb.weight", "model.norm.weight": "final_norm.weight"}


class LlamaAdapter(HFAdapter):
    """LlamaForCausalLM: RMSNorm, rotary positions (optionally with Llama 3's scaling), SwiGLU,
    grouped-query attention; biases on all attention projections and the MLP, or on none.

    Qwen2, Qwen3 and Arcee are this architecture with other switches, so they subclass it and change
    only the config: the tensor names are the same four families over. On export a model with biases
    on q/k/v but not on the output projection and MLP, or the other way round, gets zero ones where
    Llama's switches put a bias (attention_bias: q, k, v and o; mlp_bias: the MLP).
    """

    model_type = "llama"
    family = "Llama"
    architecture = "LlamaForCausalLM"
    qk_norm = False  # Qwen3 normalises queries and keys
    norm = "rmsnorm"  # our norm switch the family holds (the LayerNorm families: hf_layernorm_rope.py)
    field_types = {**dict.fromkeys(("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                    "num_attention_heads", "num_key_value_heads", "max_position_embeddings", "head_dim"),
                                   int),
                   **dict.fromkeys(("attention_bias", "mlp_bias", "tie_word_embeddings", "use_sliding_window", "use_mrope"),
                                   bool),
                   **dict.fromkeys(("rms_norm_eps", "rope_theta", "partial_rotary_factor"), float),
                   "hidden_act": str, "layer_types": list}
    top_names = LLAMA_TOP  # Hugging Face -> our names: outside the blocks, and per block
    block_names = LLAMA_BLOCK
    activations = {"silu": "swiglu"}  # config.json's hidden_act -> our mlp (Arcee's MLP is not gated)
    # transformers' defaults for keys a config.json leaves out
    defaults: dict[str, Any] = dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                                    num_attention_heads=32, max_position_embeddings=2048, rms_norm_eps=1e-6,
                                    head_dim=None)

    # -- config.json -> GPTConfig

    def biases_from_hf(self, h: Mapping[str, Any]) -> tuple[bool, bool, list[tuple[bool, str]]]:
        """(qkv_bias, bias, unsupported settings) of a config.json. Llama: attention_bias puts a bias
        on q, k, v and o, mlp_bias on the MLP; our `bias` covers o and the MLP together."""
        attention, mlp = h.get("attention_bias", False), h.get("mlp_bias", False)
        return attention, attention, [(attention != mlp, f"attention_bias {str(attention).lower()} with mlp_bias "
                                                         f"{str(mlp).lower()} (only both or neither)")]

    def config_from_hf(self, hf_config: Mapping[str, Any], source: str = "config.json") -> GPTConfig:
        """GPTConfig of a Hugging Face config.json of this family; settings our model lacks are errors
        naming them. Dropout is 0 (a training choice; recipes set their own)."""
        check_hf_types(hf_config, self.field_types, source)
        h = {**self.defaults, **{k: v for k, v in hf_config.items() if v is not None}}
        theta, scaling, rope_problems = rope_from_hf(hf_config)
        qkv_bias, bias, bias_problems = self.biases_from_hf(h)
        layer_types = h.get("layer_types") or []
        if not all(isinstance(t, str) for t in layer_types):
            raise ScratchLLMError(f"{source}: field 'layer_types' is {str(layer_types)[:60]}; expected a list of strings")
        unsupported = [
            (h.get("hidden_act", "silu") not in self.activations,
             f"hidden_act {h.get('hidden_act')!r} (only {' and '.join(self.activations)})"),
            (bool(h.get("use_sliding_window")), "use_sliding_window true (sliding-window attention)"),
            (any(t != "full_attention" for t in layer_types), f"layer_types {sorted(set(layer_types))} (only full_attention)"),
            (bool(h.get("use_mrope")), "use_mrope true (multimodal rotary positions)"),
            *rope_problems,
            *bias_problems,
        ]
        for bad, what in unsupported:
            if bad:
                raise ScratchLLMError(f"{source}: unsupported {self.family} setting {what}")
        heads = h["num_attention_heads"]
        try:
            return GPTConfig(
                vocab_size=h["vocab_size"],
                context_length=h["max_position_embeddings"],
                emb_dim=h["hidden_size"],
                n_layers=h["num_hidden_layers"],
                n_heads=heads,
                n_kv_heads=h.get("num_key_value_heads") or heads,
                head_dim=h["head_dim"],
                mlp_hidden_dim=h["intermediate_size"],
                drop_rate=0.0,
                qkv_bias=qkv_bias,
                bias=bias,
                tie_embeddings=h.get("tie_word_embeddings", False),
                layer_norm_eps=h["rms_norm_eps"],
                norm="rmsnorm",
                position="rope",
                mlp=self.activations.get(h.get("hidden_act", "silu"), "swiglu"),
                rope_theta=theta,
                rope_scaling=scaling,
                qk_norm=self.qk_norm,
            )
        except ScratchLLMError as exc:
            raise ScratchLLMError(f"{source}: {exc}") from None

    # -- GPTConfig -> config.json: which of our models this family can hold, and how

    def mismatches(self, config: GPTConfig) -> list[str]:
        """What `config` would need to change to be a model of this family (empty: it is one)."""
        mlps = tuple(dict.fromkeys(self.activations.values()))
        wanted = {"norm": (self.norm,), "position": ("rope",), "mlp": mlps, "causal": (True,), "qk_norm": (self.qk_norm,)}
        found = [f"{k} {' or '.join(map(repr, v))} (got {getattr(config, k)!r})" for k, v in wanted.items()
                 if getattr(config, k) not in v]
        return found + self.bias_mismatches(config)

    def bias_mismatches(self, config: GPTConfig) -> list[str]:
        return []  # any mix: zero biases fill what attention_bias / mlp_bias add (`to_hf`)

    def biases_to_hf(self, config: GPTConfig) -> dict[str, Any]:
        return {"attention_bias": config.qkv_bias or config.bias, "mlp_bias": config.bias}

    def hidden_act(self, config: GPTConfig) -> str:
        return next(act for act, mlp in self.activations.items() if mlp == config.mlp)

    def config_to_hf(self, config: GPTConfig, dtype: torch.dtype = torch.float32, eos_id: int | None = None,
                     bos_id: int | None = None) -> dict[str, Any]:
        """A config.json that transformers reads as this family. The rotary settings are written both
        as transformers 5 does (rope_parameters) and as earlier versions did (rope_theta, rope_scaling)."""
        problems = self.mismatches(config)
        if problems:
            raise ScratchLLMError(f"export: not a {self.family} model; it needs {', '.join(problems)}")
        if eos_id is not None and eos_id >= config.vocab_size:
            eos_id = None  # a model smaller than the tokenizer; transformers rejects an id out of range
        scaling = None
        if config.rope_scaling is not None:
            s = config.rope_scaling
            scaling = {"rope_type": "llama3", "factor": s["factor"], "low_freq_factor": s["low_freq_factor"],
                       "high_freq_factor": s["high_freq_factor"],
                       "original_max_position_embeddings": s["original_context_length"]}
        rope = {"rope_type": "default", **(scaling or {}), "rope_theta": config.rope_theta}
        return self.finish_hf_config({
            "architectures": [self.architecture],
            "model_type": self.model_type,
            "vocab_size": config.vocab_size,
            "hidden_size": config.emb_dim,
            "intermediate_size": config.hidden_dim,
            "num_hidden_layers": config.n_layers,
            "num_attention_heads": config.n_heads,
            "num_key_value_heads": config.kv_heads,
            "head_dim": config.head_dim,
            "hidden_act": self.hidden_act(config),
            "max_position_embeddings": config.context_length,
            "rms_norm_eps": config.layer_norm_eps,
            "rope_theta": config.rope_theta,
            "rope_scaling": scaling,
            "rope_parameters": rope,
            **self.biases_to_hf(config),
            "attention_dropout": 0.0,
            "initializer_range": 0.02,
            "tie_word_embeddings": config.tie_embeddings,
            "use_cache": True,
            "bos_token_id": bos_id if bos_id is not None and bos_id < config.vocab_size else None,
            "eos_token_id": eos_id,
            "dtype": str(dtype).removeprefix("torch."),
            "torch_dtype": str(dtype).removeprefix("torch."),  # the key's name before transformers 5
        }, config)

    def finish_hf_config(self, hf: dict[str, Any], config: GPTConfig) -> dict[str, Any]:
        """The config.json of `config_to_hf` with a family's own keys (LayerNorm families rename the epsilon)."""
        return hf

    # -- tensors

    def from_hf(self, sd: Mapping[str, torch.Tensor], config: GPTConfig, source: str = "weights") -> dict[str, torch.Tensor]:
        """Hugging Face names -> ours; q/k/v projections are concatenated into our fused qkv."""
        out: dict[str, torch.Tensor] = {}
        qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
        for name, tensor in sd.items():
            key = name if name.startswith(("model.", "lm_head.")) else f"model.{name}"  # bare LlamaModel names too
            if key.endswith("rotary_emb.inv_freq"):
                continue  # recomputed from the rotary settings
            if key in self.top_names:
                out[self.top_names[key]] = tensor
                continue
            if key == "lm_head.weight":
                if not config.tie_embeddings:
                    out["out_head.weight"] = tensor
                continue
            m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)\.(weight|bias)", key)
            if m is None:
                raise ScratchLLMError(f"{source}: unexpected tensor {name!r} for a {self.family} model")
            layer, module, param = m.groups()
            if module in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
                qkv.setdefault((layer, param), {})[module[-6]] = tensor
            elif module in self.block_names:
                out[f"blocks.{layer}.{self.block_names[module]}.{param}"] = tensor
            else:
                raise ScratchLLMError(f"{source}: unexpected tensor {name!r} for a {self.family} model")
        for (layer, param), parts in qkv.items():
            if set(parts) != {"q", "k", "v"}:
                raise ScratchLLMError(f"{source}: layer {layer} lacks one of q_proj/k_proj/v_proj {param}")
            out[f"blocks.{layer}.attn.qkv.{param}"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
        return out

    def to_hf(self, sd: Mapping[str, torch.Tensor], config: GPTConfig) -> dict[str, torch.Tensor]:
        """Our names -> Hugging Face's; our fused qkv is split into q_proj, k_proj, v_proj."""
        top = {ours: hf for hf, ours in self.top_names.items()}
        block = {ours: hf for hf, ours in self.block_names.items()}
        sizes = [config.n_heads * config.head_dim, config.kv_heads * config.head_dim, config.kv_heads * config.head_dim]
        out, block_tensors = split_for_export(sd, config, top, {*block, "attn.qkv"}, self.family)
        for layer, module, param, tensor in block_tensors:
            if module == "attn.qkv":
                for part, piece in zip("qkv", tensor.split(sizes, dim=0)):  # (q_dim | kv_dim | kv_dim, ...)
                    out[f"model.layers.{layer}.self_attn.{part}_proj.{param}"] = piece.contiguous()
            else:
                out[f"model.layers.{layer}.{block[module]}.{param}"] = tensor.contiguous()
        zero_biases(out, self.zero_biases(config), out["model.embed_tokens.weight"].dtype)
        return out

    def zero_biases(self, config: GPTConfig) -> dict[str, int]:
        """The biases this family's switches put where our model has none (name -> length), written as zeros."""
        biases = self.biases_to_hf(config)
        C, q_dim, kv_dim = config.emb_dim, config.n_heads * config.head_dim, config.kv_heads * config.head_dim
        wanted: dict[str, int] = {}
        for i in range(config.n_layers):
            attn, mlp = f"model.layers.{i}.self_attn", f"model.layers.{i}.mlp"
            if biases.get("attention_bias") or config.qkv_bias:  # Qwen2 has q/k/v biases without the switch
                wanted.update({f"{attn}.q_proj.bias": q_dim, f"{attn}.k_proj.bias": kv_dim, f"{attn}.v_proj.bias": kv_dim})
            if biases.get("attention_bias"):
                wanted[f"{attn}.o_proj.bias"] = C
            if biases.get("mlp_bias"):
                wanted.update({f"{mlp}.up_proj.bias": config.hidden_dim, f"{mlp}.down_proj.bias": C})
                if config.mlp == "swiglu":
                    wanted[f"{mlp}.gate_proj.bias"] = config.hidden_dim
        return wanted


def rope_from_hf(h: Mapping[str, Any]) -> tuple[float, dict[str, Any] | None, list[tuple[bool, str]]]:
    """(rope_theta, our rope_scaling, unsupported settings) of a config.json, written either as
    transformers 5 does ("rope_parameters": {"rope_type", "rope_theta", ...}) or as earlier versions
    and most hub files do ("rope_theta", "rope_scaling": {"rope_type" or "type", ...})."""
    params: dict[str, Any] = {}
    problems = []
    for key in ("rope_scaling", "rope_parameters"):  # the newer key wins
        value = h.get(key)
        if isinstance(value, Mapping):
            params.update(value)
        elif value is not None:
            problems.append((True, f"{key} {value!r} (expected an object)"))
    theta = params.get("rope_theta", h.get("rope_theta", 10000.0))
    kind = params.get("rope_type", params.get("type", "default"))
    partial = params.get("partial_rotary_factor", h.get("partial_rotary_factor", 1.0))
    problems += [(kind not in ("default", "llama3"), f"rope type {kind!r} (only default and llama3)"),
                 (partial != 1.0, f"partial_rotary_factor {partial!r} (rotary positions on every channel only)")]
    if isinstance(theta, bool) or not isinstance(theta, (int, float)):
        problems.append((True, f"rope_theta {theta!r} (expected a number)"))
        theta = 10000.0
    scaling = None
    if kind == "llama3":
        scaling = {"type": "llama3", **{k: params.get(k) for k in ("factor", "low_freq_factor", "high_freq_factor")},
                   # absent: the context the model was configured with, as transformers reads it
                   "original_context_length": params.get("original_max_position_embeddings",
                                                         h.get("max_position_embeddings"))}
    return float(theta), scaling, problems


class Qwen2Adapter(LlamaAdapter):
    """Qwen2ForCausalLM (Qwen2, Qwen2.5): Llama's architecture with biases on the query, key and value
    projections only (none on the output projection or the MLP) (Yang et al. 2024, Qwen2 report)."""

    model_type = "qwen2"
    family = "Qwen2"
    architecture = "Qwen2ForCausalLM"
    defaults = dict(vocab_size=151936, hidden_size=4096, intermediate_size=22016, num_hidden_layers=32,
                    num_attention_heads=32, max_position_embeddings=32768, rms_norm_eps=1e-6, head_dim=None)

    def biases_from_hf(self, h):
        return True, False, []

    def bias_mismatches(self, config: GPTConfig) -> list[str]:
        if (config.qkv_bias, config.bias) != (True, False):
            return [f"qkv_bias True and bias False (got qkv_bias {config.qkv_bias}, bias {config.bias})"]
        return []

    def biases_to_hf(self, config: GPTConfig) -> dict[str, Any]:
        return {"use_sliding_window": False, "sliding_window": None, "max_window_layers": config.n_layers}


class Qwen3Adapter(LlamaAdapter):
    """Qwen3ForCausalLM: Llama's architecture with RMSNorm on each query and key head (qk_norm) and
    heads of their own width (head_dim 128 in every size), no biases (Yang et al. 2025, Qwen3 report)."""

    model_type = "qwen3"
    family = "Qwen3"
    architecture = "Qwen3ForCausalLM"
    qk_norm = True
    defaults = dict(vocab_size=151936, hidden_size=4096, intermediate_size=22016, num_hidden_layers=32,
                    num_attention_heads=32, max_position_embeddings=32768, rms_norm_eps=1e-6, head_dim=128)

    def biases_from_hf(self, h):
        attention = h.get("attention_bias", False)
        return False, False, [(attention, "attention_bias true (biases on q/k/v/o but not the MLP)")]

    def bias_mismatches(self, config: GPTConfig) -> list[str]:
        if config.qkv_bias or config.bias:
            return [f"no biases (got qkv_bias {config.qkv_bias}, bias {config.bias})"]
        return []

    def biases_to_hf(self, config: GPTConfig) -> dict[str, Any]:
        return {"attention_bias": False, "use_sliding_window": False, "sliding_window": None,
                "max_window_layers": config.n_layers}


class ArceeAdapter(LlamaAdapter):
    """ArceeForCausalLM (Arcee's AFM): Llama's architecture with a non-gated MLP, down(act(up(x))),
    whose activation is hidden_act: squared ReLU ("relu2", So et al. 2021, Primer), the MLP of
    scratchllm's small-budget recipe, or GELU's tanh form. transformers ships it (no remote code) and
    llama.cpp runs it (its "arcee" architecture, relu2 only)."""

    model_type = "arcee"
    family = "Arcee"
    architecture = "ArceeForCausalLM"
    activations = {"relu2": "relu2", "gelu_pytorch_tanh": "gelu"}
    defaults = dict(vocab_size=32000, hidden_size=2560, intermediate_size=18432, num_hidden_layers=32,
                    num_attention_heads=32, max_position_embeddings=4096, rms_norm_eps=1e-5, head_dim=None,
                    hidden_act="relu2")
