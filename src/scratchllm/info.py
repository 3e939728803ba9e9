"""Model accounting without building the model: parameters, memory and FLOPs per token.

`scratchllm info --model PRESET|config.json|DIR` prints these figures. Counts are computed from the
config alone, so even presets far too large for this machine can be inspected; a test checks the
formulas against a real `GPT` instance.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from scratchllm.config import GPTConfig, load_config
from scratchllm.errors import ScratchLLMError
from scratchllm.model import flops_per_token

BYTES_PER_DTYPE = {"float32": 4, "bfloat16": 2, "float16": 2, "int8": 1}


def parameter_breakdown(config: GPTConfig) -> dict[str, int]:
    """Parameters per group, counted as `GPT.parameter_breakdown` counts them."""
    C, L, V, hidden = config.emb_dim, config.n_layers, config.vocab_size, config.mlp_ratio * config.emb_dim
    attention = C * 3 * C + (3 * C if config.qkv_bias else 0) + C * C + C  # qkv and output projection
    mlp = C * hidden + hidden + hidden * C + C
    return {
        "embeddings": V * C + config.context_length * C,
        "attention": L * attention,
        "mlp": L * mlp,
        "norms": L * 2 * 2 * C + 2 * C,  # two LayerNorms (scale, shift) per block + the final one
        "head": 0 if config.tie_embeddings else V * C,
    }


def resolve_config(spec: str | Path) -> GPTConfig:
    """A preset name, our config.json / model directory, or a Hugging Face GPT-2 directory."""
    path = Path(str(spec))
    config_file = path / "config.json" if path.is_dir() else path
    if config_file.is_file():
        try:
            data = json.loads(config_file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ScratchLLMError(f"{config_file}: cannot read JSON config ({exc})") from None
        if isinstance(data, dict) and data.get("model_type") == "gpt2":
            from scratchllm.checkpoint import config_from_hf

            return config_from_hf(data)
    if path.is_dir() and not config_file.is_file():
        from scratchllm.checkpoint import resolve_model_dir

        return load_config(resolve_model_dir(path))
    return load_config(str(spec))


def model_info(spec: str | Path | GPTConfig) -> dict[str, Any]:
    config = spec if isinstance(spec, GPTConfig) else resolve_config(spec)
    breakdown = parameter_breakdown(config)
    total = sum(breakdown.values())
    kv_per_token = 2 * config.n_layers * config.emb_dim  # one key and one value vector per layer
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
        "flops_per_token_forward": flops_per_token(config, training=False),
        "flops_per_token_training": flops_per_token(config, training=True),
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
    lines = [
        f"model: {info['model']}",
        f"  layers {c['n_layers']}, heads {c['n_heads']}, emb_dim {c['emb_dim']}, context {c['context_length']}, "
        f"vocab {c['vocab_size']}, tied head {c['tie_embeddings']}",
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
    lines.append(f"KV cache per token: float32 {_bytes(kv['float32'])}, bfloat16 {_bytes(kv['bfloat16'])}")
    lines.append(
        f"FLOPs per token (context {c['context_length']}): forward {_human(info['flops_per_token_forward'])}, "
        f"training {_human(info['flops_per_token_training'])}"
    )
    return "\n".join(lines)
