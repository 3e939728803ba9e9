"""`BPETokenizer`: the byte-level BPE built here, for OpenAI's GPT-2 files and vocabularies trained here.

It turns text into ids and back the way GPT-2 does (Radford et al. 2019, "Language Models are
Unsupervised Multitask Learners", section 2.2 "Input Representation"):

1. Pre-tokenization (pretokenize.py): the GPT-2 regex splits text into words, numbers,
   punctuation runs and whitespace runs, so merges never cross word boundaries (no "dog." /
   "dog!" variants).
2. Byte-pair encoding (bpe.py): each pre-token's UTF-8 bytes start as single-byte tokens and
   adjacent pairs are merged, lowest rank first, until no adjacent pair forms a token.
3. Special tokens such as ``<|endoftext|>`` are never produced from user text unless the caller
   allows them, following tiktoken's rule (base.py, `Tokenizer.encode`).

Two kinds of vocabulary: OpenAI's GPT-2 files (gpt2.py, `Tokenizer.gpt2()`) and vocabularies
trained here (`Tokenizer.train`), saved as one JSON file ({"type": "scratchllm-bpe", "version": 1,
"pattern", "byte_order" (GPT-2's only), "merges" as hex byte pairs, "special_tokens"}). Two backends
encode with identical ids: "python", the from-scratch implementation, and "tiktoken", a
`tiktoken.Encoding` built from the same ranks. OpenAI's encoder.py looks up the rank of the
(left, right) pair in vocab.bpe instead of the rank of the merged token; on GPT-2's files the two
gave the same ids for all 76,739 pieces we compared (every pre-token in ../shared/data and every
token's own bytes), and the tests check our ids against tiktoken's own GPT-2 construction.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from itertools import chain
from pathlib import Path
from typing import Any

import regex

from scratchllm.core.console import warn
from scratchllm.core.files import check_overwrite, read_text, write_atomic
from scratchllm.errors import ScratchLLMError
from scratchllm.tokenizer.base import Backend, Tokenizer, check_text, read_tokenizer_file, special_regex
from scratchllm.tokenizer.bpe import BYTE_PIECES, GPT2_PATTERN, GPT2_PATTERN_FAST, WordCache, learn_merges
from scratchllm.tokenizer.description import GPT2, INLINE, TOKENIZER_FILE, Description
from scratchllm.tokenizer.gpt2 import ENDOFTEXT, GPT2_ENDOFTEXT_ID, gpt2_files, read_gpt2
from scratchllm.tokenizer.pretokenize import pretokenizer

FILE_TYPE = INLINE  # the "type" field of the file `save` writes


FILE_VERSION = 1



_FALLBACKS_SEEN: set[str] = set()  # why backend "auto" fell back to python, each said once per process


def _python_fallback(why: str) -> tuple[str, None]:
    """Backend "auto" without tiktoken: the from-scratch encoder, said once per reason on stderr, since it
    gives the same ids more slowly (README: about half of tiktoken's speed on text of mostly new words)."""
    if why not in _FALLBACKS_SEEN:
        _FALLBACKS_SEEN.add(why)
        warn(f"tokenizer backend 'auto': {why}; encoding with the pure-Python backend instead (the same ids, "
             "about half of tiktoken's speed on new words; backend 'python' chooses it without this warning)")
    return "python", None

class BPETokenizer(Tokenizer, reads=(GPT2, "bpe", INLINE)):
    """A byte-level BPE vocabulary plus special tokens, with an encoder and a decoder.

    Ids 0..255 are single bytes (in `byte_order`), id 256 + i is merge i, and the special tokens
    take the ids after the last merge. `described_as`, `file` and `file_bytes` say what its
    description records: "gpt2" (found by name) or "bpe", the file it was read from and that file's
    bytes (None: not saved; its file is then compact JSON of `to_dict`).
    """

    def __init__(
        self,
        merges: Sequence[tuple[bytes, bytes]],
        special_tokens: Mapping[str, int] | None = None,
        *,
        pattern: str = GPT2_PATTERN,
        byte_order: Sequence[int] | None = None,
        backend: Backend = "auto",
        described_as: str = "bpe",
        file: str | None = None,
        file_bytes: bytes | None = None,
    ) -> None:
        byte_order = tuple(range(256)) if byte_order is None else tuple(byte_order)
        if sorted(byte_order) != list(range(256)):
            raise ScratchLLMError("byte_order: expected a permutation of the 256 byte values")
        vocab = [BYTE_PIECES[b] for b in byte_order]
        ranks = {token: i for i, token in enumerate(vocab)}
        merge_list: list[tuple[bytes, bytes]] = []
        for i, (left, right) in enumerate(merges):
            if left not in ranks or right not in ranks:
                raise ScratchLLMError(f"merge {i} ({left!r}, {right!r}): both sides must be earlier tokens")
            token = left + right
            if token in ranks:
                raise ScratchLLMError(f"merge {i} ({left!r}, {right!r}): makes {token!r}, already token {ranks[token]}")
            ranks[token] = len(vocab)
            vocab.append(token)
            merge_list.append((left, right))
        specials = dict(special_tokens or {})
        n = len(vocab)
        if sorted(specials.values()) != list(range(n, n + len(specials))):
            raise ScratchLLMError(f"special_tokens {specials}: expected ids {n}..{n + len(specials) - 1} "
                                  "(right after the last merge), each used once")
        for name in specials:
            if not isinstance(name, str) or not name:
                raise ScratchLLMError(f"special_tokens: expected non-empty strings, got {name!r}")
        try:
            self._split = pretokenizer(pattern)  # text -> pre-tokens
        except (regex.error, TypeError) as exc:
            raise ScratchLLMError(f"pattern {pattern!r}: not a valid regex: {exc}") from exc
        self._pattern = pattern
        self._byte_order = byte_order
        self._merges = merge_list
        self._ranks = ranks  # ordinary token bytes -> id (= merge rank)
        self._cache = WordCache(ranks)
        self._file_bytes = file_bytes
        id_to_bytes = dict(enumerate(vocab))
        id_to_bytes.update((i, name.encode("utf-8")) for name, i in specials.items())
        chosen, self._encoding = self._make_backend(backend, specials, len(id_to_bytes), described_as)
        super().__init__(specials, id_to_bytes, chosen, described_as=described_as, file=file)

    def _make_backend(self, backend: str, specials: dict[str, int], n_vocab: int, name: str) -> tuple[str, Any]:
        """("python", None) or ("tiktoken", a tiktoken.Encoding of the same ranks)."""
        if backend not in ("auto", "tiktoken", "python"):
            raise ScratchLLMError(f"backend {backend!r}: expected 'auto', 'tiktoken' or 'python'")
        if backend == "python":
            return "python", None
        try:
            import tiktoken
        except ImportError:
            if backend == "tiktoken":
                raise ScratchLLMError("backend 'tiktoken': the tiktoken package is not installed") from None
            return _python_fallback("the tiktoken package is not installed")
        # Built from our own ranks (tiktoken.get_encoding would download OpenAI's files). Same
        # ranks, same pattern, same lowest-rank merge rule: same ids as the python backend. GPT-2's
        # pattern is given in its letters-first form (bpe.GPT2_PATTERN_FAST, the same language),
        # which tiktoken's regex engine also runs faster: ~1.3x on benchmarks/tokenizer.py's text.
        try:
            encoding = tiktoken.Encoding(
                name=f"scratchllm-{name}-{n_vocab}",
                pat_str=GPT2_PATTERN_FAST if self._pattern == GPT2_PATTERN else self._pattern,
                mergeable_ranks=self._ranks,
                special_tokens=specials,
                explicit_n_vocab=n_vocab,
            )
        except ValueError as exc:  # e.g. a custom pattern tiktoken's Rust regex engine rejects
            if backend == "tiktoken":
                raise ScratchLLMError(f"backend 'tiktoken': tiktoken rejects this tokenizer: {exc}") from None
            return _python_fallback(f"tiktoken rejects the pre-tokenizer pattern {self._pattern!r} ({exc})")
        return "tiktoken", encoding

    # ---- building -----------------------------------------------------------------------------

    @classmethod
    def gpt2(cls, backend: Backend = "auto", directory: str | os.PathLike[str] | None = None) -> BPETokenizer:
        """OpenAI's GPT-2 tokenizer (50,257 ids, <|endoftext|> = 50256) from local files.

        See `gpt2_files` for where the files are looked for; the network is only used when they
        are in none of those places.
        """
        encoder_path, vocab_path = gpt2_files(directory)
        byte_order, merges = read_gpt2(str(encoder_path), str(vocab_path))
        return cls(merges, {ENDOFTEXT: GPT2_ENDOFTEXT_ID}, byte_order=byte_order, backend=backend, described_as=GPT2)

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, special_tokens: Sequence[str] = (ENDOFTEXT,),
              progress: bool = False, *, pattern: str = GPT2_PATTERN, backend: Backend = "auto") -> BPETokenizer:
        """Learn a byte-level BPE vocabulary of exactly `vocab_size` ids from `texts`.

        Ids: 256 bytes (id = byte value), then vocab_size - 256 - len(special_tokens) merges, then
        the special tokens. Each step merges the most frequent adjacent pair within pre-tokens;
        ties go to the lexicographically smallest (left bytes, right bytes). A pair whose
        concatenation is already a token (reachable by another split) is never merged, so every
        token has one id. Special-token text in `texts` separates documents and is not learned.
        """
        specials = list(special_tokens)
        if len(set(specials)) != len(specials) or not all(isinstance(s, str) and s for s in specials):
            raise ScratchLLMError(f"special_tokens {specials!r}: expected distinct non-empty strings")
        if not isinstance(vocab_size, int) or isinstance(vocab_size, bool) or vocab_size < 256 + len(specials):
            raise ScratchLLMError(f"vocab_size {vocab_size!r}: expected an int >= {256 + len(specials)} "
                                  f"(256 byte tokens + {len(specials)} special tokens)")
        try:
            split = pretokenizer(pattern)
        except (regex.error, TypeError) as exc:
            raise ScratchLLMError(f"pattern {pattern!r}: not a valid regex: {exc}") from exc
        words_count: Counter[str] = Counter()
        cut = special_regex(frozenset(specials)).split if specials else None
        if isinstance(texts, str):
            raise ScratchLLMError("texts: expected an iterable of str, got a single str")
        for i, text in enumerate(texts):
            check_text(text, f"texts[{i}]")
            for j, piece in enumerate(cut(text) if cut else [text]):
                if j % 2 == 0:  # odd pieces are the special tokens themselves
                    words_count.update(split(piece))
        merges = learn_merges(words_count, vocab_size - 256 - len(specials), progress)
        n = 256 + len(merges)
        return cls(merges, {s: n + k for k, s in enumerate(specials)}, pattern=pattern, backend=backend)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], backend: Backend = "auto", *, source: str = "tokenizer",
                  file: str | None = None, file_bytes: bytes | None = None) -> BPETokenizer:
        """Build from the JSON object `to_dict` returns (`source` names it in error messages; `file` and
        `file_bytes`: the file it was read from, and its bytes)."""
        if not isinstance(data, Mapping):
            raise ScratchLLMError(f"{source}: expected a JSON object, got {type(data).__name__}")
        if data.get("type") != FILE_TYPE:
            raise ScratchLLMError(f"{source}: field 'type' is {data.get('type')!r}, expected {FILE_TYPE!r}")
        if data.get("version") != FILE_VERSION:
            raise ScratchLLMError(f"{source}: field 'version' is {data.get('version')!r}, expected {FILE_VERSION}")
        pattern = data.get("pattern")
        if not isinstance(pattern, str):
            raise ScratchLLMError(f"{source}: field 'pattern' must be a string")
        byte_order = data.get("byte_order", list(range(256)))
        if not (isinstance(byte_order, list) and all(isinstance(b, int) for b in byte_order)):
            raise ScratchLLMError(f"{source}: field 'byte_order' must be a list of 256 ints")
        raw_merges = data.get("merges")
        if not isinstance(raw_merges, list):
            raise ScratchLLMError(f"{source}: field 'merges' must be a list of [hex, hex] pairs")
        merges = []
        for i, pair in enumerate(raw_merges):
            try:
                left, right = pair
                merges.append((bytes.fromhex(left), bytes.fromhex(right)))
            except (TypeError, ValueError):
                raise ScratchLLMError(f"{source}: merges[{i}] is {pair!r}, expected two hex strings") from None
        specials = data.get("special_tokens", {})
        if not (isinstance(specials, dict) and all(isinstance(v, int) for v in specials.values())):
            raise ScratchLLMError(f"{source}: field 'special_tokens' must map strings to ids")
        try:
            return cls(merges, specials, pattern=pattern, byte_order=byte_order, backend=backend,
                       file=file, file_bytes=file_bytes)
        except ScratchLLMError as exc:
            raise ScratchLLMError(f"{source}: {exc}") from None

    @classmethod
    def from_file(cls, path: Path, blob: bytes, data: Any, backend: Backend = "auto") -> BPETokenizer:
        """The vocabulary `save` wrote to `path` (`blob` its bytes, `data` their JSON)."""
        return cls.from_dict(data, backend, source=f"tokenizer file {path}", file=str(path), file_bytes=blob)

    @classmethod
    def _from_recorded(cls, recorded: Description, backend: Backend) -> BPETokenizer:
        if recorded.type == GPT2:
            return cls.gpt2(backend)
        if recorded.inline is not None:  # the whole vocabulary in the description
            return cls.from_dict(recorded.inline, backend)
        assert recorded.file is not None
        blob, data = read_tokenizer_file(recorded.file)
        return cls.from_file(recorded.file, blob, data, backend)

    def with_backend(self, backend: Backend) -> BPETokenizer:
        return BPETokenizer(self._merges, self._special, pattern=self._pattern, byte_order=self._byte_order,
                            backend=backend, described_as=self._described_as, file=self._file,
                            file_bytes=self._file_bytes)

    def with_special_tokens(self, *tokens: str) -> BPETokenizer:
        """See `Tokenizer.with_special_tokens`. The copy is a trained-style vocabulary (described as
        "bpe"): `save` or `checkpoint.save_model` writes it whole, GPT-2's merges included."""
        new = [t for t in dict.fromkeys(tokens) if t not in self._special]
        if not new:
            return self
        specials = {**self._special, **{t: self.vocab_size + k for k, t in enumerate(new)}}
        return BPETokenizer(self._merges, specials, pattern=self._pattern, byte_order=self._byte_order,
                            backend=self._backend)

    # ---- its file -----------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The vocabulary as a JSON-able object: pattern, merges as hex byte pairs, special tokens."""
        data: dict[str, Any] = {"type": FILE_TYPE, "version": FILE_VERSION, "pattern": self._pattern}
        if self._byte_order != tuple(range(256)):
            data["byte_order"] = list(self._byte_order)
        data["merges"] = [[left.hex(), right.hex()] for left, right in self._merges]
        data["special_tokens"] = dict(self._special)
        return data

    def to_json_bytes(self) -> bytes:
        """The file's bytes as read when it was read from one (so its SHA-256 is that file's), else
        compact UTF-8 JSON of `to_dict`."""
        if self._file_bytes is None:
            self._file_bytes = json.dumps(self.to_dict(), ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        return self._file_bytes

    @property
    def files(self) -> dict[str, bytes]:
        return {} if self._described_as == GPT2 else {TOKENIZER_FILE: self.to_json_bytes()}

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the tokenizer as one JSON file (atomically) and point its description at it (GPT-2's
        too: it is then described by its file)."""
        path = Path(path)
        write_atomic(path, self.to_json_bytes(), "tokenizer file")
        self._described_as, self._file = "bpe", str(path)
        return path

    def __getstate__(self) -> dict[str, Any]:
        # Pickle only the vocabulary (for spawn-started workers); caches and tiktoken are rebuilt.
        return {"merges": self._merges, "special": self._special, "pattern": self._pattern,
                "byte_order": self._byte_order, "backend": self._backend, "described_as": self._described_as,
                "file": self._file, "file_bytes": self._file_bytes}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["merges"], state["special"], pattern=state["pattern"],  # type: ignore[misc]
                      byte_order=state["byte_order"], backend=state["backend"], described_as=state["described_as"],
                      file=state["file"], file_bytes=state["file_bytes"])

    # ---- the vocabulary and the encoder -------------------------------------------------------

    @property
    def merges(self) -> list[tuple[bytes, bytes]]:
        """Merges in rank order; merge i made token 256 + i."""
        return list(self._merges)

    @property
    def pattern(self) -> str:
        return self._pattern

    def _encode_checked(self, text: str, allowed: frozenset[str]) -> list[int]:
        if not allowed or not any(token in text for token in allowed):
            if self._encoding is not None:
                return self._encoding.encode_ordinary(text)
            return self._encode_ordinary(text)
        if self._encoding is not None:
            return self._encoding.encode(text, allowed_special=allowed, disallowed_special=())
        # Split on allowed special tokens; text on either side is pre-tokenized separately,
        # exactly as tiktoken does, so a special token also ends any word before it.
        ids: list[int] = []
        pieces = special_regex(allowed).split(text)
        for i, piece in enumerate(pieces):
            if i % 2:
                ids.append(self._special[piece])
            elif piece:
                ids.extend(self._encode_ordinary(piece))
        return ids

    def _encode_ordinary(self, text: str) -> list[int]:
        # The hot loop, all at C level on cache hits: regex findall, dict lookups, list flattening.
        return list(chain.from_iterable(map(self._cache.__getitem__, self._split(text))))


def train_tokenizer(inputs: Sequence[str | os.PathLike[str]], vocab_size: int, out: str | os.PathLike[str],
                    special_tokens: Sequence[str] = (ENDOFTEXT,), progress: bool = False,
                    overwrite: bool = False) -> BPETokenizer:
    """Train on UTF-8 text files (one document each) and save the tokenizer to `out` (.json); an
    existing `out` is an error unless `overwrite`."""
    check_overwrite(out, overwrite, "tokenizer file")
    if not inputs:
        raise ScratchLLMError("inputs: expected at least one text file")
    texts = [read_text(name, "input file") for name in inputs]
    tokenizer = BPETokenizer.train(texts, vocab_size, special_tokens, progress)
    tokenizer.save(out)
    return tokenizer
