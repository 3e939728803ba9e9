"""The encoder-decoder transformer (Vaswani et al. 2017, "Attention Is All You Need"), for translation,
and its decoding (greedy and beam search).

The third member of the family beside the GPT decoder and the BERT-style encoder (gpt.py with
causal=False), built from the same parts:

    source ids (B, S) -> encoder: a GPT body with causal=False (bidirectional blocks) -> memory (B, S, C)
    [end-of-text] + target ids (B, T) -> decoder: causal self-attention, cross-attention to the memory,
    feed-forward, per block -> final norm -> head tied to the shared token embedding -> logits (B, T, V)
    loss: cross-entropy against the target ids followed by end-of-text (teacher forcing)

Both stacks are `GPT` instances: the encoder is used whole (`hidden_states` with a padding mask),
the decoder's blocks are `Block(config, cross_attention=True)`, and its embedding code (`GPT.embed`)
and final norm are reused. One token embedding serves the encoder input, the decoder input and the
output projection (section 3.4 of the paper: one vocabulary for both languages). Positions are the
config's: learned, sinusoidal (the paper's) or rotary. The decoder starts from <|endoftext|>
(GPT-2's convention for "beginning of text") and stops when it predicts it again.

Decoding: `greedy_decode` (batched, with the decoder's KV cache) and `beam_search` (beam size k,
length-normalised scores, shrinking beam: beam 1 is exactly greedy). Training is
`recipes/seq2seq.py`; files are `checkpoint/kinds.py` (kind "seq2seq").
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from scratchllm.errors import ScratchLLMError
from scratchllm.models.config import GPTConfig
from scratchllm.models.gpt import GPT, Block, KVCache, flops_per_token, init_weights, rope_tables
from scratchllm.models.loss import IGNORE_INDEX


class EncoderDecoder(nn.Module):
    """Encoder (bidirectional GPT blocks) + decoder (causal blocks with cross-attention), one config.

    Both stacks have `config.n_layers` blocks of the same width. The token embedding is shared, and
    so is the output head (tied to it) when `config.tie_embeddings` (the default and the paper's
    choice); `config.causal` is ignored (the encoder is never causal, the decoder always is).
    """

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        # The encoder's own head is never used: tying it makes it an alias, not V x C more weights.
        self.encoder = GPT(dataclasses.replace(config, causal=False, tie_embeddings=True))
        self.decoder = GPT(dataclasses.replace(config, causal=True))
        self.decoder.blocks = nn.ModuleList(Block(self.decoder.config, cross_attention=True) for _ in range(config.n_layers))
        init_weights(self.decoder.blocks, config)  # as GPT initialises its own blocks
        self.decoder.tok_emb = self.encoder.tok_emb  # one vocabulary, one embedding
        if config.tie_embeddings:
            self.decoder.out_head.weight = self.encoder.tok_emb.weight

    # ---- forward passes ---------------------------------------------------------------------------

    def encode(self, src: torch.Tensor, src_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Source ids (B, S), right-padded, with src_mask (B, S) 1 = real token -> memory (B, S, C)."""
        if src_mask is not None and bool(src_mask.all()):
            src_mask = None  # no padding: the unmasked fast path
        return self.encoder.hidden_states(src, attention_mask=src_mask)

    def decode(self, tgt: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor | None = None,
               cache: KVCache | None = None) -> torch.Tensor:
        """Decoder input ids (B, T) attending to memory (B, S, C) -> final-normed hidden states (B, T, C).

        memory_mask: bool (B, 1, 1, S), True = a real source token (see `memory_mask`). cache: the
        decoder's self-attention keys/values of earlier positions (cross-attention keys/values are
        recomputed from the memory)."""
        dec = self.decoder
        B, T = tgt.shape
        past = cache.length if cache is not None else 0
        if past + T > self.config.context_length:
            raise ScratchLLMError(f"decoder input of {past + T} tokens exceeds the context length {self.config.context_length}")
        positions = torch.arange(past, past + T, device=tgt.device)[None]  # (1, T)
        x = dec.embed(tgt, positions)  # (B, T, C)
        mask = None  # causal inside attention; a chunk after cached positions needs the offset mask
        if past > 0 and T > 1:
            mask = torch.ones(T, past + T, dtype=torch.bool, device=tgt.device).tril(diagonal=past)[None, None]
        rope = None
        if self.config.position == "rope":
            rope = rope_tables(positions, self.config.head_dim, self.config.rope_theta, self.config.rope_scaling)
        for i, block in enumerate(dec.blocks):
            x = block(x, mask, cache, i, rope, memory=memory, memory_mask=memory_mask)
        if cache is not None:
            cache.length = past + T
        return dec.final_norm(x)

    def forward(self, src: torch.Tensor, tgt: torch.Tensor, src_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Source ids (B, S) and decoder input ids (B, T) -> next-token logits (B, T, V)."""
        memory = self.encode(src, src_mask)
        return self.decoder.logits(self.decode(tgt, memory, memory_mask(src_mask)))

    def loss(self, src: torch.Tensor, tgt_in: torch.Tensor, tgt_out: torch.Tensor,
             src_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Mean cross-entropy of tgt_out (B, T) (-100 = padding) given the source and tgt_in."""
        memory = self.encode(src, src_mask)
        h = self.decode(tgt_in, memory, memory_mask(src_mask))  # (B, T, C)
        return self.decoder.head_loss(h.flatten(0, 1), tgt_out.flatten(), IGNORE_INDEX)

    # ---- accounting --------------------------------------------------------------------------------

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())  # shared tensors are listed once

    def flops_per_token(self, seq_len: int | None = None, training: bool = True) -> float:
        """Matmul FLOPs per target token with a source of the same length (as `model.flops_per_token`):
        the encoder without a head, plus the decoder with its cross-attention (the same weights as
        self-attention, and scores over the source)."""
        c = self.config
        T = seq_len or c.context_length
        q_dim, kv_dim = c.n_heads * c.head_dim, c.kv_heads * c.head_dim
        head = 2 * c.emb_dim * c.vocab_size
        cross = c.n_layers * (2 * (c.emb_dim * (q_dim + 2 * kv_dim) + q_dim * c.emb_dim) + 4 * T * q_dim)
        one_stack = flops_per_token(c, T, training=False)
        forward = (one_stack - head) + one_stack + cross
        return 3.0 * forward if training else float(forward)

    # ---- weights shared between the stacks -------------------------------------------------------

    def shared_names(self) -> set[str]:
        """State-dict names of the shared embedding other than encoder.tok_emb.weight (stored once)."""
        names = {"encoder.out_head.weight", "decoder.tok_emb.weight"}
        if self.config.tie_embeddings:
            names.add("decoder.out_head.weight")
        return names


