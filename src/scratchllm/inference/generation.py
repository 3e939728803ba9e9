"""Text generation: turning a trained model's next-token distributions into text.

This sits after the model and training in the pipeline: a prompt is encoded, the model predicts the
next token, a token is chosen from its logits (sampling.py: greedy, temperature, top-k, top-p),
appended, and the loop repeats. `sample_next` (sampling.py) is the one place every decode path
chooses a token, so rows of a padded head (`vocab_limit`) are cut there. The layers, each reusable on
its own:

- `decode_rows`: the batch decode loop (KV cache, left-padded batches, a context window that jumps
  when the sequence outgrows the model) over `RowState`s (rows.py), each row with its own tokens,
  sampling settings, RNG and stops. Chat and respond build on it; the server's continuous batch
  (engine.py) decodes the same rows its own way.
- `generate_tokens` / `generate_ids`: token ids in, token ids out.
- `generate` / `stream`: text in, text out; stops at one of the tokenizer's stop ids (<|endoftext|>;
  for a model with a chat template also its end-of-turn token, such as <|im_end|> or <|eot_id|>) or
  at a stop string, and `stream` yields whole characters only. They take the sampling settings as
  keywords and pass them on whole, as one `SamplingConfig` (`text_pieces`).

Decoding with the KV cache gives the same tokens as recomputing the whole window every step
(`use_cache=False`), also past the context window: both paths condition on exactly the tokens that
`window_start` names. A batch gives each prompt the same text as generating it alone.

Two cached decode loops give those tokens (`decoder=`): "eager", a cache that grows with the text
and every kernel launched from Python (on a CPU the decode kernels `checkpoint.load` chose by
measurement: models/decode_kernels.py), and "static", fixed-size buffers whose step is replayed as one CUDA graph on a
GPU (static_decode.py).
"auto" takes static on CUDA (unless autocast is on) and eager elsewhere.
"""

from __future__ import annotations

import warnings
from collections.abc import Collection, Iterator, Sequence

import torch

from scratchllm.errors import ScratchLLMError
from scratchllm.inference.config import GREEDY_BELOW, SamplingConfig, check_decoder, check_seed, check_top_k
from scratchllm.inference.rows import RowState, TextAssembler, sample_rows, stop_list
from scratchllm.inference.sampling import make_generators, sample_next
from scratchllm.inference.static_decode import acquire_decoder, release_decoder
from scratchllm.models.decode_kernels import matrix_vector_kernels
from scratchllm.models.decode_kernels import optimize_for_decoding  # noqa: F401  (importable from here too, as before)
from scratchllm.models.gpt import GPT, KVCache
from scratchllm.tokenizer.chat_template import ChatText

# The names below are importable from here as before the sampling rule and the row state moved out.
__all__ = ["GREEDY_BELOW", "RowState", "SamplingConfig", "TextAssembler", "decode_rows", "default_keep",
           "encode_prompt", "generate", "generate_ids", "generate_tokens", "make_generators", "optimize_for_decoding",
           "sample_next", "stream", "text_pieces", "text_rows", "window_start"]

# ------------------------------------------------------------------------------------------------
# The context window


