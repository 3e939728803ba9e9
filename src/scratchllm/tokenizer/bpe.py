"""Byte-pair encoding, the algorithm: GPT-2's byte <-> character map, merging one pre-token's bytes
by rank, and learning merges from word counts (Sennrich et al. 2016, "Neural Machine Translation of
Rare Words with Subword Units", applied to bytes as in GPT-2).

Ids are ranks: the 256 single-byte tokens come first, then one id per merge in merge order. So
"merge the adjacent pair whose concatenation has the lowest id" is the merge rule, which is
tiktoken's rule. `BPETokenizer` (bpe_tokenizer.py) wraps these functions with pre-tokenization, special
tokens and decoding.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Mapping

from scratchllm.errors import ScratchLLMError

# GPT-2's pre-tokenization pattern (OpenAI gpt-2 src/encoder.py). Splits contractions off, keeps a
# single leading space attached to the following word/number/punctuation run, and leaves the last
# space of a whitespace run to the next word ("\s+(?!\S)").
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


# The same language, ~20% faster in the `regex` module: letters and numbers (the common cases) are
# tried first, and the contractions share one alternative. Equivalent because alternatives only
# compete when they can match at the same position: a contraction starts with "'", which neither
# " ?\p{L}+" nor " ?\p{N}+" can, so it still comes before the punctuation run; and the contractions
# differ in their second character. The tests check ids against tiktoken, which uses the original.
GPT2_PATTERN_FAST = r""" ?\p{L}+| ?\p{N}+|'(?:[sdmt]|ll|ve|re)| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


# The word cache maps pre-token text -> ids. English text has a few tens of thousands of distinct
# words, so this bound is rarely hit; when it is, clearing is cheaper than LRU bookkeeping.
_CACHE_LIMIT = 100_000


# Very long pre-tokens (base64 blobs, runs of one character) are unlikely to repeat: don't cache.
_CACHE_MAX_WORD = 256


# Above this many bytes a pre-token is merged with a heap + linked list (O(n log n)) instead of
# rescanning the pair-rank list after every merge (O(n^2), but with C-speed scans).
_LONG_WORD = 96


BYTE_PIECES: list[bytes] = [bytes((b,)) for b in range(256)]



def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (OpenAI gpt-2 src/encoder.py).

    encoder.json and vocab.bpe store tokens as text; bytes that are printable Latin-1 characters
    stand for themselves and the other 68 bytes (controls, space, soft hyphen...) are shifted to
    code points 256+n, so no token is written with whitespace or control characters.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping = {b: chr(b) for b in printable}
    shifted = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + shifted)
            shifted += 1
    return mapping


# str.translate table from GPT-2's printable characters back to the Latin-1 character of each byte,
# so `text.translate(table).encode("latin-1")` decodes a whole token at C speed.
_GPT2_TEXT_TO_LATIN1 = {ord(ch): b for b, ch in bytes_to_unicode().items()}


def gpt2_text_to_bytes(token: str) -> bytes:
    return token.translate(_GPT2_TEXT_TO_LATIN1).encode("latin-1")



# --------------------------------------------------------------------------------------------
# Byte-pair merging of one pre-token (python backend)


def bpe_ids(ranks: dict[bytes, int], piece: bytes) -> tuple[int, ...]:
    """Ids of one pre-token: repeatedly merge the leftmost adjacent pair with the lowest rank."""
    rank = ranks.get(piece)
    if rank is not None:  # most words are a single token once the vocabulary is large
        return (rank,)
    if len(piece) > _LONG_WORD or not piece:  # (b"" has no ids; every single byte is a token)
        return bpe_long(ranks, piece)
    parts = list(map(BYTE_PIECES.__getitem__, piece))
    never = len(ranks)  # larger than any rank: "this pair is not a token"
    get = ranks.get
    # pair_ranks[i] is the rank of parts[i] + parts[i + 1]; after a merge only its two neighbours
    # change, so the list is patched in place instead of being recomputed.
    pair_ranks = [get(a + b, never) for a, b in zip(parts, parts[1:])]
    # At least two parts always remain (the piece is not a token: merges only ever make tokens),
    # so pair_ranks is never empty and the loop ends when no adjacent pair is a token.
    while True:
        best = min(pair_ranks)
        if best == never:
            break
        i = pair_ranks.index(best)  # leftmost on ties, like tiktoken and encoder.py
        merged = parts[i] + parts[i + 1]
        parts[i] = merged
        del parts[i + 1]
        del pair_ranks[i]
        if i:
            pair_ranks[i - 1] = get(parts[i - 1] + merged, never)
        if i < len(pair_ranks):
            pair_ranks[i] = get(merged + parts[i + 1], never)
    return tuple(map(ranks.__getitem__, parts))


