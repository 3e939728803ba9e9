"""Log-probabilities of an answer (logprobs.py `TokenScore`s) in the OpenAI API's two shapes, for app.py.

- Completions (OpenAI's legacy shape, what lm-evaluation-harness's `local-completions` reads):
  {"tokens": [str], "token_logprobs": [float | None], "top_logprobs": [{token: logprob} | None],
  "text_offset": [int]}. A prompt's first token (with echo) has null for both (nothing predicts it);
  each dict holds the `logprobs` most likely tokens, most likely first, and the chosen token when it is
  not among them (OpenAI: "up to logprobs+1 elements"); text_offset[i] is where token i starts in the
  choice's text.
- Chat: {"content": [{"token", "logprob", "bytes", "top_logprobs": [{"token", "logprob", "bytes"}]}]},
  top_logprobs holding exactly the `top_logprobs` most likely tokens.

A token's string is its text when its bytes are whole UTF-8; a byte-level token that holds part of a
character (GPT-2 splits most CJK characters and emoji over two or three) is written "bytes:\\xe4\\xbd"
as vLLM writes it, so that distinct tokens stay distinct keys. `bytes` (chat) are always the raw bytes.
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence
from typing import Any

from scratchllm.inference.logprobs import TokenScore


def token_text(tokenizer, token: int) -> str:
    """The token as a string: its text, or "bytes:\\xNN..." when its bytes are not whole UTF-8."""
    raw = tokenizer.token_bytes(token)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{b:02x}" for b in raw)


def text_offsets(tokenizer, ids: Sequence[int]) -> list[int]:
    """Where each token starts in `tokenizer.decode(ids)` (what an echoed prompt shows), in characters: the characters completed before it
    (a token that ends a character begun by the one before starts where that character does)."""
    utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
    offsets, length = [], 0
    for t in ids:
        offsets.append(length)
        length += len(utf8.decode(tokenizer.token_bytes(t)))
    return offsets


def completion_logprobs(tokenizer, scores: Sequence[TokenScore], offset: int = 0) -> dict[str, Any]:
    """The completions route's `logprobs` of `scores` (the echoed prompt's, then the generated tokens');
    `offset`: where the first token starts in the choice's text."""
    tops: list[dict[str, float] | None] = []
    for s in scores:
        if s.top is None:
            tops.append(None)
            continue
        top = {token_text(tokenizer, t): lp for t, lp in s.top}
        top.setdefault(token_text(tokenizer, s.token), s.logprob)
        tops.append(top)
    ids = [s.token for s in scores]
    return {"tokens": [token_text(tokenizer, t) for t in ids], "token_logprobs": [s.logprob for s in scores],
            "top_logprobs": tops, "text_offset": [offset + o for o in text_offsets(tokenizer, ids)]}


def chat_logprobs(tokenizer, scores: Sequence[TokenScore]) -> dict[str, Any]:
    """The chat route's `logprobs` of the generated tokens' `scores`."""

    def entry(token: int, logprob: float) -> dict[str, Any]:
        return {"token": token_text(tokenizer, token), "logprob": logprob, "bytes": list(tokenizer.token_bytes(token))}

    return {"content": [{**entry(s.token, s.logprob), "top_logprobs": [entry(t, lp) for t, lp in s.top]}
                        for s in scores]}
