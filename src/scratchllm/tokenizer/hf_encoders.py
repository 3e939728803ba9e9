"""The two encoders of a Hugging Face tokenizer (`HFTokenizer`'s backends), which give the same ids from
one `HFTokenizerData` (hf_files.py): `PythonHFEncoder`, the pipeline's steps (hf_pipeline.py) run in
Python, and `TokenizersHFEncoder`, the `tokenizers` library reading the same tokenizer.json (optional:
`pip install 'scratchllm[hf]'`). Both find added tokens the library's way (`AddedTokenSplitter`) and
offer tiktoken.Encoding's `encode_ordinary` / `encode`.

The file's regexes are untrusted (hf_pipeline.py): the python encoder gives its regexes
`split_time_limit(text)` seconds per text and turns a timeout into a one-line error; a pattern that can
backtrack exponentially is never given to the library (whose regex engine cannot be stopped): "auto"
then takes the python encoder, and "tokenizers" is refused. A panic inside the library (a Rust
PanicException, which derives from BaseException, not Exception) becomes a one-line error too.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from typing import Any

import regex

from scratchllm.errors import ScratchLLMError
from scratchllm.tokenizer.hf_files import TOKENIZER_JSON, HFTokenizerData
from scratchllm.tokenizer.hf_pipeline import AddedToken, Split, merge_by_pair_rank

_CACHE_LIMIT = 100_000  # pieces kept by the python encoder's word cache (cleared when full)
# The time the regexes of one text may take: real patterns split ~1 MB/s even in the slowest case here
# (the regex module, a loaded machine), so 1 s plus 10 us per character stops only a pattern that backtracks.
SPLIT_TIME_S = 1.0
SPLIT_TIME_PER_CHAR_S = 1e-5


def split_time_limit(text: str) -> float:
    """Seconds the regexes may take to split `text` (SPLIT_TIME_S + SPLIT_TIME_PER_CHAR_S per character)."""
    return SPLIT_TIME_S + SPLIT_TIME_PER_CHAR_S * len(text)


def _timed_out(data: HFTokenizerData, pattern: str, text: str) -> ScratchLLMError:
    short = pattern if len(pattern) <= 60 else pattern[:57] + "..."
    return ScratchLLMError(f"{data.source}: the regex {short!r} took more than {split_time_limit(text):.1f} s on a text "
                           f"of {len(text):,} characters (it backtracks); this tokenizer cannot encode that text")


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

    def split(self, text: str, allowed: frozenset[str], deadline: float | None = None) -> list[str | AddedToken]:
        """`text` as normalized text pieces and the added tokens between them (specials only if allowed).
        deadline: time.monotonic() by which the regexes must be done (an lstrip token's \\s* can take
        time quadratic in a run of spaces); TimeoutError after it."""
        out: list[str | AddedToken] = []
        for piece in self._cut(text, self._tokens(allowed, normalized=False), deadline):
            if isinstance(piece, AddedToken):
                out.append(piece)
            else:
                out.extend(self._cut(self.data.normalize(piece), self._tokens(allowed, normalized=True), deadline))
        return out

    def _cut(self, text: str, tokens: tuple[AddedToken, ...], deadline: float | None) -> list[str | AddedToken]:
        if not tokens:
            return [text] if text else []
        pattern = self._pattern(tokens)
        out: list[str | AddedToken] = []
        end = 0
        for m in pattern.finditer(text, timeout=_remaining(deadline)):
            if m.start() > end:
                out.append(text[end : m.start()])
            out.append(tokens[m.lastindex - 1])
            end = m.end()
        if end < len(text):
            out.append(text[end:])
        return out


def _remaining(deadline: float | None) -> float | None:
    """Seconds left until `deadline` (a regex timeout); TimeoutError when none are."""
    if deadline is None:
        return None
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("regex timed out")  # the regex module's own message
    return left


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

    def _text_ids(self, text: str, deadline: float) -> list[int]:
        pieces = [text]
        for step in self.data.pre_tokenizer:
            if isinstance(step, Split):
                try:
                    pieces = [p for piece in pieces for p in step(piece, timeout=_remaining(deadline))]
                except TimeoutError:
                    raise TimeoutError(step.pattern) from None
            else:
                pieces = [p for piece in pieces for p in step(piece)]
        return [i for piece in pieces for i in self._piece_ids(piece)]

    def encode(self, text: str, allowed_special: Collection[str] = frozenset(), disallowed_special: Any = ()) -> list[int]:
        """Ids of `text`, matching the special tokens in `allowed_special` (never raises for others)."""
        ids: list[int] = []
        deadline = time.monotonic() + split_time_limit(text)
        try:
            for piece in self.splitter.split(text, frozenset(allowed_special), deadline):
                if isinstance(piece, AddedToken):
                    ids.append(piece.id)
                else:
                    ids.extend(self._text_ids(piece, deadline))
        except TimeoutError as exc:  # its argument: the Split's pattern (none: the added tokens' regex)
            pattern = exc.args[0] if exc.args and exc.args[0] != "regex timed out" else "of the added tokens"
            raise _timed_out(self.data, pattern, text) from None
        return ids

    def encode_ordinary(self, text: str) -> list[int]:
        return self.encode(text)


class TokenizersHFEncoder:
    """The fast path: the `tokenizers` library reading the same tokenizer.json."""

    def __init__(self, data: HFTokenizerData):
        from tokenizers import Tokenizer as LibTokenizer

        text = data.files[TOKENIZER_JSON].decode("utf-8")
        self._source = data.source
        try:
            self._with_special = LibTokenizer.from_str(text)
            self._plain = LibTokenizer.from_str(text)
        except BaseException as exc:  # the library's own parse error type is not exported; a panic is not an Exception
            raise self._error(exc, "cannot read it") from None
        for tok in (self._with_special, self._plain):
            tok.no_truncation()
            tok.no_padding()
        self._plain.encode_special_tokens = True  # special-token text is plain text
        self._all_special = frozenset(data.special_tokens)
        self._splitter = AddedTokenSplitter(data)

    def _error(self, exc: BaseException, what: str) -> BaseException:
        """A one-line error for what the library raised (a Rust panic included); other BaseExceptions
        (KeyboardInterrupt, SystemExit) as they are."""
        if not isinstance(exc, Exception) and type(exc).__name__ != "PanicException":
            return exc
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return ScratchLLMError(f"{self._source}: the tokenizers library {what}: {first}")

    def _lib_ids(self, tokenizer: Any, text: str) -> list[int]:
        try:
            return tokenizer.encode(text, add_special_tokens=False).ids
        except BaseException as exc:
            raise self._error(exc, f"failed on a text of {len(text):,} characters") from None

    def encode_ordinary(self, text: str) -> list[int]:
        return self._lib_ids(self._plain, text)

    def encode(self, text: str, allowed_special: Collection[str] = frozenset(), disallowed_special: Any = ()) -> list[int]:
        allowed = frozenset(allowed_special)
        if allowed >= self._all_special:
            return self._lib_ids(self._with_special, text)
        if not allowed:
            return self.encode_ordinary(text)
        # Some special tokens only: cut the text here, and let the library encode the pieces.
        ids: list[int] = []
        try:
            pieces = self._splitter.split(text, allowed, time.monotonic() + split_time_limit(text))
        except TimeoutError:
            raise _timed_out(self._splitter.data, "of the added tokens", text) from None
        for piece in pieces:
            if isinstance(piece, AddedToken):
                ids.append(piece.id)
            else:
                ids.extend(self._lib_ids(self._plain, piece))
        return ids


def make_hf_encoder(data: HFTokenizerData, backend: str) -> tuple[str, Any]:
    """("tokenizers" | "python", encoder): "auto" takes the `tokenizers` library when it is installed."""
    if backend not in ("auto", "tokenizers", "python"):
        raise ScratchLLMError(f"backend {backend!r}: expected 'auto', 'tokenizers' or 'python' for a Hugging Face tokenizer")
    risky = next((step for step in data.pre_tokenizer if isinstance(step, Split) and step.backtracks), None)
    if risky is not None and backend == "tokenizers":
        raise ScratchLLMError(f"{data.source}: the pre_tokenizer regex {risky.pattern[:60]!r} repeats a group holding "
                              f"an alternation or a repetition ({risky.backtracks[:40]}), which can backtrack for ever; "
                              "the tokenizers library cannot be stopped, so use backend 'python' (a time limit per text)")
    if backend != "python" and risky is None:
        try:
            return "tokenizers", TokenizersHFEncoder(data)
        except ImportError:
            if backend == "tokenizers":
                raise ScratchLLMError("backend 'tokenizers': the tokenizers package is not installed "
                                      "(pip install 'scratchllm[hf]')") from None
    return "python", PythonHFEncoder(data)
