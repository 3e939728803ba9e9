"""The GPT model: embeddings -> causal self-attention blocks -> final norm -> LM head.

This is GPT-2's architecture (Radford et al. 2019): token and learned position embeddings,
pre-LayerNorm transformer blocks (causal multi-head self-attention and a GELU feed-forward network,
each wrapped in a residual connection), a final LayerNorm and a linear head to vocabulary logits.
The same parts, switched by config fields, give a Llama-style decoder (RMSNorm, rotary positions,
SwiGLU, grouped-query attention, no biases), today's small open models (Llama 3's rotary scaling,
Qwen2.5's q/k/v-only biases, Qwen3's query/key norms and heads wider than emb_dim / n_heads), a
bidirectional encoder (`causal=False`), and the decoder half of an encoder-decoder (blocks with
cross-attention).
Shapes use B = batch, T = new tokens, S = tokens attended to (cache + new), C = emb_dim,
H = heads, K = key/value heads, D = head_dim, V = vocab_size.

Also here: the key/value cache used for fast decoding. The training loss (`GPT.loss`) is the fused
"linear + cross-entropy" of loss.py: chunked on a CPU, so the (B, T, V) logits never exist; padded
and in one piece on a GPU.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from scratchllm.models.config import GPTConfig
from scratchllm.models.loss import lm_loss


@dataclass
class KVCache:
    """Keys and values of every layer for the tokens seen so far, preallocated to `max_len`.

    Writing a decode step is a slice assignment; no tensor grows or is re-allocated per token.
    `length` is how many positions are filled (the same for every row of the batch).
    """

    keys: list[torch.Tensor]  # n_layers x (B, K, max_len, D)
    values: list[torch.Tensor]  # n_layers x (B, K, max_len, D)
    length: int = 0

    @classmethod
    def allocate(cls, config: GPTConfig, batch_size: int, max_len: int, device, dtype) -> "KVCache":
        """A cache for `batch_size` rows of `max_len` positions, for a model of weights `dtype`, in
        the dtype attention runs in (`attention_dtype`: float32 for half precision on a CPU)."""
        dtype = attention_dtype(device, dtype)
        shape = (batch_size, config.kv_heads, max_len, config.head_dim)
        return cls(
            keys=[torch.empty(shape, device=device, dtype=dtype) for _ in range(config.n_layers)],
            values=[torch.empty(shape, device=device, dtype=dtype) for _ in range(config.n_layers)],
        )

    @property
    def max_len(self) -> int:
        return self.keys[0].shape[2]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, K, T, D) at positions [length, length + T); return all keys/values so far."""
        start, end = self.length, self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache overflow: {end} positions > max_len {self.max_len}")
        self.keys[layer][:, :, start:end] = k
        self.values[layer][:, :, start:end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]  # (B, K, S, D)

    def reorder(self, index: torch.Tensor) -> None:
        """Keep batch rows `index` (used when some sequences of a batch are dropped)."""
        self.keys = [k.index_select(0, index) for k in self.keys]
        self.values = [v.index_select(0, index) for v in self.values]


def rope_frequencies(head_dim: int, theta: float, scaling: dict | None = None, device=None) -> torch.Tensor:
    """Rotation speed of each of the D/2 pairs of a head (radians per position): theta^(-2i/D), (D/2,).

    With Llama 3's scaling (Grattafiori et al. 2024, section 3.3; config.rope_scaling) the pairs that
    turn slower than once per original_context_length / low_freq_factor positions are slowed down by
    `factor`, so that the long context the model was extended to looks like the short one it was
    trained on; pairs that turn faster than once per original_context_length / high_freq_factor
    positions, which encode local order, are kept; the ones between are blended linearly in the
    number of turns over the original context.
    """
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim)
    if scaling is None:
        return inv_freq
    factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    original = scaling["original_context_length"]
    wavelength = 2 * math.pi / inv_freq  # positions per full turn
    # 1 for fast pairs (kept), 0 for slow ones (slowed by `factor`), and between the two linear in
    # the number of turns over the original context
    keep = ((original / wavelength - low) / (high - low)).clamp(0.0, 1.0)  # (D/2,)
    return keep * inv_freq + (1 - keep) * inv_freq / factor


