"""Hugging Face directories: one adapter per model family (`from_hf` / `to_hf`), reading and
downloading Hugging Face checkpoints, and their tokenizers.

An adapter knows one family's config.json fields and tensor names and turns them into ours (and
back): GPT-2 (`GPT2LMHeadModel`; its linear layers are `Conv1D` modules whose weight is (in, out),
the transpose of `nn.Linear`'s (out, in), so import and export transpose those four matrices per
block) and Llama (`LlamaForCausalLM`: RMSNorm, rotary positions, SwiGLU, grouped-query attention;
q/k/v projections concatenated into our fused qkv). A hub name ("gpt2", "gpt2-medium", ...) is
downloaded once into scratchllm's cache with size and SHA-256 checks.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from scratchllm.checkpoint.model_dir import CONFIG_FILE, gpt_from_state_dict, read_safetensors
from scratchllm.core.download import cache_dir, download_file
from scratchllm.core.files import read_json
from scratchllm.errors import ScratchLLMError
from scratchllm.models.config import GPTConfig
from scratchllm.models.gpt import GPT
from scratchllm.tokenizer import Tokenizer

# OpenAI's four GPT-2 releases, as named on the Hugging Face hub (Radford et al. 2019, table 2).
GPT2_NAMES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
_GPT2_ALIASES = {"gpt2-small": "gpt2", **{f"openai-community/{n}": n for n in GPT2_NAMES}}
HF_URL = "https://huggingface.co/{name}/resolve/main/{file}"
HF_FILES = ("config.json", "model.safetensors")


class HFAdapter:
    """What one Hugging Face model family needs: config.json <-> GPTConfig, tensor names <-> ours."""

    model_type: str = ""

    def config_from_hf(self, hf_config: Mapping[str, Any], source: str = "config.json") -> GPTConfig:
        raise NotImplementedError

    def from_hf(self, sd: Mapping[str, torch.Tensor], config: GPTConfig, source: str = "weights") -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def config_to_hf(self, config: GPTConfig, dtype: torch.dtype = torch.float32, eos_id: int | None = None) -> dict[str, Any]:
        raise ScratchLLMError(f"export: writing Hugging Face {self.model_type} directories is not supported")

    def to_hf(self, sd: Mapping[str, torch.Tensor], config: GPTConfig) -> dict[str, torch.Tensor]:
        raise ScratchLLMError(f"export: writing Hugging Face {self.model_type} directories is not supported")


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

    def config_from_hf(self, hf_config: Mapping[str, Any], source: str = "config.json") -> GPTConfig:
        """GPTConfig of a Hugging Face GPT-2 config.json; settings our model lacks are errors.

        Dropout is set to 0: it is a training choice (fine-tuning recipes set their own), and the
        pretrained weights are used for inference first.
        """
        h = hf_config
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
                tie_embeddings=bool(h.get("tie_word_embeddings", True)),
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

    def config_to_hf(self, config: GPTConfig, dtype: torch.dtype = torch.float32, eos_id: int | None = 50256) -> dict[str, Any]:
        """A Hugging Face GPT-2 config.json for `config` (GPT2LMHeadModel, gelu_new)."""
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
            "n_inner": None if config.mlp_ratio == 4 else config.mlp_ratio * config.emb_dim,
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
            "bos_token_id": eos_id,
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
# Llama

_LLAMA_BLOCK = {
    "self_attn.o_proj": "attn.proj", "mlp.gate_proj": "mlp.gate", "mlp.up_proj": "mlp.fc",
    "mlp.down_proj": "mlp.proj", "input_layernorm": "norm1", "post_attention_layernorm": "norm2",
}



class LlamaAdapter(HFAdapter):
    """LlamaForCausalLM: RMSNorm, rotary positions, SwiGLU, grouped-query attention."""

    model_type = "llama"

    def config_from_hf(self, hf_config: Mapping[str, Any], source: str = "config.json") -> GPTConfig:
        """GPTConfig of a Hugging Face Llama config.json (LlamaForCausalLM): RMSNorm, rotary positions,
        SwiGLU, grouped-query attention."""
        h = hf_config
        rope = h.get("rope_parameters") or {}
        theta = rope.get("rope_theta", h.get("rope_theta", 10000.0))
        hidden, heads = h.get("hidden_size", 4096), h.get("num_attention_heads", 32)
        unsupported = [
            (h.get("hidden_act", "silu") != "silu", f"hidden_act {h.get('hidden_act')!r} (only silu)"),
            (rope.get("rope_type", "default") != "default" or h.get("rope_scaling"), "rope scaling"),
            (bool(h.get("attention_bias")) != bool(h.get("mlp_bias")), "attention_bias different from mlp_bias"),
            (h.get("head_dim") not in (None, hidden // max(heads, 1)), f"head_dim {h.get('head_dim')!r} != hidden_size / heads"),
        ]
        for bad, what in unsupported:
            if bad:
                raise ScratchLLMError(f"{source}: unsupported Llama setting {what}")
        bias = bool(h.get("attention_bias", False))
        try:
            return GPTConfig(
                vocab_size=h.get("vocab_size", 32000),
                context_length=h.get("max_position_embeddings", 2048),
                emb_dim=hidden,
                n_layers=h.get("num_hidden_layers", 32),
                n_heads=heads,
                n_kv_heads=h.get("num_key_value_heads") or heads,
                mlp_hidden_dim=h.get("intermediate_size", 11008),
                drop_rate=0.0,
                qkv_bias=bias,
                bias=bias,
                tie_embeddings=bool(h.get("tie_word_embeddings", False)),
                layer_norm_eps=float(h.get("rms_norm_eps", 1e-6)),
                norm="rmsnorm",
                position="rope",
                mlp="swiglu",
                rope_theta=float(theta),
            )
        except ScratchLLMError as exc:
            raise ScratchLLMError(f"{source}: {exc}") from None

    def from_hf(self, sd: Mapping[str, torch.Tensor], config: GPTConfig, source: str = "weights") -> dict[str, torch.Tensor]:
        """Hugging Face Llama names -> ours; q/k/v projections are concatenated into our fused qkv."""
        out: dict[str, torch.Tensor] = {}
        qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
        for name, tensor in sd.items():
            key = name.removeprefix("model.")
            if key.endswith("rotary_emb.inv_freq"):
                continue  # recomputed from rope_theta
            if key == "embed_tokens.weight":
                out["tok_emb.weight"] = tensor
            elif key == "norm.weight":
                out["final_norm.weight"] = tensor
            elif key == "lm_head.weight":
                if not config.tie_embeddings:
                    out["out_head.weight"] = tensor
            else:
                m = re.fullmatch(r"layers\.(\d+)\.(.+)\.(weight|bias)", key)
                if m is None:
                    raise ScratchLLMError(f"{source}: unexpected tensor {name!r} for a Llama model")
                layer, module, param = m.groups()
                if module in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
                    qkv.setdefault((layer, param), {})[module[-6]] = tensor
                elif module in _LLAMA_BLOCK:
                    out[f"blocks.{layer}.{_LLAMA_BLOCK[module]}.{param}"] = tensor
                else:
                    raise ScratchLLMError(f"{source}: unexpected tensor {name!r} for a Llama model")
        for (layer, param), parts in qkv.items():
            if set(parts) != {"q", "k", "v"}:
                raise ScratchLLMError(f"{source}: layer {layer} lacks one of q_proj/k_proj/v_proj {param}")
            out[f"blocks.{layer}.attn.qkv.{param}"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
        return out


ADAPTERS: dict[str, HFAdapter] = {a.model_type: a for a in (GPT2Adapter(), LlamaAdapter())}


def adapter_for(hf_config: Mapping[str, Any], source: str = "config.json") -> HFAdapter:
    """The adapter of a Hugging Face config.json's model_type (a one-line error for other families)."""
    model_type = hf_config.get("model_type")
    if model_type not in ADAPTERS:
        known = ", ".join(map(repr, ADAPTERS))
        raise ScratchLLMError(f"{source}: model_type is {model_type!r}; only {known} models can be imported")
    return ADAPTERS[model_type]


