"""GGUF files: a scratchllm decoder as the one file llama.cpp runs (and Ollama, LM Studio and every
other GGUF runtime), written with the `gguf` package, llama.cpp's own writer (`pip install
'scratchllm[gguf]'`).

`save_gguf(model, path, tokenizer)` writes a model object (as `save_model` writes a directory);
`export_gguf(model_dir, path)` is `scratchllm export-gguf`: anything `load` takes, refused in one line
when its kind has no GGUF form (checkpoint/kinds.py: an encoder, a classifier, an encoder-decoder, a
model with unmerged LoRA adapters). The file holds

- the architecture llama.cpp knows the model as, read from its switches through the Hugging Face
  family that holds it (hf_families.py): GPT-2 -> "gpt2" (GELU only), Llama/SmolLM2 -> "llama",
  Qwen2 -> "qwen2", Qwen3 -> "qwen3", Arcee (the demo recipe's squared-ReLU MLP) -> "arcee",
  Starcoder2 -> "starcoder2" (GELU only), StableLM -> "stablelm";
- its shape and settings (`{arch}.context_length`, `embedding_length`, `block_count`,
  `feed_forward_length`, `attention.head_count(_kv)`, `attention.key_length`, norm epsilon,
  `rope.freq_base`, `rope.dimension_count`; Llama 3's rotary scaling as the `rope_freqs` tensor of
  per-pair divisors);
- the weights under llama.cpp's tensor names, as f32, f16, bf16 or q8_0 (1-D tensors, norms and
  position tables stay f32, as llama.cpp's converter keeps them; a matrix whose rows are not a
  multiple of 32 values cannot be q8_0 and is f16). llama.cpp's "llama" and "arcee" rotate adjacent
  pairs of a head (2i, 2i+1) where we rotate (i, i + D/2), so the rows of the query and key
  projections are reordered per head; the others rotate halves as we do. GPT-2's and Starcoder2's
  blocks in llama.cpp always have biases, and LayerNorms always have one: a model without them gets
  zero ones;
- the tokenizer (gguf_vocab.py: tokens, merges, llama.cpp's pre-tokenizer, BOS/EOS/end-of-turn ids,
  the chat template).

An existing file is kept unless `overwrite`; the file is written beside its target and renamed into
place, so a failed write leaves nothing.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from scratchllm.checkpoint.gguf_vocab import add_vocab, gguf_vocab
from scratchllm.checkpoint.hf_families import adapter_for_model
from scratchllm.checkpoint.kinds import kind_of_config, kind_of_model, registered
from scratchllm.checkpoint.loader import load, locate
from scratchllm.checkpoint.model_dir import read_model_config
from scratchllm.core.files import atomic_path, check_overwrite
from scratchllm.errors import ScratchLLMError
from scratchllm.models.config import GPTConfig
from scratchllm.models.gpt import rope_frequencies, sinusoidal_table
from scratchllm.tokenizer import Tokenizer

GGUF_TYPES = ("f32", "f16", "bf16", "q8_0")

# Hugging Face family (hf_families.py) -> llama.cpp's architecture
ARCHITECTURES = {"gpt2": "gpt2", "llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "arcee": "arcee",
                 "starcoder2": "starcoder2", "stablelm": "stablelm"}
# llama.cpp architectures whose blocks always have biases on the output projection and the MLP
_ALL_BIASES = ("gpt2", "starcoder2")
# llama.cpp architectures that rotate adjacent pairs (its LLAMA_ROPE_TYPE_NORM)
_ROTATE_PAIRS = ("llama", "arcee")


def gguf_architecture(config: GPTConfig) -> str:
    """The llama.cpp architecture that runs a model of `config`, or a one-line error naming the switch
    that llama.cpp's architecture for its family lacks."""
    family = adapter_for_model(config)  # raises when no family holds the model
    arch = ARCHITECTURES.get(family.model_type)
    problems = []
    if arch is None:
        problems.append(f"llama.cpp has no {family.family} architecture")
    elif arch in ("gpt2", "starcoder2") and config.mlp != "gelu":
        problems.append(f"llama.cpp's {arch} has a GELU MLP only (got mlp {config.mlp!r})")
    elif arch == "arcee" and config.mlp != "relu2":
        problems.append(f"llama.cpp's arcee has a squared-ReLU MLP only (got mlp {config.mlp!r})")
    elif arch == "arcee" and config.bias:
        problems.append("llama.cpp's arcee has no output-projection or MLP biases (got bias True)")
    elif arch in ("qwen2", "qwen3") and config.rope_scaling is not None:
        problems.append(f"llama.cpp's {arch} has no Llama 3 rotary scaling (got rope_scaling)")
    elif arch in ("qwen2", "starcoder2") and config.n_heads * config.head_dim != config.emb_dim:
        problems.append(f"llama.cpp's {arch} needs head_dim emb_dim / n_heads (got {config.head_dim})")
    elif arch in ("starcoder2", "stablelm") and config.rope_scaling is not None:
        problems.append(f"llama.cpp's {arch} has no Llama 3 rotary scaling (got rope_scaling)")
    if problems:
        raise ScratchLLMError(f"export-gguf: {family.family} family ({family.architecture}): {problems[0]}; "
                              "export-hf writes it for transformers")
    return arch


