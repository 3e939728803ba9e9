"""Perplexity and bits per byte: how well a language model predicts a text.

Mean next-token loss, perplexity and bits per byte over a text file or the validation split of a
prepared data directory, with a sliding window (each token scored once, with up to a full context of
left context, as in Hugging Face's "Perplexity of fixed-length models"). Bits per byte divide the total
loss by the UTF-8 bytes of the text, so models with different vocabularies compare (Gao et al. 2020,
"The Pile", section 4). Each window is a request to the generic runner: its last `new` tokens are the
continuation of the tokens before them.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, overload

import numpy as np

from scratchllm.core.console import warn
from scratchllm.core.files import read_text
from scratchllm.data.tokens import load_corpus
from scratchllm.errors import ScratchLLMError
from scratchllm.evaluation.runner import EvalModel, Evaluation, Request
from scratchllm.evaluation.tasks import PerplexityTask
from scratchllm.tokenizer import Tokenizer, same_tokenizer


class Stream(Protocol):
    """Token ids with a length and windows: the data module's token streams, or `ArrayStream`."""

    def __len__(self) -> int: ...

    def window(self, start: int, n: int) -> np.ndarray: ...


class ArrayStream:
    """A token array with the `len()` / `window(start, n)` interface of the data module's streams."""

    def __init__(self, tokens: np.ndarray) -> None:
        self.tokens = tokens

    def __len__(self) -> int:
        return len(self.tokens)

    def window(self, start: int, n: int) -> np.ndarray:
        return self.tokens[start:start + n]


def sliding_windows(n_tokens: int, context_length: int, stride: int) -> list[tuple[int, int, int]]:
    """Windows (begin, end, new) over a stream of n_tokens so that each of tokens 1..n-1 is a
    target exactly once.

    A window feeds tokens[begin:end-1] to the model and scores its last `new` targets, the tokens
    tokens[end-new:end]. Windows end `stride` targets apart and are end-aligned with a full context
    (end - begin = context_length + 1 when the stream is long enough), so every scored token has at
    least context_length - stride tokens of left context (the first window's tokens excepted).
    stride = context_length gives disjoint windows: fastest, least context.
    """
    if context_length < 1:
        raise ScratchLLMError(f"context_length {context_length}: expected at least 1")
    if not 1 <= stride <= context_length:
        raise ScratchLLMError(f"stride {stride}: expected 1..context_length ({context_length})")
    windows = []
    done = 0  # targets 1..done are scored
    while done < n_tokens - 1:
        end = min(n_tokens, (done + 1 + stride) if windows else context_length + 1)
        begin = max(0, end - context_length - 1)
        windows.append((begin, end, end - 1 - done))
        done = end - 1
    return windows


def open_stream(data: str | os.PathLike[str], tokenizer: Tokenizer) -> tuple[Stream, str, bool]:
    """The token stream to score, a word for where it came from, and whether the first token of the
    text is scored.

    A data directory's validation split (tokenized with `tokenizer`'s vocabulary, else an error): its
    first token is context only. A text file: encoded whole after the document start (BOS, else
    end-of-text), so every token of the file is a target and the scored bytes are exactly the file's
    bytes, as lm-evaluation-harness scores a document (its rolling windows start from that prefix
    token). A tokenizer with neither has no token to predict the first from: that one token is left
    out, with a warning (Hugging Face's "perplexity of fixed-length models" leaves it out always)."""
    path = Path(data)
    if path.is_dir():
        corpus = load_corpus(path, tokenizer, 0.0)
        theirs, ours = corpus.meta.get("tokenizer", {}), tokenizer.describe()
        if corpus.vocab_size != tokenizer.vocab_size or not same_tokenizer(theirs, ours):
            raise ScratchLLMError(f"data directory {path}: tokenized with {theirs} ({corpus.vocab_size} ids), "
                                  f"but the model's tokenizer is {ours} ({tokenizer.vocab_size} ids)")
        if len(corpus.val) < 2:
            raise ScratchLLMError(f"data directory {path}: the validation split has {len(corpus.val)} tokens; "
                                  "prepare it with a larger --val-fraction")
        return corpus.val, "val split", False
    text = read_text(path, "data file")
    ids = tokenizer.encode(text, disallowed_special=())
    if not ids:
        raise ScratchLLMError(f"data file {path}: no text to score (the file is empty)")
    try:
        start = tokenizer.document_start
    except ScratchLLMError:  # neither BOS nor end-of-text
        warn(f"data file {path}: the tokenizer has neither a BOS nor an end-of-text token to start the text "
             f"from, so its first token ({tokenizer.token_bytes(ids[0])!r}) is context only, not scored")
        return ArrayStream(np.asarray(ids, dtype=np.int64)), "text file", False
    return ArrayStream(np.asarray(start + ids, dtype=np.int64)), "text file", True


