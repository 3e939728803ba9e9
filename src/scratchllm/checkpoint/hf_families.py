"""Hugging Face model families: one adapter per family turns a config.json and its tensor names into
ours (`config_from_hf`, `from_hf`) and back (`config_to_hf`, `to_hf`).

GPT-2 (`GPT2LMHeadModel`; its linear layers are `Conv1D` modules whose weight is (in, out), the
transpose of `nn.Linear`'s (out, in), so import and export transpose those four matrices per block),
Llama (`LlamaForCausalLM`, also SmolLM2's: RMSNorm, rotary positions with Llama 3's scaling, SwiGLU,
grouped-query attention; q/k/v projections concatenated into our fused qkv), Qwen2
(`Qwen2ForCausalLM`, Qwen2.5's: biases on q/k/v only) and Qwen3 (`Qwen3ForCausalLM`: query/key norms,
wider heads). On export the family is read from the model's switches (`adapter_for_model`). Settings
our model lacks (sliding-window attention, other rotary scalings, biases it cannot place) are one-line
errors naming them. Reading directories and downloading from the hub live in hf.py.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

from scratchllm.errors import ScratchLLMError
from scratchllm.models.config import GPTConfig


_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string", list: "a list"}


def check_hf_types(hf_config: Mapping[str, Any], types: Mapping[str, type], source: str) -> None:
    """Raise a one-line error for the first field of `types` whose value in config.json has another JSON
    type, as transformers' config classes refuse it: "false" is not false, 1 is not true, 64.0 is not
    an integer (null means the default, and an integer is also a number)."""
    for name, kind in types.items():
        value = hf_config.get(name)
        if value is None:
            continue
        ok = isinstance(value, (int, float)) if kind is float else isinstance(value, kind)
        if not ok or (kind is not bool and isinstance(value, bool)):
            shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
            raise ScratchLLMError(f"{source}: field {name!r} is {shown} ({type(value).__name__}); expected "
                                  f"{_TYPE_NAMES[kind]}")


class HFAdapter:
    """What one Hugging Face model family needs: config.json <-> GPTConfig, tensor names <-> ours,
    and which of our configs the family can hold (`mismatches`, used to pick the family on export)."""

    model_type: str = ""  # config.json's "model_type"
    family: str = ""  # for messages
    architecture: str = ""  # config.json's "architectures"
    field_types: dict[str, type] = {}  # the config.json fields this family reads, and their JSON types

    def config_from_hf(self, hf_config: Mapping[str, Any], source: str = "config.json") -> GPTConfig:
        raise NotImplementedError

    def from_hf(self, sd: Mapping[str, torch.Tensor], config: GPTConfig, source: str = "weights") -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def mismatches(self, config: GPTConfig) -> list[str]:
        """What `config` would need to change to be a model of this family (empty: it is one)."""
        raise NotImplementedError

    def config_to_hf(self, config: GPTConfig, dtype: torch.dtype = torch.float32, eos_id: int | None = None,
                     bos_id: int | None = None) -> dict[str, Any]:
        raise NotImplementedError

    def to_hf(self, sd: Mapping[str, torch.Tensor], config: GPTConfig) -> dict[str, torch.Tensor]:
        raise NotImplementedError


# --------------------------------------------------------------------------------------------------
# GPT-2

# Per-block module names, Hugging Face -> ours.
_HF_BLOCK = {
    "ln_1": "norm1", "attn.c_attn": "attn.qkv", "attn.c_proj": "attn.proj",
    "ln_2": "norm2", "mlp.c_fc": "mlp.fc", "mlp.c_proj": "mlp.proj",
}

# Conv1D modules store weight as (in, out): transpose to nn.Linear's (out, in).
_HF_CONV1D = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")


_HF_TOP = {"wte.weight": "tok_emb.weight", "wpe.weight": "pos_emb.weight",
           "ln_f.weight": "final_norm.weight", "ln_f.bias": "final_norm.bias"}


_GPT2_GELU = ("gelu_new", "gelu_pytorch_tanh")  # both are the tanh approximation we use


class GPT2Adapter(HFAdapter):
    """GPT2LMHeadModel (OpenAI's GPT-2 and models exported from scratchllm)."""

    model_type = "gpt2"
    family = "GPT-2"
    architecture = "GPT2LMHeadModel"
    field_types = {**dict.fromkeys(("vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "n_inner"), int),
                   **dict.fromkeys(("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn", "scale_attn_weights",
                                    "add_cross_attention", "tie_word_embeddings"), bool),
                   "layer_norm_epsilon": float, "activation_function": str}

    def config_from_hf(self, hf_config: Mapping[str, Any], source: str = "config.json") -> GPTConfig:
        """GPTConfig of a Hugging Face GPT-2 config.json; settings our model lacks are errors.

        Dropout is set to 0: it is a training choice (fine-tuning recipes set their own), and the
        pretrained weights are used for inference first.
        """
        h = hf_config
        check_hf_types(h, self.field_types, source)
        unsupported = [
            (h.get("activation_function", "gelu_new") not in _GPT2_GELU,
             f"activation_function {h.get('activation_function')!r} (only gelu_new)"),
            (bool(h.get("scale_attn_by_inverse_layer_idx", False)), "scale_attn_by_inverse_layer_idx true"),
            (bool(h.get("reorder_and_upcast_attn", False)), "reorder_and_upcast_attn true"),
            (not h.get("scale_attn_weights", True), "scale_attn_weights false"),
            (bool(h.get("add_cross_attention", False)), "add_cross_attention true"),
        ]
        for bad, what in unsupported:
            if bad:
                raise ScratchLLMError(f"{source}: unsupported GPT-2 setting {what}")
        n_embd = h.get("n_embd", 768)
        n_inner = h.get("n_inner")
        if n_inner is None:
            mlp_ratio = 4
        elif isinstance(n_inner, int) and isinstance(n_embd, int) and n_embd > 0 and n_inner % n_embd == 0:
            mlp_ratio = n_inner // n_embd
        else:
            raise ScratchLLMError(f"{source}: n_inner {n_inner!r} is not a multiple of n_embd {n_embd!r}")
        try:
            return GPTConfig(
                vocab_size=h.get("vocab_size", 50257),
                context_length=h.get("n_positions", 1024),
                emb_dim=n_embd,
                n_layers=h.get("n_layer", 12),
                n_heads=h.get("n_head", 12),
                drop_rate=0.0,
                qkv_bias=True,
                tie_embeddings=h.get("tie_word_embeddings", True),
                mlp_ratio=mlp_ratio,
                layer_norm_eps=h.get("layer_norm_epsilon", 1e-5),  # checked by GPTConfig (no float("x") traceback)
            )
        except ScratchLLMError as exc:
            raise ScratchLLMError(f"{source}: {exc}") from None

    def from_hf(self, sd: Mapping[str, torch.Tensor], config: GPTConfig, source: str = "weights") -> dict[str, torch.Tensor]:
        """Hugging Face GPT-2 tensor names and layouts -> ours.

        Accepts GPT2LMHeadModel's names ("transformer.h.0...") and the bare GPT2Model ones ("h.0...",
        as in OpenAI's hub files); drops the causal-mask buffers attn.bias / attn.masked_bias; keeps
        lm_head.weight only for an untied head (a tied one is wte.weight again).
        """
        out: dict[str, torch.Tensor] = {}
        for name, tensor in sd.items():
            key = name.removeprefix("transformer.")
            if re.fullmatch(r"h\.\d+\.attn\.(bias|masked_bias)", key):
                continue
            if key == "lm_head.weight":
                if not config.tie_embeddings:
                    out["out_head.weight"] = tensor
                continue
            if key in _HF_TOP:
                out[_HF_TOP[key]] = tensor
                continue
            m = re.fullmatch(r"h\.(\d+)\.(.+)\.(weight|bias)", key)
            if m is None or m.group(2) not in _HF_BLOCK:
                raise ScratchLLMError(f"{source}: unexpected tensor {name!r} for a GPT-2 model")
            layer, module, param = m.groups()
            if param == "weight" and module in _HF_CONV1D:
                if tensor.ndim != 2:
                    raise ScratchLLMError(f"{source}: tensor {name!r} has shape {tuple(tensor.shape)}, expected a matrix")
                tensor = tensor.t().contiguous()  # (in, out) -> (out, in)
            out[f"blocks.{layer}.{_HF_BLOCK[module]}.{param}"] = tensor
        return out

    def mismatches(self, config: GPTConfig) -> list[str]:
        wanted = {"norm": "layernorm", "position": "learned", "mlp": "gelu", "causal": True, "bias": True,
                  "qk_norm": False}
        found = [f"{k} {v!r} (got {getattr(config, k)!r})" for k, v in wanted.items() if getattr(config, k) != v]
        if config.kv_heads != config.n_heads:
            found.append(f"n_kv_heads equal to n_heads (got {config.kv_heads} and {config.n_heads})")
        if config.n_heads * config.head_dim != config.emb_dim:
            found.append(f"head_dim emb_dim / n_heads (got {config.head_dim})")
        return found

    def config_to_hf(self, config: GPTConfig, dtype: torch.dtype = torch.float32, eos_id: int | None = 50256,
                     bos_id: int | None = None) -> dict[str, Any]:
        """A Hugging Face GPT-2 config.json for `config` (GPT2LMHeadModel, gelu_new); GPT-2 begins
        with its end-of-text token, so bos_id is eos_id unless given."""
        problems = self.mismatches(config)
        if problems:
            raise ScratchLLMError(f"export: not a GPT-2 model; it needs {', '.join(problems)}")
        if eos_id is not None and eos_id >= config.vocab_size:
            eos_id = None  # a model smaller than the tokenizer; transformers rejects an id out of range
        return {
            "architectures": ["GPT2LMHeadModel"],
            "model_type": "gpt2",
            "vocab_size": config.vocab_size,
            "n_positions": config.context_length,
            "n_ctx": config.context_length,  # read by transformers < 4.x; harmless later
            "n_embd": config.emb_dim,
            "n_layer": config.n_layers,
            "n_head": config.n_heads,
            "n_inner": None if config.hidden_dim == 4 * config.emb_dim else config.hidden_dim,
            "activation_function": "gelu_new",
            "resid_pdrop": config.drop_rate,
            "embd_pdrop": config.drop_rate,
            "attn_pdrop": config.drop_rate,
            "layer_norm_epsilon": config.layer_norm_eps,
            "initializer_range": 0.02,
            "scale_attn_weights": True,
            "scale_attn_by_inverse_layer_idx": False,
            "reorder_and_upcast_attn": False,
            "add_cross_attention": False,
            "use_cache": True,
            "bos_token_id": eos_id if bos_id is None else bos_id,
            "eos_token_id": eos_id,
            "tie_word_embeddings": config.tie_embeddings,
            "dtype": str(dtype).removeprefix("torch."),
            "torch_dtype": str(dtype).removeprefix("torch."),  # the key's name before transformers 5
        }

    def to_hf(self, sd: Mapping[str, torch.Tensor], config: GPTConfig) -> dict[str, torch.Tensor]:
        """Our tensor names and layouts -> GPT2LMHeadModel's (Conv1D weights transposed to (in, out))."""
        top = {ours: hf for hf, ours in _HF_TOP.items()}
        block = {ours: hf for hf, ours in _HF_BLOCK.items()}
        out: dict[str, torch.Tensor] = {}
        for name, tensor in sd.items():
            tensor = tensor.detach().to("cpu")
            if name == "out_head.weight":
                if not config.tie_embeddings:
                    out["lm_head.weight"] = tensor.contiguous()
                continue
            if name in top:
                out[f"transformer.{top[name]}"] = tensor.contiguous()
                continue
            m = re.fullmatch(r"blocks\.(\d+)\.(.+)\.(weight|bias)", name)
            if m is None or m.group(2) not in block:
                raise ScratchLLMError(f"export: tensor {name!r} has no GPT-2 counterpart")
            layer, module, param = m.groups()
            hf_module = block[module]
            if param == "weight" and hf_module in _HF_CONV1D:
                tensor = tensor.t()
            out[f"transformer.h.{layer}.{hf_module}.{param}"] = tensor.contiguous()
        if not config.qkv_bias:  # GPT-2 always has a q/k/v bias: a zero one is the same function
            for i in range(config.n_layers):
                w = out[f"transformer.h.{i}.attn.c_attn.weight"]
                out[f"transformer.h.{i}.attn.c_attn.bias"] = torch.zeros(w.shape[1], dtype=w.dtype)
        return out


# --------------------------------------------------------------------------------------------------
# The Llama family: Llama 2/3.x and SmolLM2 (LlamaForCausalLM), Qwen2/2.5 (Qwen2ForCausalLM), Qwen3

# Per-block module names, Hugging Face -> ours (q/k/v projections are fused into our attn.qkv).
_LLAMA_BLOCK = {
    "self_attn.o_proj": "attn.proj", "mlp.gate_proj": "mlp.gate", "mlp.up_proj": "mlp.fc",
    "mlp.down_proj": "mlp.proj", "input_layernorm": "norm1", "post_attention_layernorm": "norm2",
    "self_attn.q_norm": "attn.q_norm", "self_attn.k_norm": "attn.k_norm",
}
_LLAMA_TOP = {"model.embed_tokens.weight": "tok_emb.weight", "model.norm.weight": "final_norm.weight"}


class LlamaAdapter(HFAdapter):
    """LlamaForCausalLM: RMSNorm, rotary positions (optionally with Llama 3's scaling), SwiGLU,
    grouped-query attention; biases on all attention projections and the MLP, or on none.

    Qwen2 and Qwen3 are this architecture with other switches, so they subclass it and change only
    the config: the tensor names are the same three families over.
    """

    model_type = "llama"
    family = "Llama"
    architecture = "LlamaForCausalLM"
    qk_norm = False  # Qwen3 normalises queries and keys
    field_types = {**dict.fromkeys(("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                    "num_attention_heads", "num_key_value_heads", "max_position_embeddings", "head_dim"),
                                   int),
                   **dict.fromkeys(("attention_bias", "mlp_bias", "tie_word_embeddings", "use_sliding_window", "use_mrope"),
                                   bool),
                   **dict.fromkeys(("rms_norm_eps", "rope_theta", "partial_rotary_factor"), float),
                   "hidden_act": str, "layer_types": list}
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
            (h.get("hidden_act", "silu") != "silu", f"hidden_act {h.get('hidden_act')!r} (only silu)"),
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
                mlp="swiglu",
                rope_theta=theta,
                rope_scaling=scaling,
                qk_norm=self.qk_norm,
            )
        except ScratchLLMError as exc:
            raise ScratchLLMError(f"{source}: {exc}") from None

    # -- GPTConfig -> config.json: which of our models this family can hold, and how

    def mismatches(self, config: GPTConfig) -> list[str]:
        """What `config` would need to change to be a model of this family (empty: it is one)."""
        wanted = {"norm": "rmsnorm", "position": "rope", "mlp": "swiglu", "causal": True, "qk_norm": self.qk_norm}
        found = [f"{k} {v!r} (got {getattr(config, k)!r})" for k, v in wanted.items() if getattr(config, k) != v]
        return found + self.bias_mismatches(config)

    def bias_mismatches(self, config: GPTConfig) -> list[str]:
        if config.qkv_bias != config.bias:
            return [f"qkv_bias equal to bias (got qkv_bias {config.qkv_bias}, bias {config.bias})"]
        return []

    def biases_to_hf(self, config: GPTConfig) -> dict[str, Any]:
        return {"attention_bias": config.bias, "mlp_bias": config.bias}

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
        return {
            "architectures": [self.architecture],
            "model_type": self.model_type,
            "vocab_size": config.vocab_size,
            "hidden_size": config.emb_dim,
            "intermediate_size": config.hidden_dim,
            "num_hidden_layers": config.n_layers,
            "num_attention_heads": config.n_heads,
            "num_key_value_heads": config.kv_heads,
            "head_dim": config.head_dim,
            "hidden_act": "silu",
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
        }

    # -- tensors

    def from_hf(self, sd: Mapping[str, torch.Tensor], config: GPTConfig, source: str = "weights") -> dict[str, torch.Tensor]:
        """Hugging Face names -> ours; q/k/v projections are concatenated into our fused qkv."""
        out: dict[str, torch.Tensor] = {}
        qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
        for name, tensor in sd.items():
            key = name if name.startswith(("model.", "lm_head.")) else f"model.{name}"  # bare LlamaModel names too
            if key.endswith("rotary_emb.inv_freq"):
                continue  # recomputed from the rotary settings
            if key in _LLAMA_TOP:
                out[_LLAMA_TOP[key]] = tensor
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
            elif module in _LLAMA_BLOCK:
                out[f"blocks.{layer}.{_LLAMA_BLOCK[module]}.{param}"] = tensor
            else:
                raise ScratchLLMError(f"{source}: unexpected tensor {name!r} for a {self.family} model")
        for (layer, param), parts in qkv.items():
            if set(parts) != {"q", "k", "v"}:
                raise ScratchLLMError(f"{source}: layer {layer} lacks one of q_proj/k_proj/v_proj {param}")
            out[f"blocks.{layer}.attn.qkv.{param}"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
        return out

    def to_hf(self, sd: Mapping[str, torch.Tensor], config: GPTConfig) -> dict[str, torch.Tensor]:
        """Our names -> Hugging Face's; our fused qkv is split into q_proj, k_proj, v_proj."""
        top = {ours: hf for hf, ours in _LLAMA_TOP.items()}
        block = {ours: hf for hf, ours in _LLAMA_BLOCK.items()}
        sizes = [config.n_heads * config.head_dim, config.kv_heads * config.head_dim, config.kv_heads * config.head_dim]
        out: dict[str, torch.Tensor] = {}
        for name, tensor in sd.items():
            tensor = tensor.detach().to("cpu")
            if name == "out_head.weight":
                if not config.tie_embeddings:
                    out["lm_head.weight"] = tensor.contiguous()
                continue
            if name in top:
                out[top[name]] = tensor.contiguous()
                continue
            m = re.fullmatch(r"blocks\.(\d+)\.(.+)\.(weight|bias)", name)
            if m is None or (m.group(2) not in block and m.group(2) != "attn.qkv"):
                raise ScratchLLMError(f"export: tensor {name!r} has no {self.family} counterpart")
            layer, module, param = m.groups()
            if module == "attn.qkv":
                for part, piece in zip("qkv", tensor.split(sizes, dim=0)):  # (q_dim | kv_dim | kv_dim, ...)
                    out[f"model.layers.{layer}.self_attn.{part}_proj.{param}"] = piece.contiguous()
            else:
                out[f"model.layers.{layer}.{block[module]}.{param}"] = tensor.contiguous()
        return out


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


ADAPTERS: dict[str, HFAdapter] = {a.model_type: a for a in (GPT2Adapter(), LlamaAdapter(), Qwen2Adapter(), Qwen3Adapter())}


def adapter_for_model(config: GPTConfig) -> HFAdapter:
    """The family that holds a model of `config` when it is exported, read from its switches: learned
    positions are GPT-2; rotary ones with qk_norm Qwen3, with biases on q/k/v only Qwen2, with biases
    everywhere or nowhere Llama.
    Nothing needs recording: each family's switches differ, so import then export gives the family
    back. A model no family holds is a one-line error naming what the closest one needs."""
    candidates = [ADAPTERS[t] for t in ("llama", "qwen2", "qwen3", "gpt2")]
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
