"""What counts as the same text: the normalised form two texts are compared in (`normalise_text`:
case, punctuation, numbers, codes and web addresses masked), near-copies (`similarity`,
`near_copy_pairs`: word sequences at least 90% alike), groups of copies (`copy_groups`) and copies of
a set of known texts (`copies_of`). data/labelled.py's `dedupe` keeps one example per group, before
`split_examples` balances and splits.

Why: a text in two splits is a test question seen in training. The UCI SMS Spam Collection repeats
texts ("Sorry, I'll call later" 30 times), and its spam is templated: the same message with another
phone number, claim code, price or web address ("PRIVATE! Your 2003 Account Statement for 07808247860
shows 800 un-redeemed S. I. M. points. Call 08719899229 Identifier Code: 40411 Expires 06/11/04"
comes twelve times, with other numbers or none), or with a word added or dropped ("Please call" / "Call").
"""

from __future__ import annotations

import difflib
import math
import re
from collections import Counter
from collections.abc import Sequence

from scratchllm.errors import ScratchLLMError

# Two texts are near-copies when their normalised word sequences are at least this alike
# (`similarity`). At 0.9 every pair in the SMS collection is one message with a word or two changed;
# at 0.8 different short messages meet ("I am on the way to ur home" / "... to tirupur").
NEAR_COPY_SIMILARITY = 0.9

# The variable part of a template: every word holding a digit (numbers, prices, codes, postcodes) and
# every web address becomes this word, and a run of them one such word.
PLACEHOLDER = "0"

# A web or e-mail address: a word (between spaces) with a scheme, "www." or a common top-level domain
# in it, whole (SMS spam glues text onto them: "www.Ldew.com1win150ppm", "info:www.100percent-real.com").
URL = re.compile(r"(?<!\S)\S*(?:https?://|www\.|\.(?:com|net|org|biz|info|tv|us|uk)\b)\S*", re.IGNORECASE)

WORD = re.compile(r"[^\W_]+")  # a run of letters and digits (`str.isalnum`, which `\w` adds "_" to)


def normalise_text(text: str) -> str:
    """The form in which two texts count as the same message: case-folded, web and e-mail addresses and
    every word that holds a digit (a number, price, code or postcode) masked as one word "0" (a run of them
    as one), every run of characters that are not letters or digits (`str.isalnum`: punctuation,
    symbols, whitespace) made one space. "PRIVATE! Your 2003 Account Statement for 07808247860 ..."
    and "PRIVATE! Your 2004 Account Statement for 07123456789 ..." are one text; so are "Call
    0207-083-6089" and "call 08718738034.", and "Sorry, I'll call later" and "sorry i'll call
    later...". A text left with no unmasked word ("645", "2/2 146tf150p") keeps its digits, and one
    with no letter or digit at all (":)", ":-) :-)") is its own whitespace-collapsed self, so that
    different numbers and emoticons stay different texts."""
    words = WORD.findall(URL.sub(f" {PLACEHOLDER} ", text.casefold()))
    masked: list[str] = []
    for word in words:
        if not word.isalpha():  # letters and digits (str.isalnum) that are not all letters: a number in it
            word = PLACEHOLDER
        if not (word == PLACEHOLDER and masked and masked[-1] == PLACEHOLDER):
            masked.append(word)
    if any(word != PLACEHOLDER for word in masked):
        return " ".join(masked)
    plain = WORD.findall(text.casefold())
    return " ".join(plain) if plain else " ".join(text.split())


def similarity(a: str, b: str) -> float:
    """How alike two texts are: 2 M / (words of a + words of b) over their normalised word sequences,
    M the words in the matching blocks of difflib's `SequenceMatcher` (Ratcliff and Obershelp 1988).
    1.0 for copies; "You have 1 new voicemail. Please call 08719181503" and "You have 1 new message.
    Please call 08718738034." share 7 of 8 words each: 0.875."""
    return _ratio(normalise_text(a).split(), normalise_text(b).split())


def _ratio(a: list[str], b: list[str]) -> float:
    if b < a:
        a, b = b, a  # the same figure either way round (difflib breaks ties between blocks by position)
    return difflib.SequenceMatcher(None, a, b, autojunk=False).ratio()


def _check_threshold(threshold: float) -> None:
    if not 0 < threshold <= 1:
        raise ScratchLLMError(f"near-copy similarity {threshold!r}: expected a number in (0, 1]")