def config_from_hf(hf_config: Mapping[str, Any], source: str = "config.json") -> GPTConfig:
    """GPTConfig of any supported Hugging Face config.json; settings our model lacks are errors."""
    return adapter_for(hf_config, source).config_from_hf(hf_config, source)


# --------------------------------------------------------------------------------------------------
# Reading Hugging Face directories


def read_torch_bin(path: Path) -> dict[str, torch.Tensor]:
    """A PyTorch pickle of tensors. weights_only=True: unpickling may not run arbitrary code."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ScratchLLMError(f"{path}: cannot read PyTorch weights ({reason})") from None
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise ScratchLLMError(f"{path}: expected a dict of tensors (a state dict)")
    return data


def read_hf_dir(directory: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, torch.Tensor], Path]:
    """(config.json, state dict, weights path) of a Hugging Face directory: model.safetensors, else
    pytorch_model.bin (each possibly sharded with an .index.json)."""
    d = Path(directory)
    config = read_json(d / CONFIG_FILE)
    for file, reader in (("model.safetensors", read_safetensors), ("pytorch_model.bin", read_torch_bin)):
        if (d / file).is_file():
            return config, reader(d / file), d / file
        index = d / f"{file}.index.json"
        if index.is_file():
            weight_map = read_json(index).get("weight_map")
            if not isinstance(weight_map, dict):
                raise ScratchLLMError(f"{index}: field 'weight_map' must be an object")
            state: dict[str, torch.Tensor] = {}
            for shard in sorted(set(weight_map.values())):
                if Path(shard).name != shard:
                    raise ScratchLLMError(f"{index}: shard {shard!r} is not a file name in {d}")
                state.update(reader(d / shard))
            return config, state, index
    raise ScratchLLMError(f"{d}: no model.safetensors or pytorch_model.bin (Hugging Face weights)")



def load_hf(directory: str | os.PathLike[str], device: str | torch.device = "cpu",
            dtype: str | torch.dtype | None = None) -> GPT:
    """The GPT of a Hugging Face directory of a supported family, in eval mode."""
    d = Path(directory)
    hf_config, hf_state, weights = read_hf_dir(d)
    adapter = adapter_for(hf_config, str(d / CONFIG_FILE))
    config = adapter.config_from_hf(hf_config, str(d / CONFIG_FILE))
    state = adapter.from_hf(hf_state, config, str(weights))
    return gpt_from_state_dict(config, state, str(weights), str(d / CONFIG_FILE), device, dtype)


def hf_tokenizer(directory: str | os.PathLike[str]) -> Tokenizer:
    """The tokenizer of a Hugging Face directory: GPT-2's for the GPT-2 family."""
    return Tokenizer.gpt2()


