"""The state of one sequence being decoded (`RowState`), the text it releases (`TextAssembler`), and
sampling a batch whose rows each have their own settings (`sample_rows`).

A row holds everything that belongs to one answer and nothing that belongs to the batch: its tokens
(the prompt's, then each new one), its `SamplingConfig` and RNG, the ids and strings that stop it, and
why it stopped. Decode loops (generation.py's batch, engine.py's continuous batch) only feed windows
of `row.tokens` to the model and hand each sampled token to `row.accept`, so a row behaves the same
whichever loop decodes it and whichever rows share its batch. (nanochat's engine.py keeps its
per-row state the same way.)
"""

from __future__ import annotations

import codecs
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

import torch

from scratchllm.errors import ScratchLLMError
from scratchllm.inference.config import SamplingConfig
from scratchllm.inference.logprobs import TokenLogprobs, record_sampled
from scratchllm.inference.sampling import sample_next

FINISH_REASONS = ("stop", "length", "cancelled", "error")


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


def stop_list(stop: str | Sequence[str] | None) -> list[str]:
    """Stop strings as a list (one string, several, or none), each checked to be a non-empty string."""
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    for s in stops:
        if not isinstance(s, str) or not s:
            raise ScratchLLMError(f"stop strings must be non-empty strings, got {s!r}")
    return stops


@dataclass(eq=False)
class RowState:
    """One sequence being decoded.

    tokens: the prompt's ids, then each new token (decode loops read the model's window from here);
    sampling: its own settings, max_new_tokens included; generator: its RNG (None: torch's global one,
    or none needed when greedy); stop_ids: tokens that end it (not part of the answer, not counted);
    assembler: turns its tokens into text and cuts it at stop strings (None: a row of token ids only);
    vocab_limit: the tokenizer's size, so that rows of a padded head are never sampled (sampling.py);
    logprobs: the log-probabilities it reports (logprobs.py; None: none asked for).
    `accept(token)` takes each sampled token; `finish_reason` says why it ended: "stop" (a stop id or
    a stop string), "length" (max_new_tokens), "cancelled" (its client left) or "error".
    """

    tokens: list[int]
    sampling: SamplingConfig
    generator: torch.Generator | None = None
    stop_ids: Collection[int] = frozenset()
    assembler: TextAssembler | None = None
    vocab_limit: int | None = None
    logprobs: TokenLogprobs | None = None
    text: str = ""
    """the text released so far (rows with an assembler)"""
    finish_reason: str | None = None
    prompt_length: int = field(init=False)

    def __post_init__(self) -> None:
        self.prompt_length = len(self.tokens)
        if self.sampling.max_new_tokens == 0:
            self.finish_reason = "length"

    @classmethod
    def for_text(cls, ids: Sequence[int], sampling: SamplingConfig, tokenizer, stops: Sequence[str] = (),
                 generator: torch.Generator | None = None, logprobs: TokenLogprobs | None = None) -> "RowState":
        """A row that decodes to text: it stops at the tokenizer's stop ids and at `stops`, and samples
        only the tokenizer's ids."""
        return cls(list(ids), sampling, generator, tokenizer.stop_ids, TextAssembler(tokenizer, stops),
                   tokenizer.vocab_size, logprobs)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def new_tokens(self) -> int:
        """Tokens generated so far (a stop id is not one)."""
        return len(self.tokens) - self.prompt_length

    @property
    def output(self) -> list[int]:
        """The generated ids."""
        return self.tokens[self.prompt_length :]

    @property
    def remaining(self) -> int:
        return self.sampling.max_new_tokens - self.new_tokens

    def accept(self, token: int) -> str:
        """Take the token sampled for this row; return the text it releases ("" if none yet, and for
        rows of ids). Ends the row at a stop id, a stop string or max_new_tokens."""
        if token in self.stop_ids:
            return self.finish("stop")
        self.tokens.append(token)
        if self.logprobs is not None:
            self.logprobs.commit(token)
        piece = self.assembler.push(token) if self.assembler is not None else ""
        self.text += piece
        if self.assembler is not None and self.assembler.stopped:
            self.finish_reason = "stop"
        elif self.new_tokens >= self.sampling.max_new_tokens:
            piece += self.finish("length")
        return piece

    def finish(self, reason: str) -> str:
        """End the row (unless it has ended); return the text held back for a stop string that never
        came, released when it ends by itself ("stop", "length"), dropped otherwise."""
        if self.finished:
            return ""
        self.finish_reason = reason
        if self.assembler is None or reason not in ("stop", "length"):
            return ""
        tail = self.assembler.finish()
        self.text += tail
        return tail


def sample_rows(logits: torch.Tensor, rows: Sequence[RowState]) -> list[int]:
    """The next token of each row from logits (B, V), each by its own settings, generator and vocab_limit
    (`sample_next`). Rows that sample alike are drawn in one call; a row's draw never depends on the
    others (its own RNG). Rows that report log-probabilities are offered their token's (`record_sampled`)."""
    groups: dict[tuple, list[int]] = {}
    for i, row in enumerate(rows):
        s = row.sampling
        rule = ("greedy",) if s.greedy else (s.temperature, s.top_k, s.top_p)
        groups.setdefault((*rule, row.vocab_limit), []).append(i)
    out = [0] * len(rows)
    for members in groups.values():
        part = logits if len(members) == len(rows) else logits[members]
        gens = [rows[i].generator for i in members]
        first = rows[members[0]]
        s = first.sampling
        drawn = sample_next(part, s.temperature, s.top_k, s.top_p, None if all(g is None for g in gens) else gens,
                            first.vocab_limit)
        for i, token in zip(members, drawn.tolist()):
            out[i] = token
    logs = [row.logprobs for row in rows]
    if any(log is not None for log in logs):
        record_sampled(logits, out, logs, min((row.vocab_limit or logits.shape[-1]) for row in rows))
    return out