def near_copy_pairs(keys: Sequence[str], threshold: float = NEAR_COPY_SIMILARITY) -> list[tuple[int, int]]:
    """The pairs (i, j), i < j, of different normalised texts whose word sequences are at least
    `threshold` alike (`similarity`), all of them, found without comparing every pair.

    Two sequences of a <= b words that differ have M <= a matching words, so r = 2M/(a+b) <= 2a/(2a+1):
    a text of fewer than r / (2 (1 - r)) words (4.5 at 0.9) has no near-copy but its equals. Longer
    ones go through prefix filtering (Chaudhuri et al. 2006; Xiao et al. 2008): they share at least
    M - B word pairs (bigrams) inside their B matching blocks, and B - 1 <= (a - M) + (b - M)
    (difflib's blocks are separated by an unmatched word), so at least 3M - (a + b) - 1 >=
    (1.5 r - 1)(a + b) - 1 bigrams; with the partner's b >= r a / (2 - r), that is `need` for a text
    of a words. Each text's bigrams (repeats numbered apart) are sorted rarest first; two texts that
    share `need` of them share one among the first (bigrams - need + 1) of each, so only texts that
    share one of those are compared. (A text too short for `need` >= 1, which happens only below
    r = 0.88, is compared with every text of a length that allows the threshold.)"""
    _check_threshold(threshold)
    words = [key.split() for key in keys]
    if threshold == 1:
        return []  # only equal texts are that alike
    shortest = threshold / (2 * (1 - threshold)) - 1e-9  # (less rounding error: a text this long may reach it)
    grams: list[list[tuple[str, str, int]]] = []
    for w in words:
        seen: dict[tuple[str, str], int] = {}
        tagged = []
        for pair in zip(w, w[1:]):
            k = seen[pair] = seen.get(pair, -1) + 1
            tagged.append((*pair, k))
        grams.append(tagged)
    frequency = Counter(g for tagged in grams for g in tagged)
    index: dict[tuple[str, str, int], list[int]] = {}
    candidates: set[tuple[int, int]] = set()
    for j, tagged in enumerate(grams):
        a = len(words[j])
        need = math.ceil((1.5 * threshold - 1) * (a + threshold * a / (2 - threshold)) - 1 - 1e-9)
        if a < shortest:
            continue
        if need < 1:
            candidates.update((min(i, j), max(i, j)) for i in range(len(words)) if i != j and len(words[i]) >= shortest)
            continue
        prefix = sorted(tagged, key=lambda g: (frequency[g], g))[: len(tagged) - need + 1]
        candidates.update((i, j) for g in prefix for i in index.get(g, ()))
        for g in prefix:
            index.setdefault(g, []).append(j)
    pairs = []
    for i, j in sorted(candidates):
        a, b = len(words[i]), len(words[j])
        if 2 * min(a, b) / (a + b) >= threshold and _ratio(words[i], words[j]) >= threshold:
            pairs.append((i, j))
    return pairs


def copy_groups(texts: Sequence[str], threshold: float | None = NEAR_COPY_SIMILARITY) -> list[int]:
    """For each text, the index of the first text of its group of copies: texts with the same
    normalised form, joined with their near-copies (`near_copy_pairs`) and theirs in turn (connected
    components). `threshold=None`: equal normalised forms only."""
    keys = [normalise_text(t) for t in texts]
    first: dict[str, int] = {}
    for i, key in enumerate(keys):
        first.setdefault(key, i)
    parent = {i: i for i in first.values()}

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    if threshold is not None:
        distinct = list(first)
        for x, y in near_copy_pairs(distinct, threshold):
            rx, ry = root(first[distinct[x]]), root(first[distinct[y]])
            parent[max(rx, ry)] = min(rx, ry)  # the earliest text stands for the group
    return [root(first[key]) for key in keys]


def copies_of(texts: Sequence[str], known: Sequence[str], threshold: float | None = NEAR_COPY_SIMILARITY) -> list[bool]:
    """For each of `texts`: whether it is a copy (the same normalised form) or a near-copy of one of `known`."""
    keys = {normalise_text(t) for t in known}
    own = [normalise_text(t) for t in texts]
    hits = [key in keys for key in own]
    if threshold is not None and keys:
        pool = sorted(keys) + sorted(set(own) - keys)
        near = {pool[j] for i, j in near_copy_pairs(pool, threshold) if i < len(keys) <= j}
        hits = [hit or key in near for hit, key in zip(hits, own)]
    return hits
