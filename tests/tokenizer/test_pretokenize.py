"""Tests for scratchllm.tokenizer.pretokenize: the stdlib-re form of GPT-2's pattern splits text
exactly as the `regex` module does with the original pattern, so the python backend keeps
tiktoken's ids: on every BMP character in the contexts where the alternatives compete, on random
text (hypothesis), and through the `regex` fallback for text with characters above U+FFFF. Also the
tiktoken backend's form of the pattern against tiktoken's own.
"""

from __future__ import annotations

import re

import pytest
import regex
from hypothesis import given, settings
from hypothesis import strategies as st

from scratchllm.errors import ScratchLLMError
from scratchllm.tokenizer import GPT2_PATTERN, BPETokenizer, Tokenizer
from scratchllm.tokenizer.pretokenize import bmp_classes, gpt2_re_pattern, has_astral, pretokenizer
from tests.tokenizer.test_tokenizer import gpt2_python, reference  # noqa: F401  (fixtures)

ALL_BMP = [chr(c) for c in range(0x10000) if not 0xD800 <= c < 0xE000]

# Each character where the pattern's alternatives compete: inside and after a word, after a
# space, doubled before a digit, after an apostrophe (the contractions), after a newline and
# before and after whitespace runs (the lookahead in "\s+(?!\S)"), next to punctuation.
CONTEXT = "a{c}b {c}{c}1 '{c}s \n{c}  {c}. {c}\t"

split_gpt2 = pretokenizer(GPT2_PATTERN)


def test_every_bmp_character_splits_as_regex_does() -> None:
    text = "".join(CONTEXT.format(c=c) for c in ALL_BMP)
    assert not has_astral(text)  # so the stdlib re form is the one used
    assert split_gpt2(text) == gpt2_re_pattern().findall(text) == regex.findall(GPT2_PATTERN, text)


def test_every_bmp_character_gets_tiktokens_ids(gpt2_python: Tokenizer, reference) -> None:  # noqa: F811
    # A shorter context than above: ids run BPE on every distinct pre-token, ~10 per character.
    text = "".join(f"a{c}b {c}1 '{c}\n{c}  {c}." for c in ALL_BMP)
    assert gpt2_python.encode_ordinary(text) == reference.encode_ordinary(text)


def test_tiktoken_backend_pattern_on_planes_0_and_1(reference) -> None:  # noqa: F811
    # The tiktoken backend runs GPT-2's pattern in its letters-first form (GPT2_PATTERN_FAST);
    # the reference runs tiktoken's own r50k pattern. Emoji and math letters live in plane 1.
    chars = [*ALL_BMP, *map(chr, range(0x10000, 0x20000))]
    text = "".join(CONTEXT.format(c=c) for c in chars)
    assert Tokenizer.gpt2(backend="tiktoken").encode_ordinary(text) == reference.encode_ordinary(text)


def test_classes_list_regexs_characters() -> None:
    letters, numbers, spaces = bmp_classes(r"\p{L}", r"\p{N}", r"\s")
    assert numbers.startswith("\\u0030-\\u0039")  # ASCII digits first
    assert spaces.startswith("\\u0009-\\u000d\\u0020")  # \t \n \v \f \r and space; not \x1c-\x1f
    assert re.fullmatch(f"[{letters}]+", "Zürich東京Ωñ") and not re.search(f"[{letters}]", "1 ½_-'")
    assert re.fullmatch(f"[{numbers}]+", "0½٣Ⅻ") and re.fullmatch(f"[{spaces}]+", " \u00a0\u3000\u2028\x85")


@pytest.mark.parametrize(("text", "astral"), [
    ("", False), ("plain ASCII", False), ("é, 東京, \uffff", False),
    ("🦜", True), ("a\U00010000b", True), ("max \U0010ffff", True), ("𝐀" * 3 + "é" * 3, True),
])
def test_has_astral(text: str, astral: bool) -> None:
    assert has_astral(text) is astral


def test_astral_text_falls_back_to_regex(reference) -> None:  # noqa: F811
    # "𝐀" (U+1D400) is a letter above U+FFFF: it must join the BMP letters around it.
    text = "x𝐀y 𝐀𝐀1 'é🦜. 🦜🦜  𝟘𝟙"
    assert split_gpt2(text) == regex.findall(GPT2_PATTERN, text)
    assert split_gpt2(text)[:2] == ["x𝐀y", " 𝐀𝐀"]
    assert Tokenizer.gpt2(backend="python").encode_ordinary(text) == reference.encode_ordinary(text)


def test_other_patterns_run_in_regex() -> None:
    split = pretokenizer(r"\p{L}+|\P{L}+")  # \p is regex syntax: the stdlib re would reject it
    assert split("héllo, wörld") == ["héllo", ", ", "wörld"]
    with pytest.raises(regex.error):
        pretokenizer("(unclosed")
    with pytest.raises(ScratchLLMError, match="not a valid regex"):
        BPETokenizer([], pattern="(unclosed")


# Characters the pattern treats specially, mixed with any other BMP character: random text rarely
# hits a contraction or a whitespace run before a word otherwise.
PATTERN_CHARS = list(" \t\n\r\x0b\x0c\x1c\x85\u00a0\u2028\u3000'sdmtlvreSDM0123456789½aZé.,!-_")
bmp_text = st.text(alphabet=st.sampled_from(PATTERN_CHARS) | st.characters(max_codepoint=0xFFFF, codec="utf-8"))


@settings(max_examples=300, deadline=None)
@given(text=bmp_text)
def test_random_bmp_text_splits_and_encodes_as_tiktoken(gpt2_python: Tokenizer, reference, text: str) -> None:  # noqa: F811
    assert split_gpt2(text) == regex.findall(GPT2_PATTERN, text)
    assert gpt2_python.encode_ordinary(text) == reference.encode_ordinary(text)


@settings(max_examples=200, deadline=None)
@given(text=st.text(alphabet=st.sampled_from(PATTERN_CHARS) | st.characters(codec="utf-8")))
def test_random_text_splits_as_regex_does(text: str) -> None:
    assert split_gpt2(text) == regex.findall(GPT2_PATTERN, text)
