"""Text generation: turning a trained model's next-token distributions into text.

This sits after the model and training in the pipeline: a prompt is encoded, the model predicts the
next token, a token is chosen from its logits (greedy, temperature, top-k, top-p), appended, and the
loop repeats. Three layers, each reusable on its own:

- `sample_next` (sampling.py): logits (B, V) -> next ids (B,). The sampling rules, nothing else; the
  one place every decode path chooses a token, so rows of a padded head (`vocab_limit`) are cut there.
- `generate_tokens` / `generate_ids`: the token-level decode loop (KV cache, left-padded batches,
  a context window that jumps when the sequence outgrows the model). Chat, serving and evaluation
  build on these.
- `generate` / `stream`: text in, text out; stops at one of the tokenizer's stop ids (<|endoftext|>;
  for a model with a chat template also its end-of-turn token, such as <|im_end|> or <|eot_id|>) or
  at a stop string, and `stream` yields whole characters only.

Decoding with the KV cache gives the same tokens as recomputing the whole window every step
(`use_cache=False`), also past the context window: both paths condition on exactly the tokens that
`window_start` names. A batch gives each prompt the same text as generating it alone.

Two cached decode loops give those tokens (`decoder=`): "eager", a cache that grows with the text
and every kernel launched from Python (the fast one on a CPU, with `optimize_for_decoding` from
decode_kernels.py), and "static", fixed-size buffers whose step is replayed as one CUDA graph on a
GPU (static_decode.py).
"auto" takes static on CUDA (unless autocast is on) and eager elsewhere.
"""

from __future__ import annotations

import codecs
import warnings
from collections.abc import Collection, Iterable, Iterator, Sequence

import torch

from scratchllm.errors import ScratchLLMError
from scratchllm.inference.config import check_sampling, check_seed
from scratchllm.inference.decode_kernels import matrix_vector_kernels
from scratchllm.inference.decode_kernels import optimize_for_decoding  # noqa: F401  (importable from here too, as before)
from scratchllm.inference.sampling import GREEDY_BELOW, make_generators, sample_next  # noqa: F401  (and from here)
from scratchllm.inference.static_decode import acquire_decoder, release_decoder
from scratchllm.models.gpt import GPT, KVCache
from scratchllm.tokenizer.chat_template import ChatText

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
# The token-level decode loop


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


def _prepare(
    model: GPT, batch_ids: Sequence[Sequence[int]], keep: int | None, stacklevel: int = 3
) -> tuple[list[list[int]], int]:
    """Check the prompts' ids and `keep`; left-truncate prompts longer than the context (warning).
    stacklevel: frames up to the user's call, for the warning's location."""
    ctx, vocab = model.config.context_length, model.config.vocab_size
    keep = default_keep(ctx) if keep is None else keep
    if isinstance(keep, bool) or not isinstance(keep, int) or not 1 <= keep <= ctx:
        raise ScratchLLMError(f"keep must be an integer in [1, {ctx}] (the context length), got {keep!r}")
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
    return rows, keep


def _decode(
    model: GPT,
    rows: list[list[int]],
    max_new_tokens: int,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    generators: Sequence[torch.Generator | None] | None,
    use_cache: bool,
    keep: int,
    stop_ids: Collection[int],
    finished: list[bool],
    decoder: str = "auto",
    vocab_limit: int | None = None,
) -> Iterator[dict[int, int]]:
    """The decode loop behind every entry point; yields {row: new token} for the running rows.

    rows: each sequence's token ids (extended here). A row stops running once it samples one of
    stop_ids or once the caller sets finished[row] = True between steps (for a stop string): its
    cache rows are dropped and it is never extended again. decoder: see the module docstring.
    vocab_limit: the tokenizer's size; `sample_next` never picks a row of the head past it.
    """
    if use_cache and _static_decoding(model, decoder):
        yield from _decode_static(model, rows, max_new_tokens, temperature, top_k, top_p, generators, keep, stop_ids,
                                  finished, vocab_limit)
        return
    ctx = model.config.context_length
    weight = model.tok_emb.weight
    active = [r for r in range(len(rows)) if not finished[r]]
    cache: KVCache | None = None
    starts: list[int] = []  # window start of each active row's cached tokens
    mask: torch.Tensor | None = None  # (B, max_len) 1 = real token, 0 = left padding; None if unpadded
    was_training = model.training
    model.eval()
    try:
        for _ in range(max_new_tokens):
            alive = [k for k, r in enumerate(active) if not finished[r]]
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
                new_starts = [window_start(len(rows[r]), ctx, keep) for r in active]
                if not use_cache:  # recompute the whole window every step
                    idx, pad = _left_pad([rows[r][s:] for r, s in zip(active, new_starts)], weight.device)
                elif cache is None or new_starts != starts or cache.length >= cache.max_len:
                    # (Re-)fill the cache with each row's window: at the start and when a window jumps.
                    windows = [rows[r][s:] for r, s in zip(active, new_starts)]
                    idx, pad = _left_pad(windows, weight.device)
                    if cache is None:
                        longest = max(map(len, windows)) + max_new_tokens
                        cache = KVCache.allocate(model.config, len(active), min(ctx, longest), weight.device, weight.dtype)
                    cache.length = 0
                    mask = None
                    if pad is not None:  # later steps extend the padding mask by one column each
                        mask = torch.ones(len(active), cache.max_len, dtype=torch.long, device=weight.device)
                        mask[:, : pad.shape[1]] = pad
                    starts = new_starts
                else:  # one new token per row
                    idx = torch.tensor([[rows[r][-1]] for r in active], device=weight.device)  # (B, 1)
                    pad = mask[:, : cache.length + 1] if mask is not None else None
                with matrix_vector_kernels(weight, idx.numel()):
                    h = model.hidden_states(idx, cache=cache if use_cache else None, attention_mask=pad)  # (B, T, C)
                    logits = model.logits(h[:, -1])  # (B, V): the head for the last position only
                gens = [generators[r] for r in active] if generators is not None else None
                next_ids = sample_next(logits, temperature, top_k, top_p, gens, vocab_limit).tolist()
            yield _extend(rows, zip(active, next_ids), stop_ids, finished)
    finally:
        model.train(was_training)


