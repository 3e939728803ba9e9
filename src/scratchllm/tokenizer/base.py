"""The tokenizer interface: `Tokenizer`, what every tokenizer offers the rest of the pipeline.

Text -> ids -> text (`encode`, `encode_batch`, `decode`); special tokens, with tiktoken's rule for them
(special-token text inside user text is an error unless allowed, or plain text when asked); the ids
that start a document and end generation; a chat template; the files that hold a tokenizer and its
description (description.py). Two classes implement it:

- `BPETokenizer` (bpe_tokenizer.py): the byte-level BPE built here, from OpenAI's GPT-2 files
  (`Tokenizer.gpt2()`) or trained here (`Tokenizer.train(...)`); backends "python" and "tiktoken".
- `HFTokenizer` (hf_tokenizer.py): a Hugging Face tokenizer.json of the byte-level BPE kind (Llama 3,
  Qwen2.5/3, SmolLM2; `Tokenizer.from_hf(directory)`); backends "python" and "tokenizers".

The constructors that choose the class (`gpt2`, `train`, `from_hf`, `load`, `from_spec`,
`from_description`) are class methods of `Tokenizer`, so callers need not name one: each concrete
class says which description types it reads when it is defined (`class HFTokenizer(Tokenizer,
reads=("hf",))`), and `Tokenizer` builds through that table.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from abc import ABC, abstractmethod
from collections.abc import Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import regex

from scratchllm.core.files import parse_json, write_atomic
from scratchllm.errors import ScratchLLMError
from scratchllm.tokenizer.batch import cpu_count, encode_in_parallel
from scratchllm.tokenizer.bpe import GPT2_PATTERN
from scratchllm.tokenizer.chat_template import ChatTemplate, ChatText
from scratchllm.tokenizer.description import (GPT2, INLINE, TOKENIZER_FILE, Description, check_description,
                                              check_sha256, description)
from scratchllm.tokenizer.gpt2 import ENDOFTEXT

Backend = Literal["auto", "tiktoken", "tokenizers", "python"]


SpecialSet = Literal["all"] | Collection[str]


# The concrete classes, by the description "type" each reads; each adds itself when it is defined.
_CLASSES: dict[str, type[Tokenizer]] = {}


@functools.lru_cache(maxsize=64)
def special_regex(tokens: frozenset[str]) -> regex.Pattern[str]:
    """A regex that finds any of `tokens` in text, as one capturing group."""
    # Longest first, so a special token that is a prefix of another never shadows it.
    alternatives = sorted(tokens, key=lambda t: (-len(t), t))
    return regex.compile("(" + "|".join(regex.escape(t) for t in alternatives) + ")")


def check_text(text: object, what: str = "text") -> str:
    """`text` if it is a str that has UTF-8 bytes, else a one-line error naming `what`."""
    if not isinstance(text, str):
        raise ScratchLLMError(f"{what}: expected a str, got {type(text).__name__}")
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            # A lone surrogate (e.g. from decoding with errors="surrogateescape") has no UTF-8
            # bytes, so it cannot be tokenized or round-tripped; tiktoken silently replaces it.
            raise ScratchLLMError(f"{what}: lone surrogate U+{ord(text[exc.start]):04X} at index {exc.start}; "
                                  "expected valid Unicode text") from None
    return text


def read_tokenizer_file(path: str | os.PathLike[str]) -> tuple[bytes, Any]:
    """A tokenizer file's bytes and its JSON."""
    path = Path(path)
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        raise ScratchLLMError(f"tokenizer file {path}: not found") from None
    except OSError as exc:
        raise ScratchLLMError(f"tokenizer file {path}: cannot read: {exc}") from exc
    try:
        return blob, parse_json(blob.decode("utf-8"), f"tokenizer file {path}")
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ScratchLLMError(f"tokenizer file {path}: not valid JSON: {exc}") from None


