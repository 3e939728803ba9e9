"""Tests for the merge loops of scratchllm.tokenizer.bpe on single pre-tokens, without the
pre-tokenizer: `bpe_ids` (the list rescan used for short pieces) and `bpe_long` (heap + linked list)
against tiktoken's own BPE of one piece (`Encoding._encode_single_piece`, which skips the regex split).
"""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st

from scratchllm.tokenizer import Tokenizer, bpe
from tests.tokenizer.test_tokenizer import gpt2_python, reference  # noqa: F401  (fixtures)

# Short words are what the list loop sees most; letters make multi-merge words, any bytes make
# pieces that are not valid UTF-8 and pairs that are never tokens.
# (tiktoken panics on an empty piece; test_short_pieces covers b"".)
pieces = st.binary(min_size=1, max_size=40) | st.text(alphabet="aeinorst hlEPT'.0123456789é", min_size=1, max_size=24).map(str.encode)


@settings(max_examples=400, deadline=None)
@given(piece=pieces)
@example(piece=b" Pemberton")
@example(piece=b"\xff\xfe\x00")
@example(piece=b"a" * 97)  # over _LONG_WORD: bpe_ids hands it to bpe_long
def test_merge_loops_equal_tiktoken(gpt2_python: Tokenizer, reference, piece: bytes) -> None:  # noqa: F811
    ranks = gpt2_python._ranks
    want = tuple(reference._encode_single_piece(piece))
    assert bpe.bpe_ids(ranks, piece) == want
    assert bpe.bpe_long(ranks, piece) == want


def test_short_pieces(gpt2_python: Tokenizer) -> None:  # noqa: F811
    ranks = gpt2_python._ranks
    assert bpe.bpe_ids(ranks, b"") == ()
    assert [bpe.bpe_ids(ranks, bytes((b,))) for b in range(256)] == [(ranks[bytes((b,))],) for b in range(256)]
    assert bpe.bpe_ids(ranks, b" Pemberton") == (350, 1491, 1122)  # " P", "ember", "ton"