def _extend(rows: list[list[int]], sampled: Iterable[tuple[int, int]], stop_ids: Collection[int],
            finished: list[bool]) -> dict[int, int]:
    """Append each (row, token) of one step to its row, mark rows that sampled a stop id finished,
    and return the step as {row: token} (what both decode loops yield)."""
    step = {}
    for r, token in sampled:
        rows[r].append(token)
        step[r] = token
        if token in stop_ids:
            finished[r] = True
    return step


def _static_decoding(model: GPT, decoder: str) -> bool:
    """Whether the cached decode takes the static path. "auto": on CUDA without autocast (a graph
    captured under autocast would keep reading its weight casts after the autocast cache frees them)."""
    if decoder != "auto":
        return decoder == "static"
    device = model.tok_emb.weight.device
    return device.type == "cuda" and not torch.is_autocast_enabled(device.type)


def _decode_static(
    model: GPT,
    rows: list[list[int]],
    max_new_tokens: int,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    generators: Sequence[torch.Generator | None] | None,
    keep: int,
    stop_ids: Collection[int],
    finished: list[bool],
    vocab_limit: int | None = None,
) -> Iterator[dict[int, int]]:
    """`_decode` on a `StaticDecoder` (a CUDA graph per step on a GPU): the same windows, the same
    rows sampled with the same generators, hence the same tokens.

    The batch keeps its shape: a finished row stays in it, fed its last token, and its logits are
    left out of sampling (the eager loop drops its cache rows instead, a new shape every time).
    """
    ctx = model.config.context_length
    device = model.tok_emb.weight.device
    batch = [r for r in range(len(rows)) if not finished[r]]  # the decoder's rows, finished or not
    dec = None
    starts: list[int] = []
    next_ids = None  # (B,) on the device: each row's newest token, the next step's input
    was_training = model.training
    model.eval()
    try:
        for _ in range(max_new_tokens):
            alive = [k for k, r in enumerate(batch) if not finished[r]]
            if not alive:
                return
            with torch.inference_mode():
                new_starts = [window_start(len(rows[r]), ctx, keep) for r in batch]
                if dec is None or any(new_starts[k] != starts[k] for k in alive) or dec.length >= dec.max_len:
                    # (Re-)fill with each row's window, at the start and when a window jumps; a finished
                    # row only keeps its place, with its last token.
                    windows = [rows[r][-1:] if finished[r] else rows[r][s:] for r, s in zip(batch, new_starts)]
                    idx, pad = _left_pad(windows, device)
                    if dec is None:  # room for every new token, rounded up so that later calls can reuse it
                        longest = -(-(max(map(len, windows)) + max_new_tokens) // 64) * 64
                        dec = acquire_decoder(model, len(batch), min(ctx, longest))
                    logits = dec.prefill(idx, pad)  # (B, V)
                    starts = new_starts
                else:
                    logits = dec.step(next_ids)  # (B, V)
                index = None if len(alive) == len(batch) else torch.tensor(alive, device=device)
                gens = [generators[batch[k]] for k in alive] if generators is not None else None
                sampled = sample_next(logits if index is None else logits.index_select(0, index),
                                      temperature, top_k, top_p, gens, vocab_limit)  # (A,)
                next_ids = sampled if index is None else next_ids.index_copy(0, index, sampled)
                tokens = sampled.tolist()
            yield _extend(rows, ((batch[k], token) for k, token in zip(alive, tokens)), stop_ids, finished)
    finally:
        model.train(was_training)
        release_decoder(dec)


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
    check_sampling(max_new_tokens, temperature, top_k, top_p, decoder=decoder)
    rows, keep = _prepare(model, [ids], keep)
    stop_ids = frozenset(stop_ids)

    def tokens() -> Iterator[int]:
        finished = [False]
        gens = [generator] if generator is not None else None
        for step in _decode(model, rows, max_new_tokens, temperature, top_k, top_p, gens, use_cache, keep, stop_ids, finished,
                            decoder, vocab_limit):
            if step[0] in stop_ids:
                return
            yield step[0]

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
    check_sampling(max_new_tokens, temperature, top_k, top_p, decoder=decoder)
    rows, keep = _prepare(model, batch_ids, keep)
    if generators is not None and len(generators) != len(rows):
        raise ScratchLLMError(f"generators: expected one per prompt ({len(rows)}), got {len(generators)}")
    out: list[list[int]] = [[] for _ in rows]
    finished = [False] * len(rows)
    stop_ids = frozenset(stop_ids)
    for step in _decode(model, rows, max_new_tokens, temperature, top_k, top_p, generators, use_cache, keep, stop_ids, finished,
                        decoder, vocab_limit):
        for r, token in step.items():
            if token not in stop_ids:
                out[r].append(token)
    return out


# ------------------------------------------------------------------------------------------------
# Text in, text out


class TextAssembler:
    """Token ids -> text pieces that are safe to show: whole characters, and no text that may yet
    turn out to be the start of a stop string.

    A token can end in the middle of a UTF-8 character (GPT-2 splits most CJK characters and emoji
    over two or three byte tokens), so bytes go through an incremental UTF-8 decoder that releases
    only complete characters. Then the longest suffix that is a prefix of some stop string is held
    back until the next token settles it.
    """

    def __init__(self, tokenizer, stops: Sequence[str] = ()):
        self.tokenizer = tokenizer
        self.stops = list(stops)
        self.utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.pending = ""  # decoded but not yet released
        self.stopped = False  # a stop string was found; nothing more will be released

    def push(self, token_id: int) -> str:
        """Add one token; return the text it makes safe to release (often "")."""
        return self._release(self.utf8.decode(self.tokenizer.token_bytes(token_id)), final=False)

    def finish(self) -> str:
        """The end of generation: release what was held back (a cut character becomes U+FFFD)."""
        return self._release(self.utf8.decode(b"", final=True), final=True)

    def _release(self, text: str, final: bool) -> str:
        if self.stopped:
            return ""
        self.pending += text
        found = [i for s in self.stops if (i := self.pending.find(s)) >= 0]
        if found:  # cut before the earliest stop string; it is not part of the output
            self.stopped = True
            out, self.pending = self.pending[: min(found)], ""
            return out
        hold = 0 if final else _stop_prefix_length(self.pending, self.stops)
        out = self.pending[: len(self.pending) - hold]
        self.pending = self.pending[len(out) :]
        return out


def _stop_prefix_length(text: str, stops: Sequence[str]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of some stop string."""
    best = 0
    for s in stops:
        for k in range(min(len(text), len(s) - 1), best, -1):
            if text.endswith(s[:k]):
                best = k
                break
    return best


def _stop_list(stop: str | Sequence[str] | None) -> list[str]:
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    for s in stops:
        if not isinstance(s, str) or not s:
            raise ScratchLLMError(f"stop strings must be non-empty strings, got {s!r}")
    return stops


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


def _text_decode(model, tokenizer, prompts, max_new_tokens, temperature, top_k, top_p, seed, stop, use_cache, keep,
                 decoder):
    """Shared by `generate` and `stream`: yields (row, text piece) as tokens are decoded."""
    check_sampling(max_new_tokens, temperature, top_k, top_p, decoder=decoder)
    check_seed(seed, len(prompts))
    stops = _stop_list(stop)
    rows, keep = _prepare(model, [encode_prompt(tokenizer, p) for p in prompts], keep, stacklevel=4)
    device = model.tok_emb.weight.device
    generators = make_generators(seed, len(rows), device) if temperature >= GREEDY_BELOW else None
    stop_ids = tokenizer.stop_ids

    def pieces() -> Iterator[tuple[int, str]]:
        texts = [TextAssembler(tokenizer, stops) for _ in rows]
        finished = [False] * len(rows)
        for step in _decode(model, rows, max_new_tokens, temperature, top_k, top_p, generators, use_cache, keep, stop_ids, finished,
                            decoder, tokenizer.vocab_size):
            for r, token in step.items():
                if token in stop_ids:
                    continue
                piece = texts[r].push(token)
                if texts[r].stopped:
                    finished[r] = True
                if piece:
                    yield r, piece
        for r, text in enumerate(texts):
            if piece := text.finish():
                yield r, piece

    return pieces()


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
    or "static" (see the module docstring).
    """
    single = isinstance(prompt, str)
    if not single and (not isinstance(prompt, Sequence) or not all(isinstance(p, str) for p in prompt)):
        raise ScratchLLMError(f"prompt must be a str or a list of str, got {type(prompt).__name__}")
    prompts = [prompt] if single else list(prompt)
    if not prompts:
        return []
    out = [""] * len(prompts)
    for r, piece in _text_decode(model, tokenizer, prompts, max_new_tokens, temperature, top_k, top_p, seed, stop, use_cache, keep,
                                 decoder):
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
    pieces = _text_decode(model, tokenizer, [prompt], max_new_tokens, temperature, top_k, top_p, seed, stop, use_cache, keep,
                          decoder)
    return (piece for _, piece in pieces)