# --------------------------------------------------------------------------------------------------
# Tensors


def _pairs_adjacent(w: torch.Tensor, heads: int) -> torch.Tensor:
    """Rows of a query/key projection (heads * D, ...) reordered per head from halves (i, i + D/2)
    to adjacent pairs (2i, 2i + 1): row 2i takes row i, row 2i + 1 takes row i + D/2."""
    shape = w.shape
    return w.reshape(heads, 2, shape[0] // heads // 2, *shape[1:]).transpose(1, 2).reshape(shape)


def gguf_package() -> Any:
    """The `gguf` package (llama.cpp's writer), or a one-line error saying how to install it."""
    try:
        import gguf
    except ImportError:
        raise ScratchLLMError("export-gguf needs the gguf package (llama.cpp's writer): "
                              "pip install 'scratchllm[gguf]'") from None
    return gguf


def _tensor_name(kind: str, block: int | None = None, suffix: str = "weight") -> str:
    gguf = gguf_package()
    return f"{gguf.TENSOR_NAMES[getattr(gguf.MODEL_TENSOR, kind)].format(bid=block)}.{suffix}"


def gguf_tensors(model: nn.Module, arch: str) -> Iterator[tuple[str, torch.Tensor]]:
    """(llama.cpp's tensor name, float32 tensor in our (out, in) layout) for every tensor of `model`."""
    config: GPTConfig = model.config
    sd = {k: v.detach().to("cpu", torch.float32) for k, v in model.state_dict().items()}
    C, H, K, D = config.emb_dim, config.n_heads, config.kv_heads, config.head_dim

    def bias(name: str, size: int) -> torch.Tensor:  # a zero one where the model has none (GPT-2's blocks)
        return sd.get(name, torch.zeros(size))

    yield _tensor_name("TOKEN_EMBD"), sd["tok_emb.weight"]
    if arch == "gpt2":
        table = sd["pos_emb.weight"] if config.position == "learned" else sinusoidal_table(config.context_length, C)
        yield _tensor_name("POS_EMBD"), table
    if config.rope_scaling is not None:  # per pair: how much slower it turns than without the scaling
        plain = rope_frequencies(D, config.rope_theta)
        yield _tensor_name("ROPE_FREQS"), plain / rope_frequencies(D, config.rope_theta, config.rope_scaling)
    for i in range(config.n_layers):
        p = f"blocks.{i}."
        yield _tensor_name("ATTN_NORM", i), sd[p + "norm1.weight"]
        yield _tensor_name("FFN_NORM", i), sd[p + "norm2.weight"]
        if config.norm == "layernorm":
            yield _tensor_name("ATTN_NORM", i, "bias"), bias(p + "norm1.bias", C)
            yield _tensor_name("FFN_NORM", i, "bias"), bias(p + "norm2.bias", C)
        qkv = {"weight": sd[p + "attn.qkv.weight"]}
        if config.qkv_bias or arch == "gpt2":
            qkv["bias"] = bias(p + "attn.qkv.bias", (H + 2 * K) * D)
        for suffix, t in qkv.items():
            if arch == "gpt2":
                yield _tensor_name("ATTN_QKV", i, suffix), t
                continue
            q, k, v = t.split([H * D, K * D, K * D], dim=0)
            if arch in _ROTATE_PAIRS:
                q, k = _pairs_adjacent(q, H), _pairs_adjacent(k, K)
            for kind, part in (("ATTN_Q", q), ("ATTN_K", k), ("ATTN_V", v)):
                yield _tensor_name(kind, i, suffix), part
        if config.qk_norm:
            yield _tensor_name("ATTN_Q_NORM", i), sd[p + "attn.q_norm.weight"]
            yield _tensor_name("ATTN_K_NORM", i), sd[p + "attn.k_norm.weight"]
        yield _tensor_name("ATTN_OUT", i), sd[p + "attn.proj.weight"]
        if config.mlp == "swiglu":
            yield _tensor_name("FFN_GATE", i), sd[p + "mlp.gate.weight"]
        yield _tensor_name("FFN_UP", i), sd[p + "mlp.fc.weight"]
        yield _tensor_name("FFN_DOWN", i), sd[p + "mlp.proj.weight"]
        if config.bias or arch in _ALL_BIASES:
            yield _tensor_name("ATTN_OUT", i, "bias"), bias(p + "attn.proj.bias", C)
            if config.mlp == "swiglu":
                yield _tensor_name("FFN_GATE", i, "bias"), bias(p + "mlp.gate.bias", config.hidden_dim)
            yield _tensor_name("FFN_UP", i, "bias"), bias(p + "mlp.fc.bias", config.hidden_dim)
            yield _tensor_name("FFN_DOWN", i, "bias"), bias(p + "mlp.proj.bias", C)
    yield _tensor_name("OUTPUT_NORM"), sd["final_norm.weight"]
    if config.norm == "layernorm":
        yield _tensor_name("OUTPUT_NORM", suffix="bias"), bias("final_norm.bias", C)
    if not config.tie_embeddings:
        yield _tensor_name("OUTPUT"), sd["out_head.weight"]
    elif arch == "stablelm":  # its llama.cpp graph always reads an output matrix: the embedding again
        yield _tensor_name("OUTPUT"), sd["tok_emb.weight"]


def _encoded(name: str, tensor: torch.Tensor, type: str) -> tuple[np.ndarray, Any]:
    """(the bytes or floats to write, gguf.GGMLQuantizationType) of one tensor in file type `type`."""
    gguf = gguf_package()
    Q = gguf.GGMLQuantizationType
    data = tensor.numpy()
    # norms, biases, position tables and the rotary divisors stay float32 (llama.cpp's kernels expect it)
    if data.ndim < 2 or "norm" in name or name.startswith("position_embd") or type == "f32":
        return data, Q.F32
    qtype = {"f16": Q.F16, "bf16": Q.BF16, "q8_0": Q.Q8_0}[type]
    try:
        return gguf.quants.quantize(data, qtype), qtype
    except gguf.QuantError:  # q8_0 needs rows of a multiple of 32 values
        return gguf.quants.quantize(data, Q.F16), Q.F16


# --------------------------------------------------------------------------------------------------
# Writing


def save_gguf(model: nn.Module, path: str | os.PathLike[str], tokenizer: Tokenizer | None = None,
              type: str = "f32", overwrite: bool = False, name: str | None = None) -> Path:
    """Write `model` (a GPT decoder; its tokenizer, None meaning GPT-2's) as a GGUF file of llama.cpp
    at `path`, its matrices as `type` (f32, f16, bf16 or q8_0). Returns the path."""
    gguf = gguf_package()
    model = getattr(model, "_orig_mod", model)
    kind_of_model(model, "save_gguf").check_export("gguf", "save_gguf")
    if type not in GGUF_TYPES:
        raise ScratchLLMError(f"export-gguf: type {type!r}; expected one of {', '.join(GGUF_TYPES)}")
    path = check_overwrite(path, overwrite, "GGUF file")
    config: GPTConfig = model.config
    arch = gguf_architecture(config)
    tokenizer = tokenizer if tokenizer is not None else Tokenizer.gpt2()
    vocab = gguf_vocab(tokenizer, config.vocab_size)
    tensors = [(n, *_encoded(n, t, type)) for n, t in gguf_tensors(model, arch)]
    size = sum(data.nbytes for _, data, _ in tensors)
    with atomic_path(path, "GGUF file", size=size) as tmp:
        writer = gguf.GGUFWriter(tmp, arch)
        writer.add_name(name or path.stem)
        writer.add_file_type({"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                              "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[type])
        writer.add_context_length(config.context_length)
        writer.add_embedding_length(config.emb_dim)
        writer.add_block_count(config.n_layers)
        writer.add_feed_forward_length(config.hidden_dim)
        writer.add_head_count(config.n_heads)
        writer.add_head_count_kv(config.kv_heads)
        writer.add_key_length(config.head_dim)
        writer.add_value_length(config.head_dim)
        writer.add_vocab_size(config.vocab_size)
        if config.norm == "layernorm":
            writer.add_layer_norm_eps(config.layer_norm_eps)
        else:
            writer.add_layer_norm_rms_eps(config.layer_norm_eps)
        if config.position == "rope":
            writer.add_rope_freq_base(config.rope_theta)
            writer.add_rope_dimension_count(config.head_dim)
        add_vocab(writer, vocab)
        for tensor_name, data, qtype in tensors:
            writer.add_tensor(tensor_name, data, raw_dtype=qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return path


def export_gguf(model_dir: str | os.PathLike[str], out: str | os.PathLike[str], type: str = "f32",
                overwrite: bool = False) -> Path:
    """The function behind `scratchllm export-gguf`: a scratchllm model (directory, run directory or
    anything `load` takes) as a GGUF file at `out` (see `save_gguf`). A kind with no GGUF form is one
    line saying what to do instead; an existing `out` is kept unless `overwrite`."""
    if type not in GGUF_TYPES:
        raise ScratchLLMError(f"export-gguf: type {type!r}; expected one of {', '.join(GGUF_TYPES)}")
    check_overwrite(out, overwrite, "GGUF file")
    where, d = locate(model_dir)
    if where == "scratchllm":  # before loading: an encoder, classifier, seq2seq or LoRA directory
        registered(kind_of_config(read_model_config(d))).check_export("gguf", d)
    model, tokenizer = load(d, kind="gpt", device="cpu", decode=False)
    # general.name: the directory the user named (runs/demo, not its final/)
    return save_gguf(model, out, tokenizer, type=type, overwrite=overwrite, name=Path(model_dir).name or d.name)