def rope_tables(
    position_ids: torch.Tensor, head_dim: int, theta: float, scaling: dict | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin (B or 1, 1, T, D) for rotary position embeddings (Su et al. 2021, RoFormer).

    Uses the "rotate half" pairing of Hugging Face's Llama (dimension i pairs with i + D/2), so its
    weights load unchanged. `scaling`: Llama 3's frequency scaling (see `rope_frequencies`)."""
    inv_freq = rope_frequencies(head_dim, theta, scaling, position_ids.device)  # (D/2,)
    angles = position_ids[..., None].float() * inv_freq  # (B, T, D/2)
    angles = torch.cat((angles, angles), dim=-1)[:, None]  # (B, 1, T, D)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each (x_i, x_{i+D/2}) pair of x (B, H, T, D) by its position's angle."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)
    return (x * cos + rotated * sin).to(x.dtype)


# --------------------------------------------------------------------------------------------------
# Attention


def attention_weights(q, k, mask: torch.Tensor | None = None, causal: bool = False) -> torch.Tensor:
    """softmax(q k^T / sqrt(D)) over the keys each query may see (Vaswani et al. 2017, eq. 1): (B, H, T, S).

    q: (B, H, T, D), k: (B, H, S, D); mask: bool (B or 1, 1, T, S), True = may attend; causal: the
    queries are the last T of the S positions and each sees itself and the positions before it.
    The manual attention path and `scratchllm inspect attention` both compute the weights here."""
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])  # (B, H, T, S)
    if causal:
        T, S = scores.shape[-2:]
        mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(diagonal=S - T)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1)


def manual_attention(q, k, v, mask: torch.Tensor | None = None, dropout_p: float = 0.0, causal: bool = False):
    """Scaled dot-product attention written out, the readable reference of the fused kernel:
    q (B, H, T, D), k/v (B, H, S, D) -> (B, H, T, D). mask and causal as in `attention_weights`."""
    weights = attention_weights(q, k, mask, causal)  # (B, H, T, S)
    if dropout_p > 0.0:
        weights = F.dropout(weights, p=dropout_p)
    return weights @ v  # (B, H, T, D)


def attention_dtype(device, dtype: torch.dtype) -> torch.dtype:
    """The dtype attention runs in for `dtype` tensors on `device`, and the one its KV cache holds.

    Half precision on a CPU attends in float32, which PyTorch's CPU kernels compute several times
    faster: decoding half-precision weights, 20 us vs 105 us per layer (a float32 cache then converts
    each new position once instead of every cached one at every step); training under bf16 autocast,
    the fused kernel's forward and backward 30 ms vs 134 ms per layer (4 x 256 model, batch 32 x 128,
    one thread, AVX-512 BF16 + AMX), which made bf16 steps slower than float32 ones."""
    half = dtype in (torch.bfloat16, torch.float16)
    if half and torch.device(device).type == "cpu":
        return torch.float32
    return dtype


class ScaledDotProductAttention(nn.Module):
    """softmax(q k^T / sqrt(D)) v for heads already split: PyTorch's fused kernel (impl "sdpa") or
    `manual_attention`, in the dtype `attention_dtype` picks. It has no parameters; it is a module so
    that its inputs can be hooked from outside (evaluation/inspect.py records the weights that way)."""

    def __init__(self, impl: str, dropout: float):
        super().__init__()
        self.impl = impl
        self.dropout = dropout  # on the attention weights, in training

    def forward(self, q, k, v, mask: torch.Tensor | None = None, causal: bool = False) -> torch.Tensor:
        """q (B, H, T, D), k/v (B, H, S, D) -> (B, H, T, D) in q's dtype; mask and causal as in
        `attention_weights`. Hooks see these positional arguments."""
        out_dtype, dtype = q.dtype, attention_dtype(q.device, q.dtype)
        q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
        dropout_p = self.dropout if self.training else 0.0
        # autocast would cast float32 inputs straight back to its dtype: off, when attention_dtype says float32
        cpu_autocast = q.device.type == "cpu" and torch.is_autocast_enabled("cpu") and dtype == torch.float32
        with torch.autocast("cpu", enabled=False) if cpu_autocast else contextlib.nullcontext():
            if self.impl == "sdpa":
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=causal)
            else:
                y = manual_attention(q, k, v, mask, dropout_p, causal)
        return y.to(out_dtype)


