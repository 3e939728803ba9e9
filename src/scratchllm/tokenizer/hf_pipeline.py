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

A regex comes with the file, so it is untrusted: both engines backtrack, and a pattern such as
`(a|aa)+$` takes time exponential in the length of a text that almost matches. Here each split runs
under a time limit (`Split.__call__`'s timeout, set per text by hf_encoders.py), and `repeated_ambiguity`
finds the shape that backtracks exponentially (a repeated group holding an alternation or a repetition)
when the file is read, so that such a pattern never reaches the library, which cannot be stopped.
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

    @functools.cached_property
    def backtracks(self) -> str | None:
        """The part of the pattern that can backtrack exponentially (`repeated_ambiguity`), or None."""
        return repeated_ambiguity(self.pattern)

    def __call__(self, text: str, timeout: float | None = None) -> list[str]:
        """The pieces of `text`; TimeoutError when the regex takes longer than `timeout` seconds."""
        segments: list[tuple[str, bool]] = []  # (text, is a match), in order
        end = 0
        for m in self.compiled.finditer(text, timeout=timeout):
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


_QUANTIFIER = regex.compile(r"\{(\d*)(,(\d*))?\}")
# What may follow a group's "(": (?:, (?=, (?!, (?<=, (?<!, (?>, (?<name>, (?P<name>, (?i: or flags alone (?i)
_GROUP_PREFIX = regex.compile(r"\?(?:P?<[A-Za-z_]\w*>|<[=!]|[=!>:|]|[a-zA-Z^-]*[:)])")


def repeated_ambiguity(pattern: str) -> str | None:
    """The first part of `pattern` that can backtrack exponentially or as a high power of the text's
    length, else None: a group that is repeated (by *, + or {m,n} with n > 1) and holds an alternation,
    an optional part or a repetition itself, such as (a|aa)+, (a?a)+ or (a+)*, or a run of three or more
    repetitions in one branch, such as \\w+\\w+\\w+$.

    The first is the shape of exponential backtracking (Kirrage, Rathnayake and Thielecke 2013, "Static
    analysis for regular expression denial-of-service attacks"): on a text that almost matches, the
    engine tries every way of dividing it among the repetitions; k repetitions in a row that overlap
    try every way of dividing it k ways. Pre-tokenizer patterns of real models (GPT-2's, Llama 3's,
    Qwen's) repeat single characters and classes, at most two in a branch. Two that overlap (a*a*$) can
    still take time quadratic in a run's length; the time limit bounds those.
    """
    groups: list[list] = []  # open groups: [start, holds an alternation, holds a quantifier, repetitions in its branch]
    outer = [0]  # repetitions in the current top-level branch
    last: list | None = None  # the group that just closed, if the previous atom was one
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "\\":  # an escape; \p{..}, \x{..}, \k<..> and the like run to their closing bracket
            close = {"{": "}", "<": ">"}.get(pattern[i + 2:i + 3]) if pattern[i + 1:i + 2] in ("p", "P", "x", "k", "g", "N") else None
            i = (pattern.find(close, i + 3) + 1 or n) if close else i + 2
            last = None
        elif c == "[":  # a character class, perhaps with nested classes ([[:alpha:]], [a-z&&[^aeiou]])
            depth, i = 1, i + 1
            i += pattern[i:i + 1] == "^"
            i += pattern[i:i + 1] == "]"  # a leading ] is a literal
            while i < n and depth:
                if pattern[i] == "\\":
                    i += 1
                elif pattern[i] == "[":
                    depth += 1
                elif pattern[i] == "]":
                    depth -= 1
                i += 1
            last = None
        elif c == "(":
            prefix = _GROUP_PREFIX.match(pattern, i + 1)
            if prefix and pattern[prefix.end() - 1] == ")":  # (?i): flags, no group
                i, last = prefix.end(), None
                continue
            groups.append([i, False, False, 0])
            i, last = prefix.end() if prefix else i + 1, None
        elif c == ")":
            last = groups.pop() if groups else [i, False, False, 0]
            if groups:  # what a group holds, its enclosing groups hold too
                groups[-1][1] |= last[1]
                groups[-1][2] |= last[2]
            i += 1
        elif c == "|":
            if groups:
                groups[-1][1] = True
                groups[-1][3] = 0
            else:
                outer[0] = 0
            i, last = i + 1, None
        elif c in "*+?" or (c == "{" and _QUANTIFIER.match(pattern, i)):
            m = _QUANTIFIER.match(pattern, i) if c == "{" else None
            end = m.end() if m else i + 1
            if m:  # {m}, {m,} or {m,n}: a repetition unless it allows at most one
                low, comma, high = m.group(1), m.group(2), m.group(3)
                repeats = bool(comma) and (not high or int(high) > 1) or (not comma and low.isdigit() and int(low) > 1)
            else:
                repeats = c != "?"
            unbounded = c in "*+" or bool(m and m.group(2) and not m.group(3))
            if pattern[end:end + 1] in ("?", "+"):  # lazy or possessive
                end += 1
            if repeats and last is not None and (last[1] or last[2]):
                return pattern[last[0]:end]
            if groups:
                groups[-1][2] = True
            branch = groups[-1] if groups else None
            if unbounded:
                count = (branch[3] if branch else outer[0]) + 1
                if count >= 3:
                    return pattern
                if branch:
                    branch[3] = count
                else:
                    outer[0] = count
            i, last = end, None
        else:
            i, last = i + 1, None
    return None


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
