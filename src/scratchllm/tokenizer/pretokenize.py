"""Pre-tokenization: splitting text into the pre-tokens ("words") that BPE merges within.

GPT-2's pattern (bpe.GPT2_PATTERN) is written with Unicode property classes (\\p{L} letters,
\\p{N} numbers), which the third-party `regex` module understands and the standard library's `re`
does not. But `re` runs this pattern about twice as fast as `regex`, and the split is a large share
of the python backend's time (benchmarks/tokenizer.py shows both). A character class is only a set of
characters, so `gpt2_re_pattern` spells the same pattern for `re` with the classes listed out:
the characters `regex` puts in \\p{L}, \\p{N} and \\s, as ranges. The lists are read from
`regex` itself, so both forms follow one Unicode version and split alike.

Only the Basic Multilingual Plane (U+0000..U+FFFF) is listed: `re` tests a BMP class with one
table lookup, while characters above it (emoji, historic scripts, rare CJK) can only be ranges
that `re` scans one by one, which made the whole-Unicode form 3x slower than `regex`. Text with
such a character is split by `regex`, as before. The split is the same either way; only the speed
differs.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable

import regex

from scratchllm.tokenizer.bpe import GPT2_PATTERN, GPT2_PATTERN_FAST

# GPT2_PATTERN_FAST with each property class replaced by the listed characters: {L} letters,
# {N} numbers, {S} whitespace; [^{S}] stands for \S. The alternatives are the same, in the same order.
_GPT2_RE_TEMPLATE = r""" ?[{L}]+| ?[{N}]+|'(?:[sdmt]|ll|ve|re)| ?[^{S}{L}{N}]+|[{S}]+(?![^{S}])|[{S}]+"""


def bmp_classes(*property_regexes: str) -> list[str]:
    """For each regex (one character, e.g. r"\\p{L}"), the BMP characters `regex` matches with it as
    the inside of an `re` character class: "\\u0041-\\u005a\\u0061-\\u007a..."."""
    # Every BMP code point in order, in two blocks around the surrogates (never in valid text).
    blocks = [(start, "".join(map(chr, range(start, stop)))) for start, stop in ((0, 0xD800), (0xE000, 0x10000))]
    classes = []
    for property_regex in property_regexes:
        ranges = []
        for start, block in blocks:
            for run in regex.finditer(f"(?:{property_regex})+", block):  # one range per run of matches
                first, last = start + run.start(), start + run.end() - 1
                ranges.append(f"\\u{first:04x}" if first == last else f"\\u{first:04x}-\\u{last:04x}")
        classes.append("".join(ranges))
    return classes


@functools.cache
def gpt2_re_pattern() -> re.Pattern[str]:
    """GPT-2's pre-tokenization pattern for the stdlib `re`, exact on text without characters above
    U+FFFF. Built on first use (~30 ms, once per process)."""
    letters, numbers, spaces = bmp_classes(r"\p{L}", r"\p{N}", r"\s")
    return re.compile(_GPT2_RE_TEMPLATE.format(L=letters, N=numbers, S=spaces))


def has_astral(text: str) -> bool:
    """Whether `text` has a character above U+FFFF. UTF-16 spends two bytes on every other
    character and four (a surrogate pair) on these; encoding is a C loop, ~0.5 ms per MB."""
    return len(text.encode("utf-16-le", "surrogatepass")) != 2 * len(text)


def pretokenizer(pattern: str) -> Callable[[str], list[str]]:
    """text -> its pre-tokens under `pattern` (a `regex` pattern string). For GPT-2's pattern the
    faster stdlib `re` form is used whenever the text allows it (see the module docstring); other
    patterns, such as a trained tokenizer's custom one, run in `regex`. Raises `regex.error` for an
    invalid pattern."""
    compiled = regex.compile(GPT2_PATTERN_FAST if pattern == GPT2_PATTERN else pattern)
    if pattern != GPT2_PATTERN:
        return compiled.findall

    def split(text: str) -> list[str]:
        if not text.isascii() and has_astral(text):  # isascii is O(1): a flag of the str object
            return compiled.findall(text)
        return gpt2_re_pattern().findall(text)

    return split
