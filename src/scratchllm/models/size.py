"""How big a model is, from its config alone, and whether it fits in memory before it is built.

`parameter_breakdown(config)` counts a GPT's parameters per group without building it (a test checks
it against a real `GPT`); `scratchllm info` prints it. `check_fits` is what every place that builds
a model from a config calls first: a config that cannot fit (a hostile `"n_layers": 1000000000`, or
emb_dim 2^22) is refused in one line, instead of allocating for minutes and then dying.
"""

from __future__ import annotations

import torch

from scratchllm.core.device import available_memory
from scratchllm.errors import ScratchLLMError
from scratchllm.models.config import GPTConfig

# AdamW training in float32: weights + gradients + two moment buffers, 4 bytes each.
TRAINING_BYTES_PER_PARAMETER = 16


def parameter_breakdown(config: GPTConfig) -> dict[str, int]:
    """Parameters per group, counted as `GPT.parameter_breakdown` counts them."""
    C, L, V, hidden = config.emb_dim, config.n_layers, config.vocab_size, config.hidden_dim
    q_dim, kv_dim = config.n_heads * config.head_dim, config.kv_heads * config.head_dim
    bias = 1 if config.bias else 0
    attention = C * (q_dim + 2 * kv_dim) + (q_dim + 2 * kv_dim if config.qkv_bias else 0)  # qkv
    attention += q_dim * C + bias * C  # output projection
    mlp_in = 2 if config.mlp == "swiglu" else 1  # SwiGLU has a gate beside the up-projection
    mlp = mlp_in * (C * hidden + bias * hidden) + hidden * C + bias * C
    norm = C if config.norm == "rmsnorm" else C * (1 + bias)  # scale (and shift)
    qk_norm = 2 * config.head_dim if config.qk_norm else 0  # a query and a key RMSNorm per block
    return {
        "embeddings": V * C + (config.context_length * C if config.position == "learned" else 0),
        "attention": L * attention,
        "mlp": L * mlp,
        "norms": (2 * L + 1) * norm + L * qk_norm,  # two per block and the final one
        "head": 0 if config.tie_embeddings else V * C,
    }


def parameter_count(config: GPTConfig) -> int:
    return sum(parameter_breakdown(config).values())


def check_fits(config: GPTConfig, device: str | torch.device = "cpu", bytes_per_parameter: int = 4,
               copies: float = 1.0, what: str = "model") -> None:
    """Raise ScratchLLMError when `copies` x the parameters of `config` x `bytes_per_parameter`
    exceed the memory `device` has available (4 bytes: float32 weights; TRAINING_BYTES_PER_PARAMETER
    for AdamW training; copies=2 roughly for an encoder-decoder's two stacks). Activations are not
    counted, so passing this check is necessary, not sufficient."""
    params = int(parameter_count(config) * copies)
    need = params * bytes_per_parameter
    free = available_memory(device)
    if free is not None and need > free:
        purpose = "to train" if bytes_per_parameter >= TRAINING_BYTES_PER_PARAMETER else "for its weights"
        raise ScratchLLMError(
            f"{what}: {params:,} parameters (emb_dim {config.emb_dim}, n_layers {config.n_layers}, vocab_size "
            f"{config.vocab_size}) need {_gb(need)} {purpose}, but {device} has {_gb(free)} available; "
            "choose a smaller model"
        )


def _gb(n: int) -> str:
    return f"{n / 1e9:,.1f} GB" if n >= 1e8 else f"{n / 1e6:,.1f} MB"