# --------------------------------------------------------------------------------------------------
# Hub names, downloaded once


def gpt2_name(name: str) -> str | None:
    name = _GPT2_ALIASES.get(name, name)
    return name if name in GPT2_NAMES else None


def hub_dir(name: str, progress: bool = True) -> Path:
    """The Hugging Face directory (config.json + model.safetensors) of a hub name, downloaded into
    `cache_dir()/hf/NAME` ($SCRATCHLLM_CACHE, else ~/.cache/scratchllm) the first time and read
    from there afterwards."""
    gpt2 = gpt2_name(name)
    if gpt2 is None:
        if os.sep in name or name.startswith("."):
            raise ScratchLLMError(f"{Path(name).expanduser()}: no such directory")
        raise ScratchLLMError(f"{name!r}: no such model directory, and not a GPT-2 name (one of {', '.join(GPT2_NAMES)})")
    directory = cache_dir() / "hf" / gpt2
    for file in HF_FILES:
        if not (directory / file).is_file():
            url = HF_URL.format(name=gpt2, file=file)
            try:
                download_file(url, directory / file, progress=progress)
            except ScratchLLMError as exc:
                raise ScratchLLMError(
                    f"{exc}; without network, put {', '.join(HF_FILES)} of {gpt2} in {directory} "
                    "or pass a local Hugging Face directory"
                ) from None
    return directory
