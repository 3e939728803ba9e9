"""Encoding many texts at once on several cores (`Tokenizer.encode_batch`).

A backend whose encoder runs outside Python's global interpreter lock (tiktoken's and the `tokenizers`
library's Rust cores release it) is run in threads. The python backend holds the lock, so it is run in
worker processes, and only for batches large enough to pay for starting them; with the fork start
method the workers inherit the tokenizer (and its warm word cache) instead of receiving a pickled copy.
"""

from __future__ import annotations

import multiprocessing
import os
from array import array
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

# Encode: (text, special tokens allowed) -> ids, the texts and arguments already checked.
Encode = Callable[[str, frozenset[str]], list[int]]

# Worker processes only pay for themselves above this many characters.
PARALLEL_MIN_CHARS = 500_000

_worker_encode_fn: Encode | None = None  # the tokenizer's encoder, in each worker process


def _worker_init(encode: Encode) -> None:
    global _worker_encode_fn
    _worker_encode_fn = encode


def _worker_encode(texts: list[str], allowed: frozenset[str]) -> tuple[array, array]:
    """Ids of `texts` as (all ids, ids per text). Flat arrays pickle as raw bytes: sending back
    millions of ints as lists of ints cost more to unpickle than the encoding saved."""
    assert _worker_encode_fn is not None
    flat, lengths = array("I"), array("I")
    for text in texts:
        ids = _worker_encode_fn(text, allowed)
        flat.extend(ids)
        lengths.append(len(ids))
    return flat, lengths


def split_by_size(texts: Sequence[str], parts: int) -> list[list[str]]:
    """`texts` cut into at most `parts` contiguous runs of roughly equal total length."""
    target = sum(map(len, texts)) / parts
    runs: list[list[str]] = [[]]
    size = 0
    for text in texts:
        if size >= target and len(runs) < parts:
            runs.append([])
            size = 0
        runs[-1].append(text)
        size += len(text)
    return runs


def cpu_count() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def encode_in_parallel(encode: Encode, texts: Sequence[str], allowed: frozenset[str], workers: int,
                       in_threads: bool) -> list[list[int]]:
    """`[encode(t, allowed) for t in texts]` on `workers` cores: threads when `in_threads` (the encoder
    releases the interpreter lock), else worker processes for a large enough batch."""
    if workers == 1 or len(texts) < 2 or (not in_threads and sum(map(len, texts)) < PARALLEL_MIN_CHARS):
        return [encode(t, allowed) for t in texts]
    if in_threads:
        # Whole chunks per task: tiktoken's own encode_batch submits one task per text, and on short
        # texts (SMS-sized) that overhead made it slower than a plain loop.
        chunks = split_by_size(texts, workers * 4)
        with ThreadPoolExecutor(min(workers, len(chunks))) as threads:
            done = threads.map(lambda chunk: [encode(t, allowed) for t in chunk], chunks)
            return [ids for chunk in done for ids in chunk]
    # Worker processes take the first (workers - 1) / workers of the text, a few chunks each to even out
    # the tail; this process encodes the rest meanwhile instead of waiting, which also saves shipping
    # that share's text out and its ids back.
    *head, own = split_by_size(texts, workers)
    chunks = [chunk for part in head for chunk in split_by_size(part, 2)]
    if not chunks:
        return [encode(t, allowed) for t in texts]
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    with ProcessPoolExecutor(min(workers - 1, len(chunks)), mp_context=context,
                             initializer=_worker_init, initargs=(encode,)) as pool:
        pending = pool.map(_worker_encode, chunks, [allowed] * len(chunks))  # submits all now
        own_ids = [encode(t, allowed) for t in own]
        out: list[list[int]] = []
        for flat, lengths in pending:
            ids = flat.tolist()
            start = 0
            for n in lengths:
                out.append(ids[start:start + n])
                start += n
    out.extend(own_ids)
    return out