class Attention(nn.Module):
    """Multi-head attention (Vaswani et al. 2017, section 3.2.2): queries from x; keys and values from
    x too (self-attention, causal unless config.causal is False) or, with cross=True, from the
    encoder's output passed as `memory` (the decoder of an encoder-decoder). Switches of later models:
    grouped-query attention (n_kv_heads < n_heads: groups of query heads share a key/value head,
    Ainslie et al. 2023) and qk_norm (each query and key head RMS-normalised, Qwen3)."""

    def __init__(self, config: GPTConfig, cross: bool = False):
        super().__init__()
        C, H, K, D = config.emb_dim, config.n_heads, config.kv_heads, config.head_dim
        self.n_heads, self.n_kv_heads, self.head_dim = H, K, D
        self.cross = cross
        if cross:  # queries and keys/values read different sequences
            self.q = nn.Linear(C, H * D, bias=config.qkv_bias)
            self.kv = nn.Linear(C, 2 * K * D, bias=config.qkv_bias)
        else:
            self.qkv = nn.Linear(C, (H + 2 * K) * D, bias=config.qkv_bias)
        self.proj = nn.Linear(H * D, C, bias=config.bias)
        # qk_norm: one learned scale per channel of a head, shared by all heads (Qwen3)
        self.q_norm = nn.RMSNorm(D, eps=config.layer_norm_eps) if config.qk_norm else nn.Identity()
        self.k_norm = nn.RMSNorm(D, eps=config.layer_norm_eps) if config.qk_norm else nn.Identity()
        self.core = ScaledDotProductAttention(config.attn_impl, config.drop_rate)
        self.resid_drop = nn.Dropout(config.drop_rate)
        self.causal = config.causal and not cross

    def forward(self, x, mask=None, cache: KVCache | None = None, layer: int = 0, rope=None, memory=None):
        """x (B, T, C) -> (B, T, C). mask: bool (B or 1, 1, T, S) or None; cache: earlier positions'
        keys/values, to which this call's are appended (self-attention); rope: (cos, sin) tables;
        memory: (B, S, C), the keys' and values' source of cross-attention."""
        B, T, C = x.shape
        H, K, D = self.n_heads, self.n_kv_heads, self.head_dim
        if self.cross:
            q, (k, v) = self.q(x), self.kv(memory).split(K * D, dim=2)  # (B, T, H*D), 2 x (B, S, K*D)
        else:
            q, k, v = self.qkv(x).split([H * D, K * D, K * D], dim=2)  # (B, T, H*D), 2 x (B, T, K*D)
        q = self.q_norm(q.view(B, T, H, D)).transpose(1, 2)  # (B, H, T, D), normed before the rotation
        k = self.k_norm(k.view(B, k.shape[1], K, D)).transpose(1, 2)  # (B, K, S, D)
        v = v.view(B, v.shape[1], K, D).transpose(1, 2)  # (B, K, S, D)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if cache is not None:
            k, v = cache.update(layer, k, v)  # (B, K, S, D): the cached positions and these
        if K != H:  # grouped-query attention: each key/value head serves H // K query heads
            k = k.repeat_interleave(H // K, dim=1)  # (B, H, S, D)
            v = v.repeat_interleave(H // K, dim=1)
        # With no explicit mask, queries are the last T of S positions: causal when T == S, and
        # a single decode query may see everything. Any other case comes with a mask.
        y = self.core(q, k, v, mask, self.causal and mask is None and T > 1)  # (B, H, T, D)
        y = y.transpose(1, 2).reshape(B, T, H * D)  # (B, T, H*D): heads side by side again
        return self.resid_drop(self.proj(y))


# The class's name before it also served cross-attention and encoders (README of earlier versions).
CausalSelfAttention = Attention


class FeedForward(nn.Module):
    """Position-wise MLP, C -> hidden -> C, in the variant config.mlp names:
    "gelu": proj(gelu(fc(x))), the tanh approximation, as GPT-2;
    "swiglu": proj(silu(gate(x)) * fc(x)) (Shazeer 2020), as Llama;
    "relu2": proj(relu(fc(x))^2), the squared ReLU of Primer (So et al. 2021)."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.activation = config.mlp
        if self.activation == "swiglu":
            self.gate = nn.Linear(config.emb_dim, config.hidden_dim, bias=config.bias)
        self.fc = nn.Linear(config.emb_dim, config.hidden_dim, bias=config.bias)
        self.proj = nn.Linear(config.hidden_dim, config.emb_dim, bias=config.bias)
        self.drop = nn.Dropout(config.drop_rate)

    def forward(self, x):
        if self.activation == "swiglu":
            h = F.silu(self.gate(x)) * self.fc(x)  # (B, T, hidden)
        elif self.activation == "relu2":
            h = F.relu(self.fc(x)).square()
        else:
            h = F.gelu(self.fc(x), approximate="tanh")
        return self.drop(self.proj(h))  # (B, T, C)


def make_norm(config: GPTConfig) -> nn.Module:
    if config.norm == "rmsnorm":
        return nn.RMSNorm(config.emb_dim, eps=config.layer_norm_eps)  # Zhang & Sennrich 2019
    return nn.LayerNorm(config.emb_dim, eps=config.layer_norm_eps, bias=config.bias)


def sinusoidal_table(length: int, dim: int) -> torch.Tensor:
    """Fixed position encodings of "Attention Is All You Need" (section 3.5): (length, dim)."""
    position = torch.arange(length, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(position * div)
    table[:, 1::2] = torch.cos(position * div)[:, : dim // 2]
    return table


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), [x + cross_attn(norm(x), memory)], x + mlp(norm(x))."""

    def __init__(self, config: GPTConfig, cross_attention: bool = False):
        super().__init__()
        self.norm1 = make_norm(config)
        self.attn = Attention(config)
        if cross_attention:
            self.norm_cross = make_norm(config)
            self.cross_attn = Attention(config, cross=True)
        self.norm2 = make_norm(config)
        self.mlp = FeedForward(config)

    def forward(self, x, mask=None, cache=None, layer=0, rope=None, memory=None, memory_mask=None):
        x = x + self.attn(self.norm1(x), mask, cache, layer, rope)
        if memory is not None:
            x = x + self.cross_attn(self.norm_cross(x), memory_mask, memory=memory)
        return x + self.mlp(self.norm2(x))


def init_weights(module: nn.Module, config: GPTConfig) -> None:
    """GPT-2's initialisation of every Linear and Embedding in `module`: normal with std 0.02, zero
    biases. The projections that write into the residual stream (attn.proj, cross_attn.proj,
    mlp.proj) get std 0.02 / sqrt(2 * n_layers), since each block adds two such branches and the
    residual variance grows with depth; or, with config.zero_init_proj, start at zero, so that every
    block begins as the identity and the residual stream as the embeddings (the modded-nanogpt
    speedrun). GPT and the decoder blocks of the encoder-decoder are both initialised here."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)
    for name, p in module.named_parameters():
        if name.endswith(("attn.proj.weight", "mlp.proj.weight")):
            if config.zero_init_proj:
                nn.init.zeros_(p)
            else:
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layers))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.emb_dim)
        if config.position == "learned":
            self.pos_emb = nn.Embedding(config.context_length, config.emb_dim)
        elif config.position == "sinusoidal":
            self.register_buffer("pos_table", sinusoidal_table(config.context_length, config.emb_dim), persistent=False)
        self.drop_emb = nn.Dropout(config.drop_rate)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.final_norm = make_norm(config)
        self.out_head = nn.Linear(config.emb_dim, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.out_head.weight = self.tok_emb.weight
        init_weights(self, config)

    # ----------------------------------------------------------------------------------------------
    # forward passes

    def hidden_states(
        self,
        idx: torch.Tensor,
        cache: KVCache | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Token ids (B, T) -> final-normed hidden states (B, T, C).

        cache: keys/values of earlier positions; the new ones are appended.
        attention_mask: (B, S) with 1 for real tokens and 0 for (left) padding, covering the cached
            positions and the new ones; positions then count real tokens only, as in Hugging Face.
        """
        B, T = idx.shape
        past = cache.length if cache is not None else 0
        S = past + T
        if S > self.config.context_length:
            raise ValueError(f"sequence of {S} tokens exceeds the context length {self.config.context_length}")
        mask = None
        if attention_mask is not None:
            attention_mask = attention_mask.to(torch.bool)
            if position_ids is None:
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, past:]
            # (B, 1, T, S): causal AND key is a real token; a query may always see itself so that
            # padding rows never softmax over nothing (their outputs are ignored anyway).
            allowed = torch.ones(T, S, dtype=torch.bool, device=idx.device)
            if self.config.causal:
                allowed = allowed.tril(diagonal=past)
            mask = allowed & attention_mask[:, None, None, :]
            mask = mask | torch.eye(T, S, dtype=torch.bool, device=idx.device).roll(past, dims=1)
        elif past > 0 and T > 1:  # a chunk after cached positions: causal with an offset
            mask = torch.ones(T, S, dtype=torch.bool, device=idx.device).tril(diagonal=past)[None, None]
        if position_ids is None:
            position_ids = torch.arange(past, S, device=idx.device)[None]  # (1, T)
        h = self.transformer(idx, position_ids, mask, cache)
        if cache is not None:
            cache.length = S
        return h

    def transformer(self, idx: torch.Tensor, position_ids: torch.Tensor, mask: torch.Tensor | None = None,
                    cache=None) -> torch.Tensor:
        """Embeddings -> blocks -> final norm, for ids (B, T) at position_ids (B or 1, T) under an
        explicit attention mask (B or 1, 1, T, S) or None (causal): (B, T, C). `hidden_states` derives
        positions and mask from a padding mask and the cache; a static decode step
        (inference/static_decode.py) brings its own."""
        x = self.embed(idx, position_ids)  # (B, T, C)
        rope = None
        if self.config.position == "rope":
            rope = rope_tables(position_ids, self.config.head_dim, self.config.rope_theta, self.config.rope_scaling)
        for i, block in enumerate(self.blocks):
            x = block(x, mask, cache, i, rope)
        return self.final_norm(x)

    def embed(self, idx: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings plus absolute positions (learned or sinusoidal; rotary ones are added
        inside attention instead), with dropout: (B, T) -> (B, T, C)."""
        x = self.tok_emb(idx)
        if self.config.position == "learned":
            x = x + self.pos_emb(position_ids)
        elif self.config.position == "sinusoidal":
            x = x + self.pos_table[position_ids]
        return self.drop_emb(x)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """Hidden states (..., C) -> logits (..., V): the LM head, then the soft cap when configured
        (c * tanh(z / c) keeps every logit inside (-c, c); Gemma 2, Team et al. 2024)."""
        z = self.out_head(h)
        cap = self.config.logit_softcap
        return z if cap is None else cap * torch.tanh(z / cap)

    def forward(self, idx: torch.Tensor, **kwargs) -> torch.Tensor:
        """Token ids (B, T) -> logits (B, T, V). Keyword arguments as in `hidden_states`."""
        return self.logits(self.hidden_states(idx, **kwargs))

    def loss(self, idx: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100, impl: str = "auto",
             **kwargs) -> torch.Tensor:
        """Mean next-token cross-entropy of targets (B, T) given idx (B, T). impl: the loss path of
        `models.loss.lm_loss` ("auto": chunked on a CPU, never the full logits; fused on a GPU)."""
        h = self.hidden_states(idx, **kwargs)  # (B, T, C)
        return self.head_loss(h.flatten(0, 1), targets.flatten(), ignore_index, impl)

    def head_loss(self, h: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100,
                  impl: str = "auto") -> torch.Tensor:
        """Mean cross-entropy of the head's logits of hidden states h (N, C) against targets (N,),
        computed as `logits` computes them (soft cap included) without materialising them where
        impl allows: every loss on this head (next-token, masked tokens, seq2seq, a classifier's
        auxiliary LM loss) goes through here, so training and inference see the same logits."""
        return lm_loss(h, self.out_head.weight, targets, ignore_index, impl, softcap=self.config.logit_softcap)

    # ----------------------------------------------------------------------------------------------
    # accounting

    def num_parameters(self, non_embedding: bool = False) -> int:
        """Unique parameters (a tied head counts once); non_embedding drops the position table."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding and self.config.position == "learned":
            n -= self.pos_emb.weight.numel()
        return n

    def parameter_breakdown(self) -> dict[str, int]:
        return parameter_groups(self)

    def flops_per_token(self, seq_len: int | None = None, training: bool = True) -> float:
        """Matmul FLOPs per token (Kaplan et al. 2020 / PaLM appendix B): forward = 2 * weights used
        in matmuls + 4 * n_layers * seq_len * n_heads * head_dim (= emb_dim for GPT-2) for attention
        scores and the weighted sum; training (forward + backward) is three times the forward."""
        return flops_per_token(self.config, seq_len, training)


def parameter_groups(model: nn.Module) -> dict[str, int]:
    """Parameters per accounting group (embeddings, attention, mlp, norms, head) of any model built
    from these parts; tied or shared tensors count once. Every norm's scale is under "norms", also
    the query/key norms inside attention."""
    groups = {"embeddings": 0, "attention": 0, "mlp": 0, "norms": 0, "head": 0}
    for name, p in model.named_parameters():
        module = name.split(".")[-2] if "." in name else name  # "blocks.0.attn.q_norm.weight" -> "q_norm"
        if "tok_emb" in name or "pos_emb" in name:
            groups["embeddings"] += p.numel()
        elif "norm" in module:
            groups["norms"] += p.numel()
        elif ".attn." in name or ".cross_attn." in name:
            groups["attention"] += p.numel()
        elif ".mlp." in name:
            groups["mlp"] += p.numel()
        else:
            groups["head"] += p.numel()
    return groups


def flops_per_token(config: GPTConfig, seq_len: int | None = None, training: bool = True) -> float:
    """Matmul FLOPs per token: see `GPT.flops_per_token`. Attention scores and the weighted sum
    cost 2 * seq_len * n_heads * head_dim each per layer (n_heads * head_dim is emb_dim unless
    head_dim is set otherwise, as in Qwen3)."""
    C, L = config.emb_dim, config.n_layers
    T = seq_len or config.context_length
    q_dim, kv_dim = config.n_heads * config.head_dim, config.kv_heads * config.head_dim
    mlp_matrices = 3 if config.mlp == "swiglu" else 2
    per_block = C * (q_dim + 2 * kv_dim) + q_dim * C + mlp_matrices * C * config.hidden_dim  # qkv, proj, mlp
    matmul_weights = L * per_block + C * config.vocab_size  # + LM head
    forward = 2 * matmul_weights + 4 * L * T * q_dim
    return 3.0 * forward if training else float(forward)
