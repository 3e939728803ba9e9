"""Model configuration: the `GPTConfig` dataclass and its named presets (no file I/O: reading a
config.json is `checkpoint.read_config`); `ModelShape`, the option group that changes a preset's or a
recipe's size; `LoRAConfig`, the adapters' settings (an option group of the fine-tuning verbs, and the
adapter_config.json format). Torch-free, so the CLI's option groups import it without torch.

A config is plain data. Presets are dictionaries of overrides, not subclasses; `GPTConfig.from_dict`
rejects keys it does not know so that a typo in a config file is an error, not a silent default.
The GPT-2 sizes come from Radford et al. 2019 ("Language Models are Unsupervised Multitask
Learners", table 2) as released by OpenAI; the small presets are for tests and CPU experiments;
the recent small open models (Llama 3.2, Qwen2.5, Qwen3, SmolLM2) have the shapes of their
published config.json files.

Fields that recent models added, beyond GPT-2 and the first Llama:

- `head_dim`: width of one attention head. None means emb_dim // n_heads (GPT-2, Llama); Qwen3 uses
  wider heads than that (1024 / 16 = 64, but head_dim 128), so the attention width n_heads * head_dim
  may differ from emb_dim. The config resolves None to the number when it is made (so
  `config.head_dim` is always an int) and `to_dict` writes None back when the width is the derived
  one, so a config file whose emb_dim is edited derives head_dim again.
- `qk_norm`: RMS-normalise each query and key head over head_dim, with a learned scale, before the
  rotary positions (Qwen3; Dehghani et al. 2023 and Wortsman et al. 2023 use it against attention
  logits that grow without bound).
- `rope_scaling`: None, or Llama 3's stretch of the rotary frequencies to longer contexts:
  {"type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
  "original_context_length": 8192} (Grattafiori et al. 2024, "The Llama 3 Herd of Models").
  A plain dict so that it reads and writes as JSON unchanged; every key is required and checked.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from scratchllm.core.options import check_fields, from_mapping, option
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
    mlp: str = "gelu"  # "gelu" (GPT-2), "swiglu" (gated SiLU) or "relu2" (squared ReLU, So et al. 2021)
    mlp_hidden_dim: int | None = None  # feed-forward width; None = mlp_ratio * emb_dim
    n_kv_heads: int | None = None  # grouped-query attention: key/value heads (None = n_heads)
    bias: bool = True  # biases in the output projection, feed-forward and norms
    rope_theta: float = 10000.0
    causal: bool = True  # False: bidirectional attention (an encoder)
    # Options of recent small models (see the module docstring):
    head_dim: int | None = None  # width of one head; None = emb_dim // n_heads (resolved in __post_init__)
    qk_norm: bool = False  # RMSNorm on each query/key head before RoPE (Qwen3)
    rope_scaling: dict[str, Any] | None = None  # None or Llama 3's {"type": "llama3", ...}
    # Switches of small-budget training recipes (the modded-nanogpt speedrun, Jordan et al. 2024):
    zero_init_proj: bool = False  # attention and MLP output projections start at zero (each block starts as the identity)
    logit_softcap: float | None = None  # logits = c * tanh(logits / c) (Gemma 2, Team et al. 2024); None = off

    def __post_init__(self) -> None:
        for name in ("vocab_size", "context_length", "emb_dim", "n_layers", "n_heads", "mlp_ratio"):
            _check_positive_int(name, getattr(self, name))
        for name in ("mlp_hidden_dim", "n_kv_heads", "head_dim"):
            if getattr(self, name) is not None:
                _check_positive_int(name, getattr(self, name))
        for name in ("qkv_bias", "tie_embeddings", "bias", "causal", "qk_norm", "zero_init_proj"):
            if not isinstance(getattr(self, name), bool):
                raise ScratchLLMError(f"config field {name!r} must be true or false, got {getattr(self, name)!r}")
        for name in ("drop_rate", "layer_norm_eps", "rope_theta"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ScratchLLMError(f"config field {name!r} must be a number, got {value!r}")
        if self.head_dim is None:
            if self.emb_dim % self.n_heads:
                raise ScratchLLMError(
                    f"config: emb_dim ({self.emb_dim}) must be divisible by n_heads ({self.n_heads})"
                )
            self.head_dim = self.emb_dim // self.n_heads
        if not 0.0 <= float(self.drop_rate) < 1.0:
            raise ScratchLLMError(f"config field 'drop_rate' must be in [0, 1), got {self.drop_rate!r}")
        if not self.layer_norm_eps > 0 or not self.rope_theta > 0:
            bad = "layer_norm_eps" if not self.layer_norm_eps > 0 else "rope_theta"
            raise ScratchLLMError(f"config field {bad!r} must be > 0, got {getattr(self, bad)!r}")
        for name, allowed in (
            ("attn_impl", ("sdpa", "manual")),
            ("norm", ("layernorm", "rmsnorm")),
            ("position", ("learned", "rope", "sinusoidal")),
            ("mlp", ("gelu", "swiglu", "relu2")),
        ):
            if not isinstance(getattr(self, name), str) or getattr(self, name) not in allowed:
                raise ScratchLLMError(
                    f"config field {name!r} must be one of {', '.join(allowed)}; got {getattr(self, name)!r}"
                )
        if self.n_kv_heads is not None and self.n_heads % self.n_kv_heads:
            raise ScratchLLMError(
                f"config: n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.n_kv_heads})"
            )
        if self.logit_softcap is not None and not (
            isinstance(self.logit_softcap, (int, float)) and not isinstance(self.logit_softcap, bool) and self.logit_softcap > 0
        ):
            raise ScratchLLMError(f"config field 'logit_softcap' must be a positive number or null, got {self.logit_softcap!r}")
        if self.position == "rope" and self.head_dim % 2:
            raise ScratchLLMError(f"config: rotary positions need an even head_dim, got {self.head_dim}")
        if self.rope_scaling is not None:
            if self.position != "rope":
                raise ScratchLLMError(f"config: rope_scaling needs position 'rope', got position {self.position!r}")
            self.rope_scaling = _check_rope_scaling(self.rope_scaling)
        # Last, every field against its annotation: a field added later is type-checked even before
        # it gets a check (and a message) of its own above.
        check_fields(self, "config")

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def hidden_dim(self) -> int:
        return self.mlp_hidden_dim or self.mlp_ratio * self.emb_dim

    def to_dict(self) -> dict[str, Any]:
        """The fields as plain data; head_dim is None when it is the derived emb_dim // n_heads."""
        data = dataclasses.asdict(self)
        if self.emb_dim % self.n_heads == 0 and self.head_dim == self.emb_dim // self.n_heads:
            data["head_dim"] = None
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> "GPTConfig":
        return from_mapping(cls, data, source, "config")

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "GPTConfig":
        if name not in PRESETS:
            raise ScratchLLMError(f"unknown model preset {name!r}; choose one of: {', '.join(PRESETS)}")
        return cls.from_dict({**PRESETS[name], **overrides}, source=f"preset {name!r}")


