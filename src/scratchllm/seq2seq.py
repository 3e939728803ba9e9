"""The encoder-decoder transformer (Vaswani et al. 2017, "Attention Is All You Need"), for translation.

Where it sits: the third member of the family beside the GPT decoder (`model.py`) and the BERT-style
encoder (`mlm.py`), built from the same parts. It is trained with `scratchllm pretrain --objective
seq2seq --data pairs.tsv` on `source<TAB>target` lines and used with `scratchllm translate`.

    source ids (B, S) -> encoder: a GPT body with causal=False (bidirectional blocks) -> memory (B, S, C)
    [end-of-text] + target ids (B, T) -> decoder: causal self-attention, cross-attention to the memory,
    feed-forward, per block -> final norm -> head tied to the shared token embedding -> logits (B, T, V)
    loss: cross-entropy against the target ids followed by end-of-text (teacher forcing)

Both stacks are `model.GPT` instances: the encoder is used whole (`hidden_states` with a padding
mask), the decoder's blocks are `Block(config, cross_attention=True)`, and its embedding code
(`GPT.embed`) and final norm are reused. One token embedding serves the encoder input, the decoder
input and the output projection (section 3.4 of the paper: one vocabulary for both languages).
Positions are the config's: learned, sinusoidal (the paper's) or rotary. The decoder starts from
<|endoftext|> (GPT-2's convention for "beginning of text") and stops when it predicts it again.

Decoding: `greedy_decode` (batched, with the decoder's KV cache) and `beam_search` (beam size k,
length-normalised scores, shrinking beam: beam 1 is exactly greedy). Here too: reading and encoding
pairs, `Seq2SeqTask` (the task interface of `scratchllm.train.fit`), saving and loading (a scratchllm
model directory with "objective": "seq2seq"), `pretrain_seq2seq` and `translate`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from scratchllm.config import GPTConfig
from scratchllm.errors import ScratchLLMError
from scratchllm.files import read_text
from scratchllm.model import GPT, Block, KVCache, chunked_cross_entropy, rope_tables

if TYPE_CHECKING:
    from scratchllm.tokenizer import Tokenizer

OBJECTIVE = "seq2seq"
IGNORE_INDEX = -100


# --------------------------------------------------------------------------------------------------
# The model


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
        self.decoder.blocks.apply(GPT._init_weights)
        for name, p in self.decoder.blocks.named_parameters():  # GPT-2's scaled init of residual projections
            if name.endswith(("attn.proj.weight", "mlp.proj.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layers))
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
        rope = rope_tables(positions, self.config.head_dim, self.config.rope_theta) if self.config.position == "rope" else None
        for i, block in enumerate(dec.blocks):
            x = block(x, mask, cache, i, rope, memory=memory, memory_mask=memory_mask)
        if cache is not None:
            cache.length = past + T
        return dec.final_norm(x)

    def forward(self, src: torch.Tensor, tgt: torch.Tensor, src_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Source ids (B, S) and decoder input ids (B, T) -> next-token logits (B, T, V)."""
        memory = self.encode(src, src_mask)
        return self.decoder.out_head(self.decode(tgt, memory, memory_mask(src_mask)))

    def loss(self, src: torch.Tensor, tgt_in: torch.Tensor, tgt_out: torch.Tensor,
             src_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Mean cross-entropy of tgt_out (B, T) (-100 = padding) given the source and tgt_in."""
        memory = self.encode(src, src_mask)
        h = self.decode(tgt_in, memory, memory_mask(src_mask))  # (B, T, C)
        return chunked_cross_entropy(h.flatten(0, 1), self.decoder.out_head.weight, tgt_out.flatten(), IGNORE_INDEX)

    # ---- accounting --------------------------------------------------------------------------------

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())  # shared tensors are listed once

    def flops_per_token(self, seq_len: int | None = None, training: bool = True) -> float:
        """Matmul FLOPs per target token with a source of the same length (as `model.flops_per_token`):
        the encoder without a head, plus the decoder with its cross-attention (the same weights as
        self-attention, and scores over the source)."""
        from scratchllm.model import flops_per_token

        c = self.config
        T = seq_len or c.context_length
        q_dim, kv_dim = c.n_heads * c.head_dim, c.kv_heads * c.head_dim
        head = 2 * c.emb_dim * c.vocab_size
        cross = c.n_layers * (2 * (c.emb_dim * (q_dim + 2 * kv_dim) + q_dim * c.emb_dim) + 4 * T * c.emb_dim)
        one_stack = flops_per_token(c, T, training=False)
        forward = (one_stack - head) + one_stack + cross
        return 3.0 * forward if training else float(forward)

    # ---- files ------------------------------------------------------------------------------------

    def _aliases(self) -> set[str]:
        """State-dict names of the shared embedding other than encoder.tok_emb.weight (stored once)."""
        names = {"encoder.out_head.weight", "decoder.tok_emb.weight"}
        if self.config.tie_embeddings:
            names.add("decoder.out_head.weight")
        return names

    def save_pretrained(self, directory: str | os.PathLike[str], tokenizer: "Tokenizer | None" = None,
                        extra: dict[str, Any] | None = None, add_files: Callable[[Path], None] | None = None) -> Path:
        """Write a scratchllm model directory: config.json ({"format": "scratchllm", "model": config,
        "tokenizer": spec, "objective": "seq2seq", ...extra}), model.safetensors (encoder.* and
        decoder.* tensors, the shared embedding once) and tokenizer.json for a trained tokenizer.
        Written into a temporary directory that replaces `directory` at once (checkpoint.atomic_directory)."""

        from safetensors.torch import save_file

        from scratchllm.checkpoint import (CONFIG_FILE, FORMAT, VERSION, WEIGHTS_FILE, _RESERVED_KEYS,
                                           _tokenizer_spec, _write_json, atomic_directory, write_tokenizer)

        extra = dict(extra or {})
        clash = [k for k in extra if k in _RESERVED_KEYS]
        if clash:
            raise ScratchLLMError(f"save_pretrained: extra key(s) {clash} are reserved ({', '.join(_RESERVED_KEYS)})")
        if tokenizer is not None and tokenizer.vocab_size > self.config.vocab_size:
            raise ScratchLLMError(f"save_pretrained: the tokenizer has {tokenizer.vocab_size} ids but the model's "
                                  f"vocab_size is {self.config.vocab_size}")
        aliases = self._aliases()
        state = {k: v.detach().to("cpu").contiguous() for k, v in self.state_dict().items() if k not in aliases}
        spec = _tokenizer_spec(tokenizer)
        with atomic_directory(directory) as tmp:
            spec = write_tokenizer(tmp, tokenizer, spec)
            _write_json(tmp / CONFIG_FILE, {"format": FORMAT, "version": VERSION, "model": self.config.to_dict(),
                                             "tokenizer": spec, **extra, "objective": OBJECTIVE,
                                             "architecture": "encoder-decoder"})
            save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
            if add_files is not None:
                add_files(tmp)
        return Path(directory)

    def load_weights(self, directory: str | os.PathLike[str]) -> None:
        """Copy a saved directory's weights into this model in place, exactly (the training loop's resume)."""
        from scratchllm.checkpoint import WEIGHTS_FILE, _read_safetensors

        path = Path(directory) / WEIGHTS_FILE
        state = _read_safetensors(path)
        expected = {k: tuple(v.shape) for k, v in self.state_dict().items() if k not in self._aliases()}
        for name, shape in expected.items():
            if name not in state:
                raise ScratchLLMError(f"{path}: missing tensor {name!r} of shape {shape} (the config does not match the weights)")
            if tuple(state[name].shape) != shape:
                raise ScratchLLMError(f"{path}: tensor {name!r} has shape {tuple(state[name].shape)}, expected {shape} "
                                      "(the config does not match the weights)")
        unexpected = sorted(set(state) - set(expected))
        if unexpected:
            raise ScratchLLMError(f"{path}: unexpected tensor {unexpected[0]!r} for this encoder-decoder")
        self.load_state_dict(state, strict=False)


def memory_mask(src_mask: torch.Tensor | None) -> torch.Tensor | None:
    """Source padding mask (B, S), 1 = real -> cross-attention mask (B, 1, 1, S), True = may attend."""
    if src_mask is None or bool(src_mask.all()):
        return None
    return src_mask.to(torch.bool)[:, None, None, :]


def load_seq2seq(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> tuple[EncoderDecoder, "Tokenizer"]:
    """(model in eval mode, tokenizer) from a model directory written by `EncoderDecoder.save_pretrained`
    or a run directory of `pretrain --objective seq2seq` (its final/, best/ or newest checkpoint)."""
    from scratchllm.checkpoint import CONFIG_FILE, load_tokenizer, read_model_config, resolve_model_dir

    d = resolve_model_dir(path)
    data = read_model_config(d)
    if data.get("objective") != OBJECTIVE:
        raise ScratchLLMError(
            f"{d}: not an encoder-decoder model (its {CONFIG_FILE} has no \"objective\": \"seq2seq\"); "
            "train one with `scratchllm pretrain --objective seq2seq`"
        )
    config = GPTConfig.from_dict(data["model"], source=f"{d / CONFIG_FILE} field 'model'")
    model = EncoderDecoder(config)
    model.load_weights(d)
    try:
        model.to(device)
    except (RuntimeError, AssertionError) as exc:
        raise ScratchLLMError(f"device {str(device)!r}: cannot move the model there ({exc})") from None
    return model.eval(), load_tokenizer(d)


# --------------------------------------------------------------------------------------------------
# Pairs: reading, encoding, batching


def load_pairs(path: str | os.PathLike[str]) -> list[tuple[str, str]]:
    """`source<TAB>target` lines of a UTF-8 file (blank lines skipped) -> [(source, target), ...]."""
    path = Path(path)
    if not path.is_file():
        raise ScratchLLMError(f"{path}: no such pairs file (expected source<TAB>target lines)")
    text = read_text(path)
    pairs = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 2:
            raise ScratchLLMError(f"{path}:{number}: expected source<TAB>target (2 tab-separated fields), "
                                  f"got {len(fields)} field(s)")
        source, target = fields
        if not source.strip() or not target.strip():
            raise ScratchLLMError(f"{path}:{number}: empty {'source' if not source.strip() else 'target'}")
        pairs.append((source, target))
    if not pairs:
        raise ScratchLLMError(f"{path}: no source<TAB>target pairs in the file")
    return pairs


def encode_pairs(tokenizer: "Tokenizer", pairs: Sequence[tuple[str, str]], context_length: int,
                 what: str = "pairs") -> list[tuple[list[int], list[int]]]:
    """[(source ids, target ids + end-of-text)], cut to fit: sources to context_length tokens, targets
    to context_length (the decoder reads end-of-text + target[:-1]). Special-token text is plain text."""
    eot = tokenizer.eot_id
    sources = tokenizer.encode_batch([s for s, _ in pairs], disallowed_special=())
    targets = tokenizer.encode_batch([t for _, t in pairs], disallowed_special=())
    out, cut = [], 0
    for s, t in zip(sources, targets):
        t = t + [eot]
        cut += len(s) > context_length or len(t) > context_length
        out.append((s[:context_length], t[:context_length]))
    if cut:
        print(f"warning: {what}: cut {cut} of {len(out)} pairs to the context length {context_length} "
              "(a cut target loses its end-of-text)", file=sys.stderr)
    return out


def pad_sources(sources: Sequence[Sequence[int]], pad_id: int, device: Any = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad source id lists -> (ids (B, S), mask (B, S) with 1 for real tokens)."""
    width = max(len(s) for s in sources)
    ids = torch.full((len(sources), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sources), width), dtype=torch.long)
    for row, s in enumerate(sources):
        ids[row, : len(s)] = torch.as_tensor(s, dtype=torch.long)
        mask[row, : len(s)] = 1
    return ids.to(device), mask.to(device)