def memory_mask(src_mask: torch.Tensor | None) -> torch.Tensor | None:
    """Source padding mask (B, S), 1 = real -> cross-attention mask (B, 1, 1, S), True = may attend."""
    if src_mask is None or bool(src_mask.all()):
        return None
    return src_mask.to(torch.bool)[:, None, None, :]



def pad_sources(sources: Sequence[Sequence[int]], pad_id: int, device: Any = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad source id lists -> (ids (B, S), mask (B, S) with 1 for real tokens)."""
    width = max(len(s) for s in sources)
    ids = torch.full((len(sources), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sources), width), dtype=torch.long)
    for row, s in enumerate(sources):
        ids[row, : len(s)] = torch.as_tensor(s, dtype=torch.long)
        mask[row, : len(s)] = 1
    return ids.to(device), mask.to(device)



# --------------------------------------------------------------------------------------------------
# Decoding


class DecoderSteps:
    """Next-token log-probabilities for a growing batch of decoder inputs, reusing the KV cache.

    Call with tokens (n, t) — all rows the same length, t one more than at the previous call — and
    `parents` (n,): the row of the previous call that each row extends (beam search reorders and
    duplicates rows; None keeps them). Without a cache every call recomputes the whole prefix.
    memory (1 or n, S, C) and its mask are broadcast over the rows when they hold one source."""

    def __init__(self, model: EncoderDecoder, memory: torch.Tensor, mem_mask: torch.Tensor | None,
                 use_cache: bool = True, max_len: int | None = None):
        self.model, self.memory, self.mem_mask = model, memory, mem_mask
        self.cache = None
        if use_cache:
            max_len = max_len or model.config.context_length
            self.cache = KVCache.allocate(model.decoder.config, memory.shape[0], max_len, memory.device, memory.dtype)

    def __call__(self, tokens: torch.Tensor, parents: torch.Tensor | None = None) -> torch.Tensor:
        n = tokens.shape[0]
        memory, mask = self.memory, self.mem_mask
        if memory.shape[0] != n:  # one source, n hypotheses
            memory = memory.expand(n, -1, -1)
            mask = mask.expand(n, -1, -1, -1) if mask is not None else None
        if self.cache is None:
            h = self.model.decode(tokens, memory, mask)[:, -1]  # (n, C)
        else:
            if parents is not None:
                self.cache.reorder(parents)
            new = tokens if self.cache.length == 0 else tokens[:, -1:]
            h = self.model.decode(new, memory, mask, cache=self.cache)[:, -1]
        return F.log_softmax(self.model.decoder.logits(h).float(), dim=-1)  # (n, V)


def _check_max_new(model: EncoderDecoder, max_new_tokens: int | None) -> int:
    limit = model.config.context_length - 1  # the decoder reads end-of-text + what it has generated
    if max_new_tokens is None:
        return limit
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 1:
        raise ScratchLLMError(f"max_new_tokens {max_new_tokens!r}: expected an integer >= 1")
    if max_new_tokens > limit:
        raise ScratchLLMError(f"max_new_tokens {max_new_tokens}: at most context_length - 1 = {limit} for this model")
    return max_new_tokens


@torch.no_grad()
def greedy_decode(model: EncoderDecoder, sources: Sequence[Sequence[int]], eot_id: int,
                  max_new_tokens: int | None = None, use_cache: bool = True) -> list[list[int]]:
    """The most likely next token at every step, for a batch of sources: target ids without end-of-text.

    Sources are right-padded (with a padding mask); each row stops at its end-of-text, the batch when
    all rows have (or after max_new_tokens, default context_length - 1)."""
    max_new_tokens = _check_max_new(model, max_new_tokens)
    device = model.encoder.tok_emb.weight.device
    src, src_mask = pad_sources(sources, eot_id, device)
    memory = model.encode(src, src_mask)
    steps = DecoderSteps(model, memory, memory_mask(src_mask), use_cache, max_len=max_new_tokens + 1)
    tokens = torch.full((len(sources), 1), eot_id, dtype=torch.long, device=device)  # (B, 1): start
    done = torch.zeros(len(sources), dtype=torch.bool, device=device)
    for _ in range(max_new_tokens):
        next_id = steps(tokens).argmax(-1)  # (B,)
        next_id = torch.where(done, torch.full_like(next_id, eot_id), next_id)
        tokens = torch.cat([tokens, next_id[:, None]], dim=1)
        done |= next_id == eot_id
        if bool(done.all()):
            break
    out = []
    for row in tokens[:, 1:].tolist():
        out.append(row[: row.index(eot_id)] if eot_id in row else row)
    return out


@dataclass
class Hypothesis:
    tokens: list[int]  # generated ids, without the start token and the final end-of-text
    log_prob: float  # sum of the log-probabilities of the generated ids (end-of-text included)
    score: float  # log_prob / length ** length_penalty, length counting end-of-text
    finished: bool  # ended with end-of-text (False: stopped by max_new_tokens)


def beam_search(step: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor], bos_id: int, eot_id: int,
                beam_size: int = 4, max_new_tokens: int = 64, length_penalty: float = 1.0,
                device: Any = "cpu") -> list[Hypothesis]:
    """Beam search over `step(tokens (n, t), parents (n,)) -> log-probs (n, V)`; hypotheses best first.

    At every step the k best one-token extensions of the live hypotheses (by total log-probability)
    are kept, where k = beam_size minus the hypotheses already finished: an extension ending in
    end-of-text is finished and leaves the beam, which shrinks, and the search ends when nothing is
    left alive (or after max_new_tokens, when the live ones count as unfinished). So beam_size
    hypotheses are completed in all and beam size 1 is greedy decoding. They are ranked by
    log-probability / length ** length_penalty (Wu et al. 2016, section 7, in its simplest form):
    0 ranks by raw log-probability, which favours short outputs since every token costs some; 1
    (the default) by the mean log-probability per token.
    """
    if not isinstance(beam_size, int) or beam_size < 1:
        raise ScratchLLMError(f"beam size {beam_size!r}: expected an integer >= 1")
    if not length_penalty >= 0:
        raise ScratchLLMError(f"length_penalty {length_penalty!r}: expected a number >= 0")
    alive: list[list[int]] = [[bos_id]]
    alive_lp = torch.zeros(1, dtype=torch.float64, device=device)
    parents: torch.Tensor | None = None
    finished: list[Hypothesis] = []

    def score(lp: float, length: int) -> float:
        return lp / max(length, 1) ** length_penalty

    for _ in range(max_new_tokens):
        logp = step(torch.tensor(alive, dtype=torch.long, device=device), parents).double()  # (n, V)
        V = logp.shape[-1]
        total = (alive_lp[:, None] + logp).flatten()  # (n * V,)
        k = min(beam_size - len(finished), total.numel())
        best = total.topk(k)
        new_alive, new_lp, new_parents = [], [], []
        for lp, flat in zip(best.values.tolist(), best.indices.tolist()):
            row, token = divmod(flat, V)
            seq = alive[row] + [token]
            if token == eot_id:
                finished.append(Hypothesis(seq[1:-1], lp, score(lp, len(seq) - 1), True))
            elif lp > float("-inf"):
                new_alive.append(seq)
                new_lp.append(lp)
                new_parents.append(row)
        if not new_alive:
            alive = []
            break
        alive = new_alive
        alive_lp = torch.tensor(new_lp, dtype=torch.float64, device=device)
        parents = torch.tensor(new_parents, dtype=torch.long, device=device)
    for seq, lp in zip(alive, alive_lp.tolist()):
        finished.append(Hypothesis(seq[1:], lp, score(lp, len(seq) - 1), False))
    return sorted(finished, key=lambda h: h.score, reverse=True)


@torch.no_grad()
def beam_decode(model: EncoderDecoder, source: Sequence[int], eot_id: int, beam_size: int = 4,
                max_new_tokens: int | None = None, length_penalty: float = 1.0, use_cache: bool = True) -> list[Hypothesis]:
    """Beam search on one source with the model's decoder; hypotheses best first."""
    max_new_tokens = _check_max_new(model, max_new_tokens)
    device = model.encoder.tok_emb.weight.device
    src = torch.tensor([list(source)], dtype=torch.long, device=device)
    memory = model.encode(src)  # (1, S, C)
    steps = DecoderSteps(model, memory, None, use_cache, max_len=max_new_tokens + 1)
    return beam_search(steps, eot_id, eot_id, beam_size, max_new_tokens, length_penalty, device)