def bpe_long(ranks: dict[bytes, int], piece: bytes) -> tuple[int, ...]:
    """Same result as `bpe_ids`, for long pre-tokens: a heap of candidate pairs over a linked list.

    Heap entries are (rank, position); positions keep text order, so ties still go leftmost.
    Entries made stale by a neighbouring merge are skipped when popped: an entry is current iff
    the pair now starting at that position still concatenates to the token of that rank.
    """
    parts: list[bytes | None] = list(map(BYTE_PIECES.__getitem__, piece))
    n = len(parts)
    nxt = list(range(1, n + 1))  # n marks "no right neighbour"
    prv = list(range(-1, n - 1))
    get = ranks.get
    heap = [(r, i) for i in range(n - 1) if (r := get(parts[i] + parts[i + 1])) is not None]  # type: ignore[operator]
    heapq.heapify(heap)
    while heap:
        rank, i = heapq.heappop(heap)
        left = parts[i]
        j = nxt[i]
        if left is None or j >= n:
            continue
        merged = left + parts[j]  # type: ignore[operator]
        if get(merged) != rank:
            continue
        parts[i] = merged
        parts[j] = None
        k = nxt[j]
        nxt[i] = k
        if k < n:
            prv[k] = i
            if (r := get(merged + parts[k])) is not None:  # type: ignore[operator]
                heapq.heappush(heap, (r, i))
        p = prv[i]
        if p >= 0 and (r := get(parts[p] + merged)) is not None:  # type: ignore[operator]
            heapq.heappush(heap, (r, p))
    return tuple(ranks[part] for part in parts if part is not None)


class WordCache(dict[str, tuple[int, ...]]):
    """pre-token text -> ids; a miss runs BPE. As a dict subclass with `__missing__`, a cache hit
    costs one C-level lookup inside `map(cache.__getitem__, words)`."""

    __slots__ = ("ranks",)

    def __init__(self, ranks: dict[bytes, int]) -> None:
        super().__init__()
        self.ranks = ranks

    def __missing__(self, word: str) -> tuple[int, ...]:
        ids = bpe_ids(self.ranks, word.encode("utf-8"))
        if len(word) <= _CACHE_MAX_WORD:
            if len(self) >= _CACHE_LIMIT:
                self.clear()
            self[word] = ids
        return ids



# --------------------------------------------------------------------------------------------
# Learning merges


def learn_merges(words_count: Mapping[str, int], num_merges: int, progress: bool) -> list[tuple[bytes, bytes]]:
    """The BPE merge loop with incremental pair counts.

    Keeps, for every adjacent pair, its frequency-weighted count and the set of words containing it.
    A merge rewrites only the words that contain the pair and applies the difference of their
    pair counts, so each step costs the size of the affected words, not of the corpus. A max-heap
    with lazy deletion finds the best pair: an entry is current iff its count still matches.
    """
    from tqdm.auto import tqdm

    words: list[list[int]] = [list(word.encode("utf-8")) for word in words_count]
    freqs: list[int] = list(words_count.values())
    vocab: list[bytes] = list(BYTE_PIECES)
    known: set[bytes] = set(vocab)
    counts: dict[tuple[int, int], int] = {}
    where: dict[tuple[int, int], set[int]] = {}
    for idx, (word, freq) in enumerate(zip(words, freqs)):
        for pair in zip(word, word[1:]):
            counts[pair] = counts.get(pair, 0) + freq
            where.setdefault(pair, set()).add(idx)
    # Heap order: highest count, then smallest (left bytes, right bytes): a deterministic tie-break.
    heap = [(-c, vocab[a], vocab[b], a, b) for (a, b), c in counts.items()]
    heapq.heapify(heap)
    merges: list[tuple[bytes, bytes]] = []
    with tqdm(total=num_merges, desc="BPE merges", disable=not progress) as bar:
        while len(merges) < num_merges:
            if not heap:
                raise ScratchLLMError(f"vocab_size: the training text only supports {len(merges)} merges, "
                                      f"{num_merges} were asked for; use a smaller vocab_size or more text")
            neg, left, right, a, b = heapq.heappop(heap)
            pair = (a, b)
            if counts.get(pair, 0) != -neg:
                continue  # stale: a fresher entry for this pair is in the heap (or it is gone)
            token = left + right
            if token in known:
                del counts[pair]  # never mergeable; drop it for good
                continue
            new_id = len(vocab)
            vocab.append(token)
            known.add(token)
            merges.append((left, right))
            bar.update(1)
            delta: dict[tuple[int, int], int] = {}
            for idx in where.pop(pair):
                word = words[idx]
                freq = freqs[idx]
                merged: list[int] = []
                i = 0
                n = len(word)
                while i < n:  # left to right, non-overlapping ("aaa" -> "aa", "a")
                    if i + 1 < n and word[i] == a and word[i + 1] == b:
                        merged.append(new_id)
                        i += 2
                    else:
                        merged.append(word[i])
                        i += 1
                old_pairs = Counter(zip(word, word[1:]))
                new_pairs = Counter(zip(merged, merged[1:]))
                for p, c in old_pairs.items():
                    delta[p] = delta.get(p, 0) - c * freq
                    if p not in new_pairs and p != pair:
                        where[p].discard(idx)
                for p, c in new_pairs.items():
                    delta[p] = delta.get(p, 0) + c * freq
                    if p not in old_pairs:
                        where.setdefault(p, set()).add(idx)
                words[idx] = merged
            for p, d in delta.items():
                if d == 0:
                    continue
                c = counts.get(p, 0) + d
                if c > 0:
                    counts[p] = c
                    heapq.heappush(heap, (-c, vocab[p[0]], vocab[p[1]], p[0], p[1]))
                else:
                    counts.pop(p, None)
                    where.pop(p, None)
    return merges

