"""Model configuration: the `GPTConfig` dataclass and its named presets (no file I/O: reading a
config.json is `checkpoint.read_config`).

A config is plain data. Presets are dictionaries of overrides, not subclasses; `GPTConfig.from_dict`
rejects keys it does not know so that a typo in a config file is an error, not a silent default.
The GPT-2 sizes come from Radford et al. 2019 ("Language Models are Unsupervised Multitask
Learners", table 2) as released by OpenAI; the small presets are for tests and CPU experiments.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from scratchllm.core.fields import check_field_types
from scratchllm.errors import ScratchLLMError


@dataclass
class GPTConfig:
    vocab_size: int = 50257  # GPT-2 BPE: 256 bytes + 50,000 merges + <|endoftext|>
    context_length: int = 1024  # longest sequence the position embedding covers
    emb_dim: int = 768  # width of the residual stream
    n_layers: int = 12
    n_heads: int = 12
    drop_rate: float = 0.0  # dropout on embeddings, attention weights and residual branches
    qkv_bias: bool = True  # GPT-2 has biases on the query/key/value projection
    tie_embeddings: bool = True  # LM head shares the token-embedding matrix (GPT-2 does)
    mlp_ratio: int = 4  # feed-forward hidden width = mlp_ratio * emb_dim
    layer_norm_eps: float = 1e-5
    attn_impl: str = "sdpa"  # "sdpa" (fused kernel) or "manual" (the readable reference)
    # Options beyond GPT-2 (the Llama family, Touvron et al. 2023; encoders, Devlin et al. 2019):
    norm: str = "layernorm"  # "layernorm" or "rmsnorm"
    position: str = "learned"  # "learned" absolute embeddings, "rope" rotary, or "sinusoidal" (fixed)
    mlp: str = "gelu"  # "gelu" (GPT-2) or "swiglu" (gated SiLU)
    mlp_hidden_dim: int | None = None  # feed-forward width; None = mlp_ratio * emb_dim
    n_kv_heads: int | None = None  # grouped-query attention: key/value heads (None = n_heads)
    bias: bool = True  # biases in the output projection, feed-forward and norms
    rope_theta: float = 10000.0
    causal: bool = True  # False: bidirectional attention (an encoder)

    def __post_init__(self) -> None:
        check_field_types(self, "config")  # every field, also those added later, against its annotation
        for name in ("vocab_size", "context_length", "emb_dim", "n_layers", "n_heads", "mlp_ratio"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ScratchLLMError(f"config field {name!r} must be a positive integer, got {value!r}")
        if self.emb_dim % self.n_heads:
            raise ScratchLLMError(
                f"config: emb_dim ({self.emb_dim}) must be divisible by n_heads ({self.n_heads})"
            )
        if not 0.0 <= float(self.drop_rate) < 1.0:
            raise ScratchLLMError(f"config field 'drop_rate' must be in [0, 1), got {self.drop_rate!r}")
        for name, allowed in (
            ("attn_impl", ("sdpa", "manual")),
            ("norm", ("layernorm", "rmsnorm")),
            ("position", ("learned", "rope", "sinusoidal")),
            ("mlp", ("gelu", "swiglu")),
        ):
            if getattr(self, name) not in allowed:
                raise ScratchLLMError(
                    f"config field {name!r} must be one of {', '.join(allowed)}; got {getattr(self, name)!r}"
                )
        for name in ("layer_norm_eps", "rope_theta"):
            if not 0 < getattr(self, name) < math.inf:
                raise ScratchLLMError(f"config field {name!r} must be a positive number, got {getattr(self, name)!r}")
        if self.mlp_hidden_dim is not None and self.mlp_hidden_dim < 1:
            raise ScratchLLMError(f"config field 'mlp_hidden_dim' must be a positive integer or null, got {self.mlp_hidden_dim!r}")
        if self.n_kv_heads is not None and (self.n_kv_heads < 1 or self.n_heads % self.n_kv_heads):
            raise ScratchLLMError(
                f"config: n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.n_kv_heads})"
            )
        if self.position == "rope" and self.head_dim % 2:
            raise ScratchLLMError(f"config: rotary positions need an even head_dim, got {self.head_dim}")

    @property
    def head_dim(self) -> int:
        return self.emb_dim // self.n_heads

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def hidden_dim(self) -> int:
        return self.mlp_hidden_dim or self.mlp_ratio * self.emb_dim

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> "GPTConfig":
        if not isinstance(data, dict):
            raise ScratchLLMError(f"{source}: expected a JSON object of config fields, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ScratchLLMError(
                f"{source}: unknown config key(s) {', '.join(map(repr, unknown))}; known keys: {', '.join(sorted(known))}"
            )
        try:
            return cls(**data)
        except ScratchLLMError as exc:  # name the file (or preset) the bad value came from
            raise ScratchLLMError(f"{source}: {exc}" if source != "config" else str(exc)) from None

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "GPTConfig":
        if name not in PRESETS:
            raise ScratchLLMError(f"unknown model preset {name!r}; choose one of: {', '.join(PRESETS)}")
        return cls.from_dict({**PRESETS[name], **overrides}, source=f"preset {name!r}")


# Named presets: overrides of the GPTConfig defaults (which are GPT-2 small's).
PRESETS: dict[str, dict[str, Any]] = {
    "gpt2-small": dict(emb_dim=768, n_layers=12, n_heads=12),  # 124M
    "gpt2-medium": dict(emb_dim=1024, n_layers=24, n_heads=16),  # 355M
    "gpt2-large": dict(emb_dim=1280, n_layers=36, n_heads=20),  # 774M
    "gpt2-xl": dict(emb_dim=1600, n_layers=48, n_heads=25),  # 1558M
    # Small models for tests and CPU experiments (vocab_size is replaced by the tokenizer's).
    "gpt-tiny": dict(emb_dim=64, n_layers=2, n_heads=4, context_length=128),
    "gpt-mini": dict(emb_dim=192, n_layers=4, n_heads=6, context_length=256),
    "gpt-cpu": dict(emb_dim=384, n_layers=6, n_heads=6, context_length=256),  # nanoGPT's shakespeare size
    # GPT-3 (Brown et al. 2020, table 2.1): context 2048, GPT-2's vocabulary. The paper's dense/sparse
    # alternating attention is not modelled. Two rows of the table are inconsistent (XL: 24 heads of 128
    # in 2,048 dims; 13B: d_model 5,140 with 40 heads of 128); we keep d_head = 128 there.
    "gpt3-small": dict(emb_dim=768, n_layers=12, n_heads=12, context_length=2048),  # 125M
    "gpt3-medium": dict(emb_dim=1024, n_layers=24, n_heads=16, context_length=2048),  # 350M
    "gpt3-large": dict(emb_dim=1536, n_layers=24, n_heads=16, context_length=2048),  # 760M
    "gpt3-xl": dict(emb_dim=2048, n_layers=24, n_heads=16, context_length=2048),  # 1.3B
    "gpt3-2.7b": dict(emb_dim=2560, n_layers=32, n_heads=32, context_length=2048),
    "gpt3-6.7b": dict(emb_dim=4096, n_layers=32, n_heads=32, context_length=2048),
    "gpt3-13b": dict(emb_dim=5120, n_layers=40, n_heads=40, context_length=2048),
    "gpt3-175b": dict(emb_dim=12288, n_layers=96, n_heads=96, context_length=2048),
    # Llama-style decoder on the same model: RMSNorm, rotary positions, SwiGLU, grouped-query attention,
    # no biases, untied head. "llama-tiny" is for tests and CPU runs; "llama2-7b" is Llama 2 7B's shape.
    "llama-tiny": dict(
        emb_dim=128, n_layers=4, n_heads=4, n_kv_heads=2, context_length=256, norm="rmsnorm", position="rope",
        mlp="swiglu", mlp_hidden_dim=352, bias=False, qkv_bias=False, tie_embeddings=False, layer_norm_eps=1e-5,
    ),
    "llama2-7b": dict(
        emb_dim=4096, n_layers=32, n_heads=32, context_length=4096, vocab_size=32000, norm="rmsnorm",
        position="rope", mlp="swiglu", mlp_hidden_dim=11008, bias=False, qkv_bias=False, tie_embeddings=False,
        layer_norm_eps=1e-5,
    ),
}