def default_keep(context_length: int) -> int:
    """Tokens kept when the window jumps: three quarters of the context."""
    return max(1, context_length * 3 // 4)


def window_start(n: int, ctx: int, keep: int) -> int:
    """Index of the first token the model sees when `n` tokens exist: it conditions on tokens[s:n].

    GPT-2 has learned absolute positions, so a cached key belongs to the position it was computed
    at: a window sliding by one token would invalidate the whole cache at every step. Instead the
    window jumps. While n <= ctx it is the whole sequence. When token ctx + 1 arrives, the model
    restarts from the last `keep` tokens (the cache is re-filled with them in one forward pass) and
    the window grows again until it is full, then jumps again: a jump every p = ctx + 1 - keep
    tokens. keep = ctx is a true sliding window (a re-fill at every step); a small keep re-fills
    rarely but conditions on little context just after a jump.
    """
    if n <= ctx:
        return 0
    period = ctx + 1 - keep
    jumps = (n - ctx - 1) // period  # jumps before the latest one
    return ctx + 1 + jumps * period - keep


# ------------------------------------------------------------------------------------------------
# The batch decode loop


def _left_pad(windows: list[list[int]], device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Token windows of different lengths -> ids (B, W) padded on the left, mask (B, W) or None.

    Left padding puts every row's newest token in the last column, so one decode step appends one
    column for all rows. The mask (1 = real token) is None when no row is padded.
    """
    width = max(map(len, windows))
    if all(len(w) == width for w in windows):
        return torch.tensor(windows, device=device), None
    idx = torch.tensor([[0] * (width - len(w)) + w for w in windows], device=device)  # pad id is masked out
    mask = torch.tensor([[0] * (width - len(w)) + [1] * len(w) for w in windows], device=device)
    return idx, mask


def check_keep(keep: int | None, context_length: int) -> int:
    """`keep` checked against the context (None: `default_keep`)."""
    keep = default_keep(context_length) if keep is None else keep
    if isinstance(keep, bool) or not isinstance(keep, int) or not 1 <= keep <= context_length:
        raise ScratchLLMError(f"keep must be an integer in [1, {context_length}] (the context length), got {keep!r}")
    return keep


def check_prompts(model: GPT, batch_ids: Sequence[Sequence[int]], stacklevel: int = 3) -> list[list[int]]:
    """The prompts' ids checked against the vocabulary; a prompt longer than the context keeps its
    last context_length tokens (with a warning; stacklevel: frames up to the user's call)."""
    ctx, vocab = model.config.context_length, model.config.vocab_size
    rows = []
    for i, ids in enumerate(batch_ids):
        ids = [int(t) for t in ids]
        if not ids:
            raise ScratchLLMError(f"prompt {i} has no tokens; start it with a BOS token such as <|endoftext|>")
        if min(ids) < 0 or max(ids) >= vocab:
            bad = next(t for t in ids if not 0 <= t < vocab)
            raise ScratchLLMError(f"prompt {i}: token id {bad} is outside the model's vocabulary 0..{vocab - 1}")
        if len(ids) > ctx:
            warnings.warn(
                f"prompt {i} has {len(ids)} tokens but the context holds {ctx}: keeping its last {ctx} tokens",
                stacklevel=stacklevel,
            )
            ids = ids[-ctx:]
        rows.append(ids)
    return rows


Step = list[tuple[int, str]]
"""What a decode loop yields after each step: (row index, the text that row released) for every row
that took a token, the released text "" for rows of ids."""


def decode_rows(model: GPT, rows: Sequence[RowState], use_cache: bool = True, keep: int | None = None,
                decoder: str = "auto") -> Iterator[Step]:
    """Decode `rows` together until each has finished (see `RowState.accept`); yield each step.

    The rows start together and leave one by one: a finished row (a stop, max_new_tokens, or the
    caller's `row.finish(...)` between steps) is dropped from the batch. Prompts of different lengths
    are left-padded under an attention mask. use_cache=False recomputes the whole window every step;
    keep: tokens kept when the context window jumps (`window_start`); decoder: see the module docstring.
    """
    check_decoder(decoder)
    keep = check_keep(keep, model.config.context_length)
    if use_cache and _static_decoding(model, decoder):
        return _decode_static(model, list(rows), keep)
    return _decode(model, list(rows), use_cache, keep)


def _decode(model: GPT, rows: list[RowState], use_cache: bool, keep: int) -> Iterator[Step]:
    """The eager loop: a `KVCache` that the finished rows leave, re-filled when a window jumps."""
    ctx = model.config.context_length
    weight = model.tok_emb.weight
    active = [r for r in range(len(rows)) if not rows[r].finished]
    cache: KVCache | None = None
    starts: list[int] = []  # window start of each active row's cached tokens
    mask: torch.Tensor | None = None  # (B, max_len) 1 = real token, 0 = left padding; None if unpadded
    was_training = model.training
    model.eval()
    try:
        while True:
            alive = [k for k, r in enumerate(active) if not rows[r].finished]
            if not alive:
                return
            # inference_mode is entered per step, never across a `yield`: the caller's code between
            # steps must not run inside it.
            with torch.inference_mode():
                if len(alive) < len(active):  # drop finished rows from the batch and its cache
                    active = [active[k] for k in alive]
                    if cache is not None:
                        index = torch.tensor(alive, device=weight.device)
                        cache.reorder(index)
                        starts = [starts[k] for k in alive]
                        mask = mask.index_select(0, index) if mask is not None else None
                tokens = [rows[r].tokens for r in active]
                new_starts = [window_start(len(t), ctx, keep) for t in tokens]
                if not use_cache:  # recompute the whole window every step
                    idx, pad = _left_pad([t[s:] for t, s in zip(tokens, new_starts)], weight.device)
                elif cache is None or new_starts != starts or cache.length >= cache.max_len:
                    # (Re-)fill the cache with each row's window: at the start and when a window jumps.
                    windows = [t[s:] for t, s in zip(tokens, new_starts)]
                    idx, pad = _left_pad(windows, weight.device)
                    if cache is None:
                        longest = max(len(w) + rows[r].remaining for w, r in zip(windows, active))
                        cache = KVCache.allocate(model.config, len(active), min(ctx, longest), weight.device, weight.dtype)
                    cache.length = 0
                    mask = None
                    if pad is not None:  # later steps extend the padding mask by one column each
                        mask = torch.ones(len(active), cache.max_len, dtype=torch.long, device=weight.device)
                        mask[:, : pad.shape[1]] = pad
                    starts = new_starts
                else:  # one new token per row
                    idx = torch.tensor([[t[-1]] for t in tokens], device=weight.device)  # (B, 1)
                    pad = mask[:, : cache.length + 1] if mask is not None else None
                with matrix_vector_kernels(weight, idx.numel()):
                    h = model.hidden_states(idx, cache=cache if use_cache else None, attention_mask=pad)  # (B, T, C)
                    logits = model.logits(h[:, -1])  # (B, V): the head for the last position only
                next_ids = sample_rows(logits, [rows[r] for r in active])
            yield [(r, rows[r].accept(token)) for r, token in zip(active, next_ids)]
    finally:
        model.train(was_training)


def _static_decoding(model: GPT, decoder: str) -> bool:
    """Whether the cached decode takes the static path. "auto": on CUDA without autocast (a graph
    captured under autocast would keep reading its weight casts after the autocast cache frees them)."""
    if decoder != "auto":
        return decoder == "static"
    device = model.tok_emb.weight.device
    return device.type == "cuda" and not torch.is_autocast_enabled(device.type)


def _decode_static(model: GPT, rows: list[RowState], keep: int) -> Iterator[Step]:
    """`_decode` on a `StaticDecoder` (a CUDA graph per step on a GPU): the same windows, the same
    rows sampled with the same generators, hence the same tokens.

    The batch keeps its shape: a finished row stays in it, fed its last token, and its logits are
    left out of sampling (the eager loop drops its cache rows instead, a new shape every time).
    """
    ctx = model.config.context_length
    device = model.tok_emb.weight.device
    batch = [r for r in range(len(rows)) if not rows[r].finished]  # the decoder's rows, finished or not
    dec = None
    starts: list[int] = []
    next_ids = None  # (B,) on the device: each row's newest token, the next step's input
    was_training = model.training
    model.eval()
    try:
        while True:
            alive = [k for k, r in enumerate(batch) if not rows[r].finished]
            if not alive:
                return
            with torch.inference_mode():
                tokens = [rows[r].tokens for r in batch]
                new_starts = [window_start(len(t), ctx, keep) for t in tokens]
                if dec is None or any(new_starts[k] != starts[k] for k in alive) or dec.length >= dec.max_len:
                    # (Re-)fill with each row's window, at the start and when a window jumps; a finished
                    # row only keeps its place, with its last token.
                    windows = [rows[r].tokens[-1:] if rows[r].finished else t[s:]
                               for r, t, s in zip(batch, tokens, new_starts)]
                    idx, pad = _left_pad(windows, device)
                    if dec is None:  # room for every new token, rounded up so that later calls can reuse it
                        longest = max(len(w) + rows[r].remaining for w, r in zip(windows, batch))
                        dec = acquire_decoder(model, len(batch), min(ctx, -(-longest // 64) * 64))
                    logits = dec.prefill(idx, pad)  # (B, V)
                    starts = new_starts
                else:
                    logits = dec.step(next_ids)  # (B, V)
                index = None if len(alive) == len(batch) else torch.tensor(alive, device=device)
                sampled = sample_rows(logits if index is None else logits.index_select(0, index),
                                      [rows[batch[k]] for k in alive])
                as_tensor = torch.tensor(sampled, device=device)  # (A,)
                next_ids = as_tensor if index is None else next_ids.index_copy(0, index, as_tensor)
            yield [(batch[k], rows[batch[k]].accept(token)) for k, token in zip(alive, sampled)]
    finally:
        model.train(was_training)
        release_decoder(dec)


# ------------------------------------------------------------------------------------------------
# Token ids in, token ids out


def _sampling(max_new_tokens: int, temperature: float, top_k: int | None, top_p: float | None,
              seed: int | None = None) -> SamplingConfig:
    """The keyword form's settings as one SamplingConfig (which checks them). top_k=0 is refused here
    as before (the config reads 0 as "no limit", for the flags' sake)."""
    if top_k == 0 and not isinstance(top_k, bool):
        check_top_k(top_k)
    return SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)


def generate_tokens(
    model: GPT,
    ids: Sequence[int],
    max_new_tokens: int = 128,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
    keep: int | None = None,
    stop_ids: Collection[int] = (),
    decoder: str = "auto",
    vocab_limit: int | None = None,
) -> Iterator[int]:
    """Yield up to max_new_tokens new token ids after `ids`, one per step; stop before any of stop_ids
    (`tokenizer.stop_ids`: the end-of-text token, and a chat model's end-of-turn token).

    generator: the RNG for sampling (None: torch's global RNG). keep: tokens kept when the context
    window jumps (see `window_start`; default 3/4 of the context). decoder: "auto", "eager" or
    "static" (see the module docstring). vocab_limit: `tokenizer.vocab_size`, so that rows of a padded
    head are never sampled. Parameters are checked here, before the first token is asked for.
    """
    sampling = _sampling(max_new_tokens, temperature, top_k, top_p)
    row = RowState(check_prompts(model, [ids])[0], sampling, generator, frozenset(stop_ids), vocab_limit=vocab_limit)
    steps = decode_rows(model, [row], use_cache, keep, decoder)

    def tokens() -> Iterator[int]:
        seen = 0
        for _ in steps:  # each step either appends a token or ends the row at a stop id
            if row.new_tokens > seen:
                seen = row.new_tokens
                yield row.tokens[-1]

    return tokens()


def generate_ids(
    model: GPT,
    batch_ids: Sequence[Sequence[int]],
    max_new_tokens: int = 128,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generators: Sequence[torch.Generator | None] | None = None,
    use_cache: bool = True,
    keep: int | None = None,
    stop_ids: Collection[int] = (),
    decoder: str = "auto",
    vocab_limit: int | None = None,
) -> list[list[int]]:
    """New token ids for each prompt of a batch (the stop id that ends a row not included), decoded together.

    Prompts of different lengths are left-padded with an attention mask; each row gets the same
    tokens as `generate_tokens` on that prompt alone with the same generator (see `make_generators`).
    vocab_limit: as in `generate_tokens`.
    """
    sampling = _sampling(max_new_tokens, temperature, top_k, top_p)
    prompts = check_prompts(model, batch_ids)
    if generators is not None and len(generators) != len(prompts):
        raise ScratchLLMError(f"generators: expected one per prompt ({len(prompts)}), got {len(generators)}")
    gens = generators if generators is not None else [None] * len(prompts)
    rows = [RowState(ids, sampling, g, frozenset(stop_ids), vocab_limit=vocab_limit) for ids, g in zip(prompts, gens)]
    for _ in decode_rows(model, rows, use_cache, keep, decoder):
        pass
    return [row.output for row in rows]


# ------------------------------------------------------------------------------------------------
# Text in, text out


def encode_prompt(tokenizer, prompt: str) -> list[int]:
    """Prompt ids. In a raw prompt special-token text such as <|endoftext|> is allowed; a prompt a style
    laid out from messages (a ChatText) gets control tokens only from its layout (`Tokenizer.encode_chat`).
    The tokenizer's BOS goes first as transformers' `tokenizer(text)` puts it (Llama 3's <|begin_of_text|>;
    GPT-2, Qwen and SmolLM2 have none), except when the text already starts with it: a chat template
    writes its own, and a second one (which transformers would add) only puts the model off. An empty
    prompt without a BOS starts from the end-of-text token, GPT-2's beginning-of-text token."""
    if not isinstance(prompt, str):
        raise ScratchLLMError(f"prompt must be a str, got {type(prompt).__name__}")
    ids = tokenizer.encode_chat(prompt) if isinstance(prompt, ChatText) else tokenizer.encode(prompt, allowed_special="all")
    bos = list(tokenizer.bos_ids)
    if bos and ids[: len(bos)] != bos:
        ids = bos + ids
    return ids or [tokenizer.eot_id]


def text_rows(model: GPT, tokenizer, prompts: Sequence[str], sampling: SamplingConfig,
              stop: str | Sequence[str] | None = None, stacklevel: int = 3) -> list[RowState]:
    """One text row per prompt, all sampling by `sampling`: prompt i with the RNG seeded
    sampling.seed + i (see `make_generators`), stopping at the tokenizer's stop ids and at `stop`."""
    stops = stop_list(stop)
    check_seed(sampling.seed, len(prompts))
    ids = check_prompts(model, [encode_prompt(tokenizer, p) for p in prompts], stacklevel + 1)
    device = model.tok_emb.weight.device
    gens = make_generators(sampling.seed, len(ids), device) if not sampling.greedy else [None] * len(ids)
    return [RowState.for_text(i, sampling, tokenizer, stops, g) for i, g in zip(ids, gens)]


def text_pieces(model: GPT, tokenizer, prompts: Sequence[str], sampling: SamplingConfig,
                stop: str | Sequence[str] | None = None, use_cache: bool = True, keep: int | None = None,
                decoder: str = "auto", stacklevel: int = 3) -> Iterator[tuple[int, str]]:
    """(prompt index, text piece) as the prompts' completions are decoded together: what `generate`
    and `stream` are made of, with the settings whole. Checked here, before the first piece."""
    rows = text_rows(model, tokenizer, prompts, sampling, stop, stacklevel + 1)
    steps = decode_rows(model, rows, use_cache, keep, decoder)
    return ((r, piece) for step in steps for r, piece in step if piece)


def generate(
    model: GPT,
    tokenizer,
    prompt: str | Sequence[str],
    max_new_tokens: int = 128,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    stop: str | Sequence[str] | None = None,
    use_cache: bool = True,
    keep: int | None = None,
    decoder: str = "auto",
) -> str | list[str]:
    """The completion of `prompt` (without the prompt); a list of prompts gives a list of completions.

    temperature 0 is greedy; top_k / top_p restrict sampling (see `sample_next`). Generation ends
    after max_new_tokens tokens, at one of `tokenizer.stop_ids` (<|endoftext|>, a chat model's
    end-of-turn token), or at the first stop string (not included).
    A list of prompts is decoded as one left-padded batch; prompt i samples with seed + i, so
    `generate(prompts, seed=s)[i] == generate(prompts[i], seed=s + i)`. use_cache=False recomputes
    the window every step (same tokens, slower); keep: see `window_start`; decoder: "auto", "eager"
    or "static" (see the module docstring). `InferenceSession.generate` (session.py) takes the
    settings as one SamplingConfig instead.
    """
    single = isinstance(prompt, str)
    if not single and (not isinstance(prompt, Sequence) or not all(isinstance(p, str) for p in prompt)):
        raise ScratchLLMError(f"prompt must be a str or a list of str, got {type(prompt).__name__}")
    prompts = [prompt] if single else list(prompt)
    sampling = _sampling(max_new_tokens, temperature, top_k, top_p, seed)
    if not prompts:
        return []
    out = [""] * len(prompts)
    for r, piece in text_pieces(model, tokenizer, prompts, sampling, stop, use_cache, keep, decoder):
        out[r] += piece
    return out[0] if single else out


def stream(
    model: GPT,
    tokenizer,
    prompt: str,
    max_new_tokens: int = 128,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    stop: str | Sequence[str] | None = None,
    use_cache: bool = True,
    keep: int | None = None,
    decoder: str = "auto",
) -> Iterator[str]:
    """Like `generate` for one prompt, yielding the completion piece by piece as it is decoded.

    Pieces are whole characters, and text that might begin a stop string is held back until the
    next tokens settle it, so "".join(stream(...)) == generate(...) with the same arguments.
    """
    if not isinstance(prompt, str):
        raise ScratchLLMError(f"stream: prompt must be a str, got {type(prompt).__name__}")
    sampling = _sampling(max_new_tokens, temperature, top_k, top_p, seed)
    pieces = text_pieces(model, tokenizer, [prompt], sampling, stop, use_cache, keep, decoder)
    return (piece for _, piece in pieces)