class WindowRequests(Sequence[Request]):
    """The requests of sliding windows over a stream, read from it when the runner asks for them (so a
    long validation split is never held in memory twice): window (begin, end, new) asks for its last
    `new` tokens after the ones before them."""

    def __init__(self, stream: Stream, windows: list[tuple[int, int, int]]) -> None:
        self.stream, self.windows = stream, windows

    def __len__(self) -> int:
        return len(self.windows)

    @overload
    def __getitem__(self, i: int) -> Request: ...

    @overload
    def __getitem__(self, i: slice) -> list[Request]: ...

    def __getitem__(self, i: int | slice) -> Request | list[Request]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        begin, end, new = self.windows[i]
        ids = self.stream.window(begin, end - begin)
        return Request(ids[:-new], [ids[-new:]])


class PerplexityEvaluation(Evaluation):
    """A `PerplexityTask` (or a token stream given directly) as sliding-window requests."""

    name = "perplexity"

    def __init__(self, task: PerplexityTask, stream: Stream | None = None) -> None:
        self.task, self.given = task, stream  # a given stream is scored instead of task.data

    def requests(self, model: EvalModel) -> Sequence[Request]:
        limit = model.context_length
        self.context_length = self.task.context_length or limit
        if self.context_length > limit:
            raise ScratchLLMError(f"context_length {self.context_length}: the model takes at most {limit} tokens")
        self.stride = self.task.stride or max(1, self.context_length // 2)
        if self.given is not None:
            stream, self.source, self.first_token_scored = self.given, "stream", False
        else:
            stream, self.source, self.first_token_scored = open_stream(self.task.data, model.tokenizer)
        max_tokens = self.task.max_tokens
        n = len(stream) if max_tokens is None else min(len(stream), max_tokens + 1)
        self.windows = sliding_windows(n, self.context_length, self.stride)
        # The scored tokens are each token once (special tokens count 0 bytes: bits per byte measure the text).
        byte_lengths = model.tokenizer.token_byte_lengths()
        self.bytes = sum(int(byte_lengths[stream.window(end - new, new)].sum()) for _, end, new in self.windows)
        return WindowRequests(stream, self.windows)

    def report(self, model: EvalModel, scores: list[list[dict[str, Any]]]) -> dict[str, Any]:
        total_nats = -sum(s[0]["logprob"] for s in scores)
        total_tokens = sum(s[0]["tokens"] for s in scores)
        total_bytes = self.bytes
        loss = total_nats / total_tokens
        return {
            "data": None if self.given is not None else self.task.data,
            "source": self.source,
            "first_token_scored": self.first_token_scored,
            "context_length": self.context_length,
            "stride": self.stride,
            "windows": len(self.windows),
            "tokens": total_tokens,
            "bytes": total_bytes,
            "nats": total_nats,
            "loss": loss,
            "perplexity": math.exp(loss),
            "bits_per_byte": total_nats / total_bytes / math.log(2) if total_bytes else None,
            "bytes_per_token": total_bytes / total_tokens,
        }