class Tokenizer(ABC):
    """Text to token ids and back. Build one with `Tokenizer.gpt2()`, `Tokenizer.train(...)`,
    `Tokenizer.load(path)`, `Tokenizer.from_hf(directory)` or `Tokenizer.from_spec(...)`.

    A subclass builds its vocabulary and encoder, then passes this class what every tokenizer shares:
    its special tokens, every id's bytes, the backend in use, and what its description records (its
    type, and the file it was read from).
    """

    def __init_subclass__(cls, reads: Sequence[str] = (), **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for kind in reads:
            _CLASSES[kind] = cls

    def __init__(self, special_tokens: Mapping[str, int], id_to_bytes: dict[int, bytes], backend: str, *,
                 described_as: str, file: str | None) -> None:
        self._special = dict(special_tokens)
        self._all_special = frozenset(self._special)
        self._id_to_bytes = id_to_bytes
        self._backend = backend
        self._described_as = described_as  # its description's "type": "gpt2", "bpe" or "hf"
        self._file = file  # the file it was read from or last saved to; None: not saved
        self._byte_lengths: np.ndarray | None = None

    # ---- what each class provides --------------------------------------------------------------

    @abstractmethod
    def _encode_checked(self, text: str, allowed: frozenset[str]) -> list[int]:
        """Ids of `text` with the special tokens in `allowed` matched, once the text and the
        special-token arguments have been checked."""

    @abstractmethod
    def with_backend(self, backend: Backend) -> Tokenizer:
        """The same vocabulary with another backend."""

    @abstractmethod
    def with_special_tokens(self, *tokens: str) -> Tokenizer:
        """A copy with `tokens` appended as special tokens after the existing ids (those it already has
        are skipped, so this is idempotent; e.g. BERT's mask token for masked-language modelling). Every
        existing id keeps its meaning; the copy is not saved yet (its description's "file" is null)."""

    @abstractmethod
    def to_json_bytes(self) -> bytes:
        """The bytes of its (main) file: what `save`, model and data directories write, and what the
        description's SHA-256 is taken of. A tokenizer read from a file gives that file's bytes."""

    @abstractmethod
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the tokenizer (atomically) and point its description at the copy."""

    @property
    @abstractmethod
    def files(self) -> dict[str, bytes]:
        """The files a directory keeps of this tokenizer, name -> bytes (tokenizer.json first); none for
        GPT-2's, which is found by name."""

    @property
    @abstractmethod
    def merges(self) -> list[tuple[bytes, bytes]]:
        """The BPE merges, in rank order."""

    @property
    @abstractmethod
    def pattern(self) -> str:
        """The regex that splits text into pre-tokens (for a Hugging Face tokenizer, its first split's)."""

    @classmethod
    @abstractmethod
    def from_file(cls, path: Path, blob: bytes, data: Any, backend: Backend = "auto") -> Tokenizer:
        """The tokenizer in file `path`, whose bytes are `blob` and JSON `data` (`load` read them)."""

    @classmethod
    @abstractmethod
    def _from_recorded(cls, recorded: Description, backend: Backend) -> Tokenizer:
        """The tokenizer a checked description names (`from_description` compares its SHA-256 after)."""

    # ---- hooks with defaults: a Hugging Face tokenizer overrides them -------------------------

    @property
    def eot_id(self) -> int:
        """Id of <|endoftext|>, the document separator."""
        try:
            return self._special[ENDOFTEXT]
        except KeyError:
            raise ScratchLLMError(f"tokenizer has no {ENDOFTEXT} token; special tokens are {sorted(self._special)}") from None

    @property
    def bos_ids(self) -> tuple[int, ...]:
        """The ids `encode(..., add_special_tokens=True)` puts before a text, as transformers'
        `tokenizer(text)` does: none for GPT-2's and trained tokenizers."""
        return ()

    def _add_special_tokens(self, ids: list[int]) -> list[int]:
        """`ids` with the tokens that go around a text (`encode(..., add_special_tokens=True)`)."""
        return ids

    @property
    def stop_ids(self) -> frozenset[int]:
        """Ids that end generation: `eot_id`."""
        return frozenset((self.eot_id,))

    @property
    def chat_template(self) -> ChatTemplate | None:
        """The model's chat template; None for GPT-2's and trained tokenizers."""
        return None

    @property
    def hf_files(self) -> dict[str, bytes]:
        """A Hugging Face tokenizer's files, name -> bytes as read (tokenizer.json first); {} otherwise."""
        return {}

    def _recorded_stop_ids(self) -> tuple[int, ...]:
        """The stop ids its description records (a Hugging Face model's generation_config.json ones)."""
        return ()

    # ---- description, files ---------------------------------------------------------------------

    @functools.cached_property
    def sha256(self) -> str:
        """SHA-256 of `to_json_bytes()`, as its description records it."""
        return hashlib.sha256(self.to_json_bytes()).hexdigest()

    def describe(self, file: str | os.PathLike[str] | None = None) -> dict[str, Any]:
        """Its description (description.py): {"type": "gpt2"} for GPT-2's, else its type, the file that
        holds it and that file's SHA-256. `file`: where a copy of its `files` was put (a file name in a
        model directory, or a path); by default the file it was read from or last saved to."""
        where = file if file is not None else self._file
        sha256 = self.sha256 if where is not None and self._described_as != GPT2 else None
        return description(self._described_as, where, sha256, self._recorded_stop_ids())

    @property
    def spec(self) -> dict[str, Any]:
        """Its description where it was read from or last saved (`describe()`): what `from_spec` takes."""
        return self.describe()

    def write_files(self, directory: str | os.PathLike[str]) -> None:
        """Write `files` into `directory`, each atomically, without repointing this tokenizer's description
        (as `save` does): `describe(TOKENIZER_FILE)` then describes the copy."""
        for name, blob in self.files.items():
            write_atomic(Path(directory) / name, blob, "tokenizer file")

    # ---- building: the class is chosen here --------------------------------------------------

    @classmethod
    def gpt2(cls, backend: Backend = "auto", directory: str | os.PathLike[str] | None = None) -> Tokenizer:
        """OpenAI's GPT-2 tokenizer (50,257 ids, <|endoftext|> = 50256) from local files: a BPETokenizer
        (see `gpt2.gpt2_files` for where the files are looked for)."""
        return _CLASSES[GPT2].gpt2(backend, directory)

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, special_tokens: Sequence[str] = (ENDOFTEXT,),
              progress: bool = False, *, pattern: str = GPT2_PATTERN, backend: Backend = "auto") -> Tokenizer:
        """A byte-level BPE vocabulary of exactly `vocab_size` ids learned from `texts`: a BPETokenizer
        (`BPETokenizer.train` says how)."""
        return _CLASSES["bpe"].train(texts, vocab_size, special_tokens, progress, pattern=pattern, backend=backend)

    @classmethod
    def from_hf(cls, path: str | os.PathLike[str], backend: Backend = "auto", stop_ids: Collection[int] = ()) -> Tokenizer:
        """A Hugging Face tokenizer of the byte-level BPE kind: an HFTokenizer (`HFTokenizer.from_hf`)."""
        return _CLASSES["hf"].from_hf(path, backend, stop_ids)

    @classmethod
    def load(cls, path: str | os.PathLike[str], backend: Backend = "auto") -> Tokenizer:
        """Read a tokenizer file: one `save` wrote (a trained vocabulary), or a Hugging Face tokenizer.json."""
        path = Path(path)
        blob, data = read_tokenizer_file(path)
        is_hf = isinstance(data, dict) and data.get("type") != INLINE and isinstance(data.get("model"), dict)
        return _CLASSES["hf" if is_hf else "bpe"].from_file(path, blob, data, backend)

    @classmethod
    def from_description(cls, recorded: Any, *, directory: str | os.PathLike[str] | None = None,
                         source: str | None = None, backend: Backend = "auto") -> Tokenizer:
        """The tokenizer a description names (description.py), its fields checked and its file's SHA-256
        compared with the recorded one; each fault is a one-line error. `directory`: the directory that
        holds the description (its "file" is a name inside it); `source`: where it was read, for messages."""
        checked = check_description(recorded, directory, source)
        tokenizer = _CLASSES[checked.type]._from_recorded(checked, backend)
        if checked.type not in (GPT2, INLINE):
            check_sha256(checked, tokenizer.sha256, source)
        return tokenizer

    @classmethod
    def from_spec(cls, spec: Tokenizer | str | os.PathLike[str] | Mapping[str, Any], backend: Backend = "auto") -> Tokenizer:
        """"gpt2", a path to a saved .json file (ours or a Hugging Face tokenizer.json) or to a directory
        holding a Hugging Face tokenizer.json, a description as a checkpoint records it, or a Tokenizer
        (returned as it is)."""
        if isinstance(spec, Tokenizer):
            return spec
        if isinstance(spec, Mapping):
            return cls.from_description(spec, backend=backend)
        if isinstance(spec, (str, os.PathLike)):
            if str(spec) == GPT2:
                return cls.gpt2(backend)
            path = Path(spec)
            if path.is_dir() and (path / TOKENIZER_FILE).is_file():
                return cls.from_hf(path, backend)
            if path.suffix == ".json" or path.exists():
                return cls.load(path, backend)
        raise ScratchLLMError(f"tokenizer {spec!r}: expected 'gpt2', the path to a tokenizer .json file or a "
                              "directory holding a Hugging Face tokenizer.json")

    # ---- the vocabulary -------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Number of ids, special tokens included (50,257 for GPT-2)."""
        return len(self._id_to_bytes)

    @property
    def special_tokens(self) -> dict[str, int]:
        return dict(self._special)

    @property
    def document_start(self) -> list[int]:
        """The ids a scored document starts from, so its first token is a target too: the BOS where
        the tokenizer has one (Llama 3), else end-of-text, which GPT-2 saw between documents."""
        return list(self.bos_ids) or [self.eot_id]

    @property
    def backend(self) -> str:
        """The backend actually in use: "python", "tiktoken" or "tokenizers"."""
        return self._backend

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes of one id (a special token gives its UTF-8 text); may be part of a character."""
        try:
            return self._id_to_bytes[token_id]
        except (KeyError, TypeError):
            raise ScratchLLMError(f"token id {token_id!r}: expected an int in 0..{self.vocab_size - 1}") from None

    def token_byte_lengths(self) -> np.ndarray:
        """UTF-8 bytes of text each id stands for, (vocab_size,) int64; special tokens count 0
        (they mark document boundaries and spell no text). The denominator of bits per byte."""
        if self._byte_lengths is None:
            specials = set(self._special.values())
            self._byte_lengths = np.array([0 if i in specials else len(self._id_to_bytes[i])
                                           for i in range(self.vocab_size)], dtype=np.int64)
        return self._byte_lengths

    # ---- encoding -------------------------------------------------------------------------------

    def _special_sets(self, allowed_special: SpecialSet, disallowed_special: SpecialSet) -> tuple[frozenset[str], frozenset[str]]:
        if disallowed_special == "all" and not allowed_special:  # the default, on every call
            return frozenset(), self._all_special

        def as_set(value: SpecialSet, name: str) -> frozenset[str]:
            if value == "all":
                return frozenset(self._special)
            if isinstance(value, str) or not isinstance(value, Collection):
                raise ScratchLLMError(f"{name}: expected 'all' or a collection of special-token strings, got {value!r}")
            unknown = set(value) - self._special.keys()
            if unknown:  # tiktoken ignores unknown names; a typo here would silently do nothing
                raise ScratchLLMError(f"{name}: {sorted(unknown)} are not special tokens of this tokenizer "
                                      f"(it has {sorted(self._special)})")
            return frozenset(value)

        allowed = as_set(allowed_special, "allowed_special")
        # tiktoken: disallowed_special="all" means every special token that is not allowed.
        disallowed = self._special.keys() - allowed if disallowed_special == "all" else as_set(disallowed_special, "disallowed_special")
        return allowed, frozenset(disallowed)

    @staticmethod
    def _raise_if_disallowed(text: str, disallowed: frozenset[str], what: str = "text") -> None:
        if disallowed and any(token in text for token in disallowed):
            match = special_regex(disallowed).search(text)
            assert match is not None
            token = match.group()
            raise ScratchLLMError(
                f"{what} contains special token {token!r} at index {match.start()}; pass allowed_special={{{token!r}}} "
                "to encode it as that token, or disallowed_special=() to encode it as plain text")

    def encode(self, text: str, *, allowed_special: SpecialSet = frozenset(),
               disallowed_special: SpecialSet = "all", add_special_tokens: bool = False) -> list[int]:
        """Token ids of `text`, following tiktoken's rules for special tokens:

        - special-token text becomes its special id only if it is in `allowed_special` ("all" or
          a set of names);
        - otherwise, if it is in `disallowed_special` (default "all": every special token not
          allowed) encoding raises, because user text spelling "<|endoftext|>" is more likely an
          injection or an accident than intent;
        - `disallowed_special=()` encodes such text as ordinary text.

        add_special_tokens: put the tokenizer's post-processor tokens around the ids (`bos_ids`
        first), as transformers' `tokenizer(text)` does; GPT-2's and trained tokenizers have none.
        A Hugging Face tokenizer's ids equal transformers' with allowed_special="all" and
        add_special_tokens=True (transformers always matches special-token text).
        """
        text = check_text(text)
        allowed, disallowed = self._special_sets(allowed_special, disallowed_special)
        self._raise_if_disallowed(text, disallowed)
        ids = self._encode_checked(text, allowed)
        return self._add_special_tokens(ids) if add_special_tokens else ids

    def encode_ordinary(self, text: str) -> list[int]:
        """Ids of `text` with special-token text treated as plain text (never raises for it)."""
        return self._encode_checked(check_text(text), frozenset())

    def encode_chat(self, prompt: str) -> list[int]:
        """Ids of a prompt a prompt style laid out from a conversation (a `ChatText`): special-token text
        that the layout wrote (a chat template's <|im_start|>, Llama 3's BOS) becomes control tokens, the
        same text spelled inside a message stays text, so a user cannot close its turn and write the
        assistant's. A style without control tokens (alpaca, plain), or any other str, is all text."""
        if not isinstance(prompt, ChatText):
            return self.encode_ordinary(prompt)
        ids: list[int] = []
        for text, layout in prompt.segments():
            ids.extend(self.encode(text, allowed_special="all") if layout else self.encode_ordinary(text))
        return ids

    def encode_batch(self, texts: Sequence[str], *, allowed_special: SpecialSet = frozenset(),
                     disallowed_special: SpecialSet = "all", num_workers: int | None = None) -> list[list[int]]:
        """`[encode(t) for t in texts]`, in parallel on `num_workers` cores (default: all): threads
        for the tiktoken and tokenizers backends, worker processes for the python backend (only when
        the batch is large enough to pay for starting them; batch.py)."""
        if isinstance(texts, str) or not isinstance(texts, Sequence):
            raise ScratchLLMError(f"texts: expected a list of str, got {type(texts).__name__}")
        for i, text in enumerate(texts):
            check_text(text, f"texts[{i}]")
        allowed, disallowed = self._special_sets(allowed_special, disallowed_special)
        workers = cpu_count() if num_workers is None else num_workers
        if workers < 1:
            raise ScratchLLMError(f"num_workers {num_workers}: expected at least 1")
        for i, text in enumerate(texts):  # raise here, in the caller's process, not in a worker
            self._raise_if_disallowed(text, disallowed, f"texts[{i}]")
        return encode_in_parallel(self._encode_checked, texts, allowed, workers, in_threads=self.backend != "python")

    # ---- decoding -------------------------------------------------------------------------------

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The bytes of `ids` joined; exact even when the ids split a character."""
        table = self._id_to_bytes
        if not isinstance(ids, (list, tuple)):
            ids = list(ids)  # iterated twice when reporting a bad id
        try:
            return b"".join(map(table.__getitem__, ids))
        except (KeyError, TypeError):
            bad = next(i for i in ids if not (isinstance(i, int) and i in table))
            raise ScratchLLMError(f"token id {bad!r}: expected an int in 0..{self.vocab_size - 1}") from None

    def decode(self, ids: Iterable[int], errors: str = "replace") -> str:
        """Text of `ids`. Ids cut mid-character give U+FFFD with the default errors="replace";
        errors="strict" raises instead (any codec error handler name is accepted)."""
        data = self.decode_bytes(list(ids))
        try:
            return data.decode("utf-8", errors)
        except UnicodeDecodeError as exc:
            raise ScratchLLMError(f"token ids: bytes {exc.start}..{exc.end} are not valid UTF-8 ({exc.reason})") from None
        except LookupError:
            raise ScratchLLMError(f"errors {errors!r}: not a codec error handler (try 'replace' or 'strict')") from None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(spec={self.spec}, vocab_size={self.vocab_size}, backend={self.backend!r})"


def token_pieces(tokenizer: Tokenizer, text: str, allowed_special: SpecialSet = "all") -> list[tuple[int, str]]:
    """(id, piece) for each token of `text`; a piece that is part of a character shows U+FFFD.

    Special tokens are allowed by default here: this is for looking at what the tokenizer does.
    """
    ids = tokenizer.encode(text, allowed_special=allowed_special)
    return [(i, tokenizer.token_bytes(i).decode("utf-8", "replace")) for i in ids]
