"""GPT-2 (`GPT2LMHeadModel`) as a Hugging Face family: config.json and tensor names to ours and back.

Its linear layers are `Conv1D` modules whose weight is (in, out), the transpose of `nn.Linear`'s
(out, in), so import and export transpose those four matrices per block. On export it also holds the
GPT-2-shaped models that lack a part it has: no biases (zero ones are the same function), fixed
sinusoidal positions (the table becomes its learned one), grouped-query attention (each key/value
head repeated for the query heads that share it) and the squared-ReLU MLP (its `activation_function`
"relu2").
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

from scratchllm.checkpoint.hf_adapter import HFAdapter, check_hf_types, split_for_export, zero_biases
from scratchllm.errors import ScratchLLMError
from scratchllm.models.config import GPTConfig
from scratchllm.models.gpt import sinusoidal_table

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
# activation_function -> our mlp
_GPT2_ACTIVATIONS = {**dict.fromkeys(_GPT2_GELU, "gelu"), "relu2": "relu2"}


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
            (h.get("activation_function", "gelu_new") not in _GPT2_ACTIVATIONS,
             f"activation_function {h.get('activation_function')!r} (only gelu_new and relu2)"),
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
                mlp=_GPT2_ACTIVATIONS[h.get("activation_function", "gelu_new")],
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
        """What `config` would need to change to be a GPT-2 model (empty: it is one). Missing biases,
        fixed sinusoidal positions and grouped-query attention are written in GPT-2's form (`to_hf`)."""
        found = []
        if config.norm != "layernorm":
            found.append(f"norm 'layernorm' (got {config.norm!r})")
        if config.position not in ("learned", "sinusoidal"):
            found.append(f"position 'learned' or 'sinusoidal' (got {config.position!r})")
        if config.mlp not in ("gelu", "relu2"):
            found.append(f"mlp 'gelu' or 'relu2' (got {config.mlp!r})")
        if not config.causal:
            found.append("causal True (got False)")
        if config.qk_norm:
            found.append("qk_norm False (got True)")
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
            "activation_function": "relu2" if config.mlp == "relu2" else "gelu_new",
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
        """Our tensor names and layouts -> GPT2LMHeadModel's (Conv1D weights transposed to (in, out)).
        A model without biases gets zero ones, fixed sinusoidal positions become the learned table,
        and under grouped-query attention each key/value head is repeated for its query heads."""
        top = {ours: f"transformer.{hf}" for hf, ours in _HF_TOP.items()}
        block = {ours: hf for hf, ours in _HF_BLOCK.items()}
        C, H, K, D = config.emb_dim, config.n_heads, config.kv_heads, config.head_dim
        out, block_tensors = split_for_export(sd, config, top, block, "GPT-2")
        for layer, module, param, tensor in block_tensors:
            if module == "attn.qkv" and K != H:  # (H*D | K*D | K*D, ...) -> (3 * H*D, ...)
                q, k, v = tensor.split([H * D, K * D, K * D], dim=0)
                k, v = (x.unflatten(0, (K, D)).repeat_interleave(H // K, dim=0).flatten(0, 1) for x in (k, v))
                tensor = torch.cat([q, k, v], dim=0)
            hf_module = block[module]
            if param == "weight" and hf_module in _HF_CONV1D:
                tensor = tensor.t()
            out[f"transformer.h.{layer}.{hf_module}.{param}"] = tensor.contiguous()
        dtype = out["transformer.wte.weight"].dtype
        if config.position == "sinusoidal":
            out["transformer.wpe.weight"] = sinusoidal_table(config.context_length, C).to(dtype)
        biases = {"transformer.ln_f.bias": C}
        for i in range(config.n_layers):  # GPT-2 has every bias: a zero one is the same function
            biases.update({f"transformer.h.{i}.ln_1.bias": C, f"transformer.h.{i}.ln_2.bias": C,
                           f"transformer.h.{i}.attn.c_attn.bias": 3 * C, f"transformer.h.{i}.attn.c_proj.bias": C,
                           f"transformer.h.{i}.mlp.c_fc.bias": config.hidden_dim, f"transformer.h.{i}.mlp.c_proj.bias": C})
        zero_biases(out, biases, dtype)
        return out
