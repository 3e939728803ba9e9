"""The two encoders of a Hugging Face tokenizer (`HFTokenizer`'s backends), which give the same ids from
one `HFTokenizerData` (hf_files.py): `PythonHFEncoder`, the pipeline's steps (hf_pipeline.py) run in
Python, and `TokenizersHFEncoder`, the `tokenizers` library reading the same tokenizer.json (optional:
`pip install 'scratchllm[hf]'`). Both find added tokens the library's way (`AddedTokenSplitter`) and
offer tiktoken.Encoding's `encode_ordinary` / `encode`.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import regex

from scratchllm.errors import ScratchLLMError
from scratchllm.tokenizer.hf_files import TOKENIZER_JSON, HFTokenizerData
from scratchllm.tokenizer.hf_pipeline import AddedToken, merge_by_pair_rank

_CACHE_LIMIT = 100_000  # pieces kept by the python encoder's word cache (cleared when full)


class AddedTokenSplitter:
    """Cuts added tokens out of a text, as the `tokenizers` library does: tokens with normalized false
    are found in the raw text, the rest is normalized, then tokens with normalized true are found in
    it. Longest match first; lstrip / rstrip matches take adjacent whitespace with them."""

    def __init__(self, data: HFTokenizerData):
        self.data = data
        self._patterns: dict[tuple[AddedToken, ...], regex.Pattern[str]] = {}

    def _pattern(self, tokens: tuple[AddedToken, ...]) -> regex.Pattern[str]:
        pattern = self._patterns.get(tokens)
        if pattern is None:
            # One capturing group per token, so the match's `lastindex` names the token.
            pattern = regex.compile("|".join(("\\s*" if t.lstrip else "") + f"({regex.escape(t.content)})"
                                             + ("\\s*" if t.rstrip else "") for t in tokens))
            self._patterns[tokens] = pattern
        return pattern

    def _tokens(self, allowed: frozenset[str], normalized: bool) -> tuple[AddedToken, ...]:
        chosen = [t for t in self.data.added
                  if t.normalized == normalized and (not t.special or t.content in allowed)]
        return tuple(sorted(chosen, key=lambda t: (-len(t.content), t.content)))

    def split(self, text: str, allowed: frozenset[str]) -> list[str | AddedToken]:
        """`text` as normalized text pieces and the added tokens between them (specials only if allowed)."""
        out: list[str | AddedToken] = []
        for piece in self._cut(text, self._tokens(allowed, normalized=False)):
            if isinstance(piece, AddedToken):
                out.append(piece)
            else:
                out.extend(self._cut(self.data.normalize(piece), self._tokens(allowed, normalized=True)))
        return out

    def _cut(self, text: str, tokens: tuple[AddedToken, ...]) -> list[str | AddedToken]:
        if not tokens:
            return [text] if text else []
        pattern = self._pattern(tokens)
        out: list[str | AddedToken] = []
        end = 0
        for m in pattern.finditer(text):
            if m.start() > end:
                out.append(text[end : m.start()])
            out.append(tokens[m.lastindex - 1])
            end = m.end()
        if end < len(text):
            out.append(text[end:])
        return out


class PythonHFEncoder:
    """The readable path: added tokens, normalizer, pre-tokenizer, pair-rank BPE, in Python."""

    def __init__(self, data: HFTokenizerData):
        self.data = data
        self.splitter = AddedTokenSplitter(data)
        self._cache: dict[str, tuple[int, ...]] = {}

    def _piece_ids(self, piece: str) -> tuple[int, ...]:
        ids = self._cache.get(piece)
        if ids is None:
            word = piece.encode("utf-8")
            vocab = self.data.vocab
            if self.data.ignore_merges and word in vocab:
                ids = (vocab[word],)
            else:
                ids = tuple(vocab[part] for part in merge_by_pair_rank(word, self.data.pair_ranks))
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            self._cache[piece] = ids
        return ids

    def _text_ids(self, text: str) -> list[int]:
        pieces = [text]
        for step in self.data.pre_tokenizer:
            pieces = [p for piece in pieces for p in step(piece)]
        return [i for piece in pieces for i in self._piece_ids(piece)]

    def encode(self, text: str, allowed_special: Collection[str] = frozenset(), disallowed_special: Any = ()) -> list[int]:
        """Ids of `text`, matching the special tokens in `allowed_special` (never raises for others)."""
        ids: list[int] = []
        for piece in self.splitter.split(text, frozenset(allowed_special)):
            if isinstance(piece, AddedToken):
                ids.append(piece.id)
            else:
                ids.extend(self._text_ids(piece))
        return ids

    def encode_ordinary(self, text: str) -> list[int]:
        return self.encode(text)


class TokenizersHFEncoder:
    """The fast path: the `tokenizers` library reading the same tokenizer.json."""

    def __init__(self, data: HFTokenizerData):
        from tokenizers import Tokenizer as LibTokenizer

        text = data.files[TOKENIZER_JSON].decode("utf-8")
        try:
            self._with_special = LibTokenizer.from_str(text)
            self._plain = LibTokenizer.from_str(text)
        except Exception as exc:  # the library's own parse error type is not exported
            raise ScratchLLMError(f"{data.source}: the tokenizers library cannot read it: {exc}") from None
        for tok in (self._with_special, self._plain):
            tok.no_truncation()
            tok.no_padding()
        self._plain.encode_special_tokens = True  # special-token text is plain text
        self._all_special = frozenset(data.special_tokens)
        self._splitter = AddedTokenSplitter(data)

    def encode_ordinary(self, text: str) -> list[int]:
        return self._plain.encode(text, add_special_tokens=False).ids

    def encode(self, text: str, allowed_special: Collection[str] = frozenset(), disallowed_special: Any = ()) -> list[int]:
        allowed = frozenset(allowed_special)
        if allowed >= self._all_special:
            return self._with_special.encode(text, add_special_tokens=False).ids
        if not allowed:
            return self.encode_ordinary(text)
        # Some special tokens only: cut the text here, and let the library encode the pieces.
        ids: list[int] = []
        for piece in self._splitter.split(text, allowed):
            if isinstance(piece, AddedToken):
                ids.append(piece.id)
            else:
                ids.extend(self._plain.encode(piece, add_special_tokens=False).ids)
        return ids


def make_hf_encoder(data: HFTokenizerData, backend: str) -> tuple[str, Any]:
    """("tokenizers" | "python", encoder): "auto" takes the `tokenizers` library when it is installed."""
    if backend not in ("auto", "tokenizers", "python"):
        raise ScratchLLMError(f"backend {backend!r}: expected 'auto', 'tokenizers' or 'python' for a Hugging Face tokenizer")
    if backend != "python":
        try:
            return "tokenizers", TokenizersHFEncoder(data)
        except ImportError:
            if backend == "tokenizers":
                raise ScratchLLMError("backend 'tokenizers': the tokenizers package is not installed "
                                      "(pip install 'scratchllm[hf]')") from None
    return "python", PythonHFEncoder(data)
