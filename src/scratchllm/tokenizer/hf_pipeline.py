"""The steps of a Hugging Face tokenizer.json pipeline (the `tokenizers` library's "The tokenization
pipeline"), written from scratch; hf_files.py reads which steps a file uses, hf_encoders.py runs them.

1. Added tokens ("added_tokens": <|im_start|>, <|eot_id|>, ...) are cut out of the text first, so the
   text between them is encoded on its own (`AddedToken`; hf_encoders.py `AddedTokenSplitter`). Special
   ones are control tokens; `Tokenizer.encode` matches them only when allowed (tiktoken's rule),
   non-special ones are ordinary vocabulary.
2. Normalizer: Qwen2 applies Unicode NFC; GPT-2 and Llama 3 have none.
3. Pre-tokenizer: a regex splits the text into pieces (Llama 3 and Qwen: a `Split` with their own
   pattern, which cuts digit runs into groups of up to three or into single digits; GPT-2: the
   `ByteLevel` step with GPT-2's pattern), and `ByteLevel` turns each piece into its UTF-8 bytes,
   written with GPT-2's byte-to-character map (bpe.py `bytes_to_unicode`).
4. Model: BPE over a vocabulary (token -> id, in any order) and a merge list. Merging follows the
   *pair* ranks (`merge_by_pair_rank`): the adjacent pair that comes earliest in the merge list is
   merged first (leftmost on ties). This differs from bpe.py, where ids are merge ranks and the rule is
   "the pair whose merged token has the lowest id" (tiktoken's). With `ignore_merges` (Llama 3), a
   piece that is a token of the vocabulary as a whole is that token, whatever the merges would do.
5. Post-processor: `TemplateProcessing` puts special tokens around the ids (Llama 3: <|begin_of_text|>
   first); `encode(..., add_special_tokens=True)` applies it, as transformers' `tokenizer(text)` does.
6. Decoder: `ByteLevel` maps the characters back to bytes.

Regexes run on the `regex` module here and on Oniguruma in the `tokenizers` library; the two agree on
every character Python's Unicode database knows, but characters assigned by a later Unicode version
than one of them knows may be classified differently.
"""

from __future__ import annotations

import functools
import heapq
from collections.abc import Mapping
from dataclasses import dataclass

import regex

from scratchllm.tokenizer.bpe import BYTE_PIECES

SPLIT_BEHAVIORS = ("Removed", "Isolated", "MergedWithPrevious", "MergedWithNext", "Contiguous")


@dataclass(frozen=True)
class AddedToken:
    """One entry of tokenizer.json's "added_tokens": matched in the text before anything else.

    normalized: matched in the normalized text (else in the raw text); lstrip / rstrip: the match
    takes the whitespace on its left / right with it.
    """

    id: int
    content: str
    special: bool
    normalized: bool = False
    lstrip: bool = False
    rstrip: bool = False


@dataclass(frozen=True)
class Split:
    """One regex split of the pre-tokenizer (tokenizers' `Split`; `ByteLevel`'s own regex and
    `Digits` are splits too). The regex's matches and the text between them alternate; `invert`
    swaps the two; `behavior` says what becomes of the matches: "Isolated" pieces of their own,
    "Removed", "MergedWithPrevious" / "MergedWithNext" (joined to the text before / after them),
    "Contiguous" (consecutive matches joined)."""

    pattern: str
    behavior: str = "Isolated"
    invert: bool = False

    @functools.cached_property
    def compiled(self) -> regex.Pattern[str]:
        return regex.compile(self.pattern)

    def __call__(self, text: str) -> list[str]:
        segments: list[tuple[str, bool]] = []  # (text, is a match), in order
        end = 0
        for m in self.compiled.finditer(text):
            if m.start() > end:
                segments.append((text[end : m.start()], False))
            segments.append((m.group(), True))
            end = m.end()
        if end < len(text):
            segments.append((text[end:], False))
        if self.invert:
            segments = [(t, not is_match) for t, is_match in segments]
        if self.behavior == "Removed":
            pieces = [t for t, is_match in segments if not is_match]
        elif self.behavior == "Isolated":
            pieces = [t for t, _ in segments]
        elif self.behavior == "MergedWithNext":  # the mirror image of MergedWithPrevious
            pieces = [t[::-1] for t in _merge_matches([(t[::-1], m) for t, m in reversed(segments)])][::-1]
        elif self.behavior == "MergedWithPrevious":
            pieces = _merge_matches(segments)
        else:  # Contiguous
            pieces = []
            before = False
            for t, is_match in segments:
                if pieces and is_match == before:
                    pieces[-1] += t
                else:
                    pieces.append(t)
                before = is_match
        return [p for p in pieces if p]


def _merge_matches(segments: list[tuple[str, bool]]) -> list[str]:
    """A match joins the piece before it when that piece is not a match itself."""
    pieces: list[str] = []
    before = False
    for t, is_match in segments:
        if is_match and not before and pieces:
            pieces[-1] += t
        else:
            pieces.append(t)
        before = is_match
    return pieces


@dataclass(frozen=True)
class PrefixSpace:
    """`ByteLevel(add_prefix_space=true)`: a piece that does not start with a space gets one."""

    def __call__(self, text: str) -> list[str]:
        return [text if text.startswith(" ") else " " + text]


def merge_by_pair_rank(piece: bytes, pair_ranks: Mapping[tuple[bytes, bytes], int]) -> list[bytes]:
    """BPE with Hugging Face's rule: merge the adjacent pair with the lowest rank in the merge list,
    leftmost on ties, until no adjacent pair is a merge. A heap of (rank, position) candidates over a
    linked list of parts; an entry is stale (skipped) when the pair now at its position is another."""
    parts: list[bytes | None] = list(map(BYTE_PIECES.__getitem__, piece))
    n = len(parts)
    nxt = list(range(1, n + 1))  # n marks "no right neighbour"
    prv = list(range(-1, n - 1))
    get = pair_ranks.get
    heap = [(r, i) for i in range(n - 1) if (r := get((parts[i], parts[i + 1]))) is not None]  # type: ignore[arg-type]
    heapq.heapify(heap)
    while heap:
        rank, i = heapq.heappop(heap)
        j = nxt[i]
        if parts[i] is None or j >= n or get((parts[i], parts[j])) != rank:  # type: ignore[arg-type]
            continue
        merged = parts[i] + parts[j]  # type: ignore[operator]
        parts[i], parts[j] = merged, None
        k = nxt[j]
        nxt[i] = k
        if k < n:
            prv[k] = i
            if (r := get((merged, parts[k]))) is not None:  # type: ignore[arg-type]
                heapq.heappush(heap, (r, i))
        p = prv[i]
        if p >= 0 and (r := get((parts[p], merged))) is not None:  # type: ignore[arg-type]
            heapq.heappush(heap, (r, p))
    return [part for part in parts if part is not None]
