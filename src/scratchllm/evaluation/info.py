"""Model accounting without building the model: parameters, memory and FLOPs per token (`scratchllm info`).

`scratchllm info --model PRESET|config.json|DIR` prints these figures. Counts are computed from the
config alone, so even presets far too large for this machine can be inspected; a test checks the
formulas against a real `GPT` instance.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from scratchllm.checkpoint.kinds import kind_of_config
from scratchllm.checkpoint.loader import read_config
from scratchllm.checkpoint.model_dir import read_model_config, resolve_model_dir
from scratchllm.errors import ScratchLLMError
from scratchllm.models.config import GPTConfig
from scratchllm.models.encoder_decoder import EncoderDecoder
from scratchllm.models.gpt import flops_per_token, parameter_groups
from scratchllm.models.size import parameter_breakdown

BYTES_PER_DTYPE = {"float32": 4, "bfloat16": 2, "float16": 2, "int8": 1}


def _seq2seq_config(spec: str | Path | GPTConfig) -> GPTConfig | None:
    """The config of an encoder-decoder model directory (two stacks, see scratchllm.seq2seq), else None."""
    if isinstance(spec, GPTConfig) or not Path(str(spec)).is_dir():
        return None
    try:
        data = read_model_config(resolve_model_dir(spec))
    except ScratchLLMError:
        return None
    return GPTConfig.from_dict(data["model"]) if kind_of_config(data) == "seq2seq" else None


def _seq2seq_counts(config: GPTConfig) -> tuple[dict[str, int], float]:
    """Parameter groups and forward matmul FLOPs per target token of an encoder-decoder, counted on
    a weightless (meta-device) instance: its encoder, decoder with cross-attention and shared embedding."""
    with torch.device("meta"):
        model = EncoderDecoder(config)
    groups = parameter_groups(model)
    matmul = sum(  # weight matrices; shared tensors are listed once
        p.numel() for name, p in model.named_parameters()
        if p.ndim == 2 and "emb" not in name and "encoder.out_head" not in name
    )
    if config.tie_embeddings:
        matmul += config.vocab_size * config.emb_dim  # the decoder's head is the shared embedding
    # attention scores and weighted sums: encoder self, decoder self and decoder cross, per layer
    forward = 2 * matmul + 3 * 4 * config.n_layers * config.context_length * config.n_heads * config.head_dim
    return groups, float(forward)


def model_info(spec: str | Path | GPTConfig) -> dict[str, Any]:
    seq2seq = _seq2seq_config(spec)
    config = seq2seq or read_config(spec)
    if seq2seq is not None:
        breakdown, forward = _seq2seq_counts(config)
    else:
        breakdown, forward = parameter_breakdown(config), flops_per_token(config, training=False)
    total = sum(breakdown.values())
    kv_per_token = 2 * config.n_layers * config.kv_heads * config.head_dim  # a key and a value per layer
    return {
        "model": str(spec) if not isinstance(spec, GPTConfig) else "config",
        "config": config.to_dict(),
        "parameters": total,
        "non_embedding_parameters": total - breakdown["embeddings"],
        "breakdown": breakdown,
        "weights_bytes": {name: total * size for name, size in BYTES_PER_DTYPE.items()},
        # AdamW training in fp32: weights + gradients + two moment buffers = 16 bytes per parameter.
        "adamw_training_bytes_fp32": 16 * total,
        "kv_cache_bytes_per_token": {name: kv_per_token * size for name, size in BYTES_PER_DTYPE.items()},
        "architecture": "encoder-decoder" if seq2seq is not None else ("decoder" if config.causal else "encoder"),
        "flops_per_token_forward": forward,
        "flops_per_token_training": 3.0 * forward,
    }


def _human(n: float, unit: str = "") -> str:
    for suffix in ("", "K", "M", "G", "T", "P"):
        if abs(n) < 1000 or suffix == "P":
            return f"{n:.3g}{suffix}{unit}" if suffix else f"{n:.4g}{unit}"
        n /= 1000.0
    return str(n)


def _bytes(n: float) -> str:
    for suffix in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or suffix == "TiB":
            return f"{n:.1f} {suffix}" if suffix != "B" else f"{int(n)} B"
        n /= 1024.0
    return str(n)


def format_info(info: dict[str, Any]) -> str:
    c = info["config"]
    total = info["parameters"]
    config = GPTConfig.from_dict(c)
    switches = [s for s, on in (("qk_norm", config.qk_norm), ("llama3 rope scaling", config.rope_scaling)) if on]
    lines = [
        f"model: {info['model']} ({info['architecture']})",
        f"  layers {c['n_layers']}, heads {c['n_heads']} ({config.kv_heads} key/value, width {config.head_dim}), "
        f"emb_dim {c['emb_dim']}, context {c['context_length']}, vocab {c['vocab_size']}, tied head {c['tie_embeddings']}"
        + "".join(f", {s}" for s in switches),
        f"parameters: {total:,} ({_human(total)})",
    ]
    for group, n in info["breakdown"].items():
        lines.append(f"  {group:<11} {n:>15,}  {100.0 * n / total:5.1f}%")
    lines.append(f"  non-embedding {info['non_embedding_parameters']:,}")
    lines.append(
        "weights: " + ", ".join(f"{k} {_bytes(v)}" for k, v in info["weights_bytes"].items() if k in ("float32", "bfloat16"))
    )
    lines.append(f"AdamW training state (fp32): {_bytes(info['adamw_training_bytes_fp32'])}")
    kv = info["kv_cache_bytes_per_token"]
    lines.append(f"KV cache per token: float32 {_bytes(kv['float32'])}, bfloat16 {_bytes(kv['bfloat16'])} "
                 "(half-precision models decoding on a CPU keep a float32 cache)")
    lines.append(
        f"FLOPs per token (context {c['context_length']}): forward {_human(info['flops_per_token_forward'])}, "
        f"training {_human(info['flops_per_token_training'])}"
    )
    return "\n".join(lines)


def format_comparison(infos: list[dict[str, Any]]) -> str:
    """One row per model: parameters, shape (heads, key/value heads, head width), weights in bf16,
    KV cache per token, training FLOPs per token."""
    header = (f"{'model':<14}{'params':>10}{'layers':>7}{'emb_dim':>8}{'heads':>6}{'kv_heads':>9}{'head_dim':>9}"
              f"{'ctx':>8}{'bf16 weights':>14}{'KV/token bf16':>15}{'train FLOPs/tok':>17}")
    rows = [header]
    for i in infos:
        c = GPTConfig.from_dict(i["config"])
        rows.append(
            f"{i['model']:<14}{_human(i['parameters']):>10}{c.n_layers:>7}{c.emb_dim:>8}{c.n_heads:>6}{c.kv_heads:>9}"
            f"{c.head_dim:>9}{c.context_length:>8}{_bytes(i['weights_bytes']['bfloat16']):>14}"
            f"{_bytes(i['kv_cache_bytes_per_token']['bfloat16']):>15}{_human(i['flops_per_token_training']):>17}"
        )
    return "\n".join(rows)