def _check_positive_int(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ScratchLLMError(f"config field {name!r} must be a positive integer, got {value!r}")


# Llama 3's rotary scaling: its keys, with the type each must have.
ROPE_SCALING_KEYS = {"type": str, "factor": float, "low_freq_factor": float, "high_freq_factor": float,
                     "original_context_length": int}


def _check_rope_scaling(scaling: Any) -> dict[str, Any]:
    """The rope_scaling dict, checked (every key of ROPE_SCALING_KEYS, nothing else), numbers as floats."""
    if not isinstance(scaling, dict):
        raise ScratchLLMError(f"config field 'rope_scaling' must be null or an object, got {scaling!r}")
    if scaling.get("type") != "llama3":
        raise ScratchLLMError(f"config field 'rope_scaling': type must be 'llama3', got {scaling.get('type')!r}")
    keys = set(scaling)
    if keys != set(ROPE_SCALING_KEYS):
        wrong = sorted(keys - set(ROPE_SCALING_KEYS)) or sorted(set(ROPE_SCALING_KEYS) - keys)
        what = "unknown" if keys - set(ROPE_SCALING_KEYS) else "missing"
        raise ScratchLLMError(f"config field 'rope_scaling': {what} key(s) {', '.join(map(repr, wrong))}; "
                              f"expected {', '.join(ROPE_SCALING_KEYS)}")
    out: dict[str, Any] = {"type": "llama3"}
    for key, kind in ROPE_SCALING_KEYS.items():
        if key == "type":
            continue
        value = scaling[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
            expected = "an integer" if kind is int else "a number"
            raise ScratchLLMError(f"config field 'rope_scaling': {key!r} must be {expected}, got {value!r}")
        if not value > 0:
            raise ScratchLLMError(f"config field 'rope_scaling': {key!r} must be > 0, got {value!r}")
        out[key] = kind(value)
    if out["factor"] < 1 or out["low_freq_factor"] >= out["high_freq_factor"]:
        raise ScratchLLMError(
            "config field 'rope_scaling': expected factor >= 1 and low_freq_factor < high_freq_factor, got "
            f"factor {out['factor']}, low_freq_factor {out['low_freq_factor']}, high_freq_factor {out['high_freq_factor']}"
        )
    return out


# The switches shared by the recent presets below.
_LLAMA_STYLE = dict(norm="rmsnorm", position="rope", mlp="swiglu", bias=False, tie_embeddings=True)

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
    # Today's small open models, with the shapes of their config.json on the Hugging Face hub. All are
    # Llama-style (RMSNorm, RoPE, SwiGLU, grouped-query attention) with a head tied to the embedding;
    # they differ in the switches: Llama 3.2 stretches RoPE to 128K positions (rope_scaling), Qwen2.5
    # keeps biases on q/k/v only, Qwen3 normalises queries and keys (qk_norm) and has heads wider than
    # emb_dim / n_heads.
    "llama3.2-1b": dict(  # meta-llama/Llama-3.2-1B: 1.24B
        **_LLAMA_STYLE, vocab_size=128256, context_length=131072, emb_dim=2048, n_layers=16, n_heads=32,
        n_kv_heads=8, mlp_hidden_dim=8192, layer_norm_eps=1e-5, rope_theta=500000.0, qkv_bias=False,
        rope_scaling={"type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_context_length": 8192},
    ),
    "qwen2.5-0.5b": dict(  # Qwen/Qwen2.5-0.5B: 494M
        **_LLAMA_STYLE, vocab_size=151936, context_length=32768, emb_dim=896, n_layers=24, n_heads=14,
        n_kv_heads=2, mlp_hidden_dim=4864, layer_norm_eps=1e-6, rope_theta=1000000.0, qkv_bias=True,
    ),
    "qwen3-0.6b": dict(  # Qwen/Qwen3-0.6B: 596M
        **_LLAMA_STYLE, vocab_size=151936, context_length=40960, emb_dim=1024, n_layers=28, n_heads=16,
        n_kv_heads=8, head_dim=128, mlp_hidden_dim=3072, layer_norm_eps=1e-6, rope_theta=1000000.0, qkv_bias=False,
        qk_norm=True,
    ),
    "smollm2-135m": dict(  # HuggingFaceTB/SmolLM2-135M: 135M
        **_LLAMA_STYLE, vocab_size=49152, context_length=8192, emb_dim=576, n_layers=30, n_heads=9,
        n_kv_heads=3, mlp_hidden_dim=1536, layer_norm_eps=1e-5, rope_theta=100000.0, qkv_bias=False,
    ),
}


@dataclass(kw_only=True)
class ModelShape:
    """A model's size, as changes to a base model (a preset, or the recipe's in `scratchllm demo`): None keeps the base's."""

    vocab_size: int | None = None
    """tokenizer vocabulary (default: the base's)"""
    n_layers: int | None = option(None, flag="--layers")
    """transformer blocks (default: the base's)"""
    emb_dim: int | None = None
    """model width (default: the base's)"""
    n_heads: int | None = option(None, flag="--heads")
    """attention heads (default: the base's)"""
    context_length: int | None = None
    """tokens per sequence (default: the base's)"""

    def __post_init__(self) -> None:
        check_fields(self, "model shape")
        for name, value in self.changes().items():
            _check_positive_int(name, value)

    def changes(self) -> dict[str, int]:
        """The fields that are set, as GPTConfig overrides."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


# The four linear layers of every transformer block (names as in scratchllm.models.gpt).
DEFAULT_LORA_TARGETS = ("attn.qkv", "attn.proj", "mlp.fc", "mlp.proj")


@dataclass
class LoRAConfig:
    """LoRA adapters (models/lora.py): their rank, scale, which layers get them (Hu et al. 2021)."""

    rank: int = 8
    """LoRA rank r: the inner dimension of the update B @ A"""
    alpha: float = 16.0
    """LoRA scale alpha (the update is alpha/r * B A, so changing r keeps its size comparable)"""
    targets: list[str] = field(default_factory=lambda: list(DEFAULT_LORA_TARGETS))
    """linear layers that get adapters (module-name suffixes)"""
    dropout: float = 0.0
    """dropout on the adapters' input (Hu et al. use 0.05-0.1 on small data)"""
    trainable: list[str] = field(default_factory=list)
    """other modules left trainable (e.g. a classifier head)"""
    base_model: str | None = None
    """where the frozen weights came from (informational, for merge-lora)"""

    def __post_init__(self) -> None:
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ScratchLLMError(f"LoRA rank must be an integer >= 1, got {self.rank!r}")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not self.alpha > 0:
            raise ScratchLLMError(f"LoRA alpha must be a number > 0, got {self.alpha!r}")
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise ScratchLLMError(f"LoRA dropout must be in [0, 1), got {self.dropout!r}")
        if isinstance(self.targets, str) or not self.targets or not all(isinstance(t, str) and t for t in self.targets):
            raise ScratchLLMError(f"LoRA targets must be a non-empty list of module names, got {self.targets!r}")
        self.targets, self.trainable = list(self.targets), list(self.trainable)
        self.alpha = float(self.alpha)

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank

    @classmethod
    def from_dict(cls, data: Any, source: str = "LoRA config") -> LoRAConfig:
        """A config from its JSON object (adapter_config.json, or "lora" in a model's config.json)."""
        return from_mapping(cls, data, source, "LoRA config")