def collate_pairs(items: Sequence[tuple[Sequence[int], Sequence[int]]], bos_id: int, pad_id: int,
                  device: Any = "cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(source, target + eot) pairs -> src (B, S), src_mask (B, S), tgt_in (B, T), tgt_out (B, T).

    tgt_in = [bos] + target (teacher forcing), tgt_out = target + eot, padded with -100; right
    padding needs no decoder mask, since a causal query never sees the positions after it."""
    src, src_mask = pad_sources([s for s, _ in items], pad_id, device)
    width = max(len(t) for _, t in items)
    tgt_in = torch.full((len(items), width), pad_id, dtype=torch.long)
    tgt_out = torch.full((len(items), width), IGNORE_INDEX, dtype=torch.long)
    for row, (_, t) in enumerate(items):
        tgt_in[row, : len(t)] = torch.as_tensor([bos_id, *t[:-1]], dtype=torch.long)
        tgt_out[row, : len(t)] = torch.as_tensor(t, dtype=torch.long)
    return src, src_mask, tgt_in.to(device), tgt_out.to(device)


def split_pairs(pairs: Sequence[Any], val_fraction: float, seed: int) -> tuple[list[Any], list[Any]]:
    """A seeded shuffle cut into (train, validation); at least one validation pair when val_fraction > 0."""
    if not (isinstance(val_fraction, (int, float)) and 0 <= val_fraction < 1):
        raise ScratchLLMError(f"val_fraction {val_fraction!r}: expected a number in [0, 1)")
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    n_val = max(1, round(len(pairs) * val_fraction)) if val_fraction > 0 else 0
    if len(pairs) - n_val < 1:
        raise ScratchLLMError(f"{len(pairs)} pair(s): too few to keep {n_val} for validation and train on the rest")
    return [pairs[i] for i in order[n_val:]], [pairs[i] for i in order[:n_val]]


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
        return F.log_softmax(self.model.decoder.out_head(h).float(), dim=-1)  # (n, V)


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


def translate(model: EncoderDecoder, tokenizer: "Tokenizer", text: str, beam: int = 1,
              max_new_tokens: int | None = None, length_penalty: float = 1.0, use_cache: bool = True) -> str:
    """The model's output for `text`: greedy with beam=1, else the best beam-search hypothesis."""
    if not isinstance(text, str) or not text.strip():
        raise ScratchLLMError("the text to translate is empty")
    if not isinstance(beam, int) or isinstance(beam, bool) or beam < 1:
        raise ScratchLLMError(f"beam {beam!r}: expected an integer >= 1")
    ids = tokenizer.encode(text, disallowed_special=())
    if len(ids) > model.config.context_length:
        raise ScratchLLMError(f"the text to translate is {len(ids)} tokens, more than the model's context of "
                              f"{model.config.context_length}")
    eot = tokenizer.eot_id
    if beam == 1:
        out = greedy_decode(model, [ids], eot, max_new_tokens, use_cache)[0]
    else:
        out = beam_decode(model, ids, eot, beam, max_new_tokens, length_penalty, use_cache)[0].tokens
    return tokenizer.decode(out)


def translate_command(model: str, text: str, beam: int = 1, max_new_tokens: int | None = None,
                      length_penalty: float = 1.0, device: str = "cpu") -> str:
    """`scratchllm translate`: load the model, print its translation of `text`."""
    if not isinstance(text, str) or not text.strip():
        raise ScratchLLMError("--text is empty; give the source text to translate")
    net, tokenizer = load_seq2seq(model, device=device)
    result = translate(net, tokenizer, text, beam, max_new_tokens, length_penalty)
    print(result, flush=True)
    return result


# --------------------------------------------------------------------------------------------------
# Training: the task and the pretraining entry point


class Seq2SeqTask:
    """Translation pairs as a `scratchllm.train.fit` task: teacher-forced cross-entropy on the targets.

    Batches come from `data.SequentialLoader` (a seeded permutation per epoch, exact resume).
    Evaluation: val_loss and val_ppl over up to eval_batches validation batches, and val_exact_match,
    the share of the first `exact_match_pairs` validation pairs whose greedy output equals the target.
    """

    best_metric = "val_loss"
    higher_is_better = False

    def __init__(self, train_pairs: list[tuple[list[int], list[int]]], val_pairs: list[tuple[list[int], list[int]]],
                 batch_size: int, tokenizer: "Tokenizer", seed: int = 1337, device: Any = "cpu",
                 eval_batches: int = 20, exact_match_pairs: int = 100):
        from scratchllm.data import SequentialLoader

        if not train_pairs:
            raise ScratchLLMError("seq2seq: the training split is empty")
        self.train_pairs, self.val_pairs = train_pairs, val_pairs
        self.batch_size, self.tokenizer, self.device = batch_size, tokenizer, torch.device(device)
        self.eot = tokenizer.eot_id
        self.eval_batches, self.exact_match_pairs = eval_batches, exact_match_pairs
        self.loader = SequentialLoader(train_pairs, batch_size, shuffle=True, seed=seed, device=self.device,
                                       collate_fn=lambda items: collate_pairs(items, self.eot, self.eot))
        self._it = iter(self.loader)
        self.save_extra = {"objective": OBJECTIVE}

    def next_batch(self):
        try:
            return next(self._it)
        except StopIteration:  # end of an epoch: the loader has moved to the next permutation
            self._it = iter(self.loader)
            return next(self._it)

    def loss(self, model: EncoderDecoder, batch) -> torch.Tensor:
        src, src_mask, tgt_in, tgt_out = batch
        return model.loss(src, tgt_in, tgt_out, src_mask)

    def batch_tokens(self, batch) -> int:
        return int((batch[3] != IGNORE_INDEX).sum())

    def evaluate(self, model: EncoderDecoder) -> dict[str, float]:
        if not self.val_pairs:
            return {}
        loss_sum, n = 0.0, 0
        limit = len(self.val_pairs) if not self.eval_batches else self.eval_batches * self.batch_size
        for start in range(0, min(limit, len(self.val_pairs)), self.batch_size):
            src, src_mask, tgt_in, tgt_out = collate_pairs(self.val_pairs[start : start + self.batch_size],
                                                           self.eot, self.eot, self.device)
            tokens = int((tgt_out != IGNORE_INDEX).sum())
            loss_sum += float(model.loss(src, tgt_in, tgt_out, src_mask)) * tokens
            n += tokens
        loss = loss_sum / n
        return {"val_loss": loss, "val_ppl": math.exp(min(loss, 50.0)), "val_exact_match": self.exact_match(model)}

    def exact_match(self, model: EncoderDecoder) -> float:
        pairs = self.val_pairs[: self.exact_match_pairs]
        if not pairs:
            return float("nan")
        return exact_match(model, pairs, self.eot, self.batch_size)

    def sample(self, model: EncoderDecoder) -> str:
        if not self.val_pairs:
            return ""
        source, target = self.val_pairs[0]
        out = greedy_decode(model, [source], self.eot, min(len(target) + 8, model.config.context_length - 1))[0]
        dec = self.tokenizer.decode
        return f"source    {dec(source)!r}\noutput    {dec(out)!r}\nreference {dec(target[:-1])!r}"

    def state_dict(self) -> dict[str, Any]:
        return {"loader": self.loader.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loader.load_state_dict(state["loader"])
        self._it = iter(self.loader)


@torch.no_grad()
def exact_match(model: EncoderDecoder, pairs: Sequence[tuple[list[int], list[int]]], eot_id: int,
                batch_size: int = 64) -> float:
    """Share of (source, target + eot) pairs whose greedy output is exactly the target."""
    was_training = model.training
    model.eval()
    hits = 0
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        longest = max(len(t) for _, t in chunk)
        outs = greedy_decode(model, [s for s, _ in chunk], eot_id, min(longest + 4, model.config.context_length - 1))
        hits += sum(out == t[:-1] for out, (_, t) in zip(outs, chunk))
    model.train(was_training)
    return hits / len(pairs)


def pretrain_seq2seq(data, model, out, tokenizer: "Tokenizer", cfg, resume: bool = False,
                     val_fraction: float = 0.1) -> dict[str, Any]:
    """Train an encoder-decoder on a `source<TAB>target` file; what `scratchllm.train.pretrain(
    objective="seq2seq")` runs once it has resolved the run's settings. model: a preset, config.json,
    dict or GPTConfig (vocab_size comes from the tokenizer). A seeded val_fraction of the pairs is
    held out for validation loss and exact match."""
    from scratchllm.train import _resolve_model_config, fit, resolve_device

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ScratchLLMError("pretrain --objective seq2seq: runs in a single process (not under torchrun)")
    if Path(data).is_dir():
        raise ScratchLLMError(f"{data}: --objective seq2seq reads a source<TAB>target text file, not a DATADIR")
    eot = tokenizer.eot_id  # targets end with it; raises when the tokenizer lacks <|endoftext|>
    model_cfg = _resolve_model_config(model, tokenizer.vocab_size, cfg.context_length)
    device = resolve_device(cfg.device)
    pairs = load_pairs(data)
    train_text, val_text = split_pairs(pairs, val_fraction, cfg.seed)
    train = encode_pairs(tokenizer, train_text, model_cfg.context_length, "training pairs")
    val = encode_pairs(tokenizer, val_text, model_cfg.context_length, "validation pairs")
    torch.manual_seed(cfg.seed)
    net = EncoderDecoder(model_cfg)
    task = Seq2SeqTask(train, val, cfg.batch_size, tokenizer, seed=cfg.seed, device=device, eval_batches=cfg.eval_batches)
    extra = {
        "objective": OBJECTIVE,
        "data": {"path": str(Path(data).resolve()), "val_fraction": val_fraction, "pairs": len(pairs),
                 "train_pairs": len(train), "val_pairs": len(val), "end_of_text": eot},
        "tokenizer": {"vocab_size": tokenizer.vocab_size, **{k: v for k, v in tokenizer.spec.items() if k != "merges"}},
    }
    return fit(net, task, cfg, out, resume=resume, tokenizer=tokenizer, extra_config=extra)
