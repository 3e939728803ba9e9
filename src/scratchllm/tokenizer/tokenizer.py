"""The tokenizer: text -> token ids -> text, the first stage of the pipeline.

`Tokenizer` turns text into integer ids and back, the way GPT-2 does (Radford et al. 2019,
"Language Models are Unsupervised Multitask Learners", section 2.2 "Input Representation"):

1. Pre-tokenization (pretokenize.py): the GPT-2 regex splits text into words, numbers,
   punctuation runs and whitespace runs, so merges never cross word boundaries (no "dog." /
   "dog!" variants).
2. Byte-pair encoding (bpe.py): each pre-token's UTF-8 bytes start as single-byte tokens and
   adjacent pairs are merged, lowest rank first, until no adjacent pair forms a token.
3. Special tokens such as ``<|endoftext|>`` are never produced from user text unless the caller
   allows them, following tiktoken's rule (see `Tokenizer.encode`).

Three kinds of vocabulary are supported: OpenAI's GPT-2 files (gpt2.py), vocabularies trained here
with `Tokenizer.train`, saved as one JSON file, and Hugging Face tokenizer.json files of the
byte-level BPE kind (Llama 3, Qwen2.5/3, SmolLM2; hf.py, `Tokenizer.from_hf`). Two backends encode
with identical ids: "python", the from-scratch implementation, and "tiktoken", a `tiktoken.Encoding`
built from the same ranks (for a Hugging Face file: "python" and "tokenizers", the library).
OpenAI's encoder.py looks up the rank of the (left, right) pair in vocab.bpe instead of the rank
of the merged token; on GPT-2's files the two gave the same ids for all 76,739 pieces we compared
(every pre-token in ../shared/data and every token's own bytes), and the tests check our ids
against tiktoken's own GPT-2 construction.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from array import array
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from itertools import chain
from pathlib import Path
from typing import Any, Literal

import numpy as np
import regex

from scratchllm.core.files import check_overwrite, read_text, write_atomic
from scratchllm.errors import ScratchLLMError
from scratchllm.tokenizer.bpe import BYTE_PIECES, GPT2_PATTERN, GPT2_PATTERN_FAST, WordCache, learn_merges
from scratchllm.tokenizer.chat_template import ChatTemplate
from scratchllm.tokenizer.gpt2 import ENDOFTEXT, GPT2_ENDOFTEXT_ID, gpt2_files, read_gpt2
from scratchllm.tokenizer.hf import (HF_TOKENIZER_FILES, TOKENIZER_JSON, HFTokenizerData, make_hf_encoder,
                                     parse_hf_tokenizer, read_hf_tokenizer)
from scratchllm.tokenizer.pretokenize import pretokenizer

FILE_TYPE = "scratchllm-bpe"


FILE_VERSION = 1


Backend = Literal["auto", "tiktoken", "tokenizers", "python"]


SpecialSet = Literal["all"] | Collection[str]


# encode_batch on the python backend only pays for worker processes above this many characters.
_PARALLEL_MIN_CHARS = 500_000



# --------------------------------------------------------------------------------------------
# encode_batch worker processes (python backend). With the fork start method the tokenizer (and
# its warm word cache) is inherited by the workers instead of being pickled.

_worker_tokenizer: Tokenizer | None = None


def _worker_init(tokenizer: Tokenizer) -> None:
    global _worker_tokenizer
    _worker_tokenizer = tokenizer


def _worker_encode(texts: list[str], allowed: frozenset[str]) -> tuple[array, array]:
    """Ids of `texts` as (all ids, ids per text). Flat arrays pickle as raw bytes: sending back
    millions of ints as lists of ints cost more to unpickle than the encoding saved."""
    assert _worker_tokenizer is not None
    encode = _worker_tokenizer._encode_checked  # the parent already validated the texts
    flat, lengths = array("I"), array("I")
    for text in texts:
        ids = encode(text, allowed)
        flat.extend(ids)
        lengths.append(len(ids))
    return flat, lengths


def _split_by_size(texts: Sequence[str], parts: int) -> list[list[str]]:
    """`texts` cut into at most `parts` contiguous runs of roughly equal total length."""
    target = sum(map(len, texts)) / parts
    runs: list[list[str]] = [[]]
    size = 0
    for text in texts:
        if size >= target and len(runs) < parts:
            runs.append([])
            size = 0
        runs[-1].append(text)
        size += len(text)
    return runs


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@functools.lru_cache(maxsize=64)
def _special_regex(tokens: frozenset[str]) -> regex.Pattern[str]:
    # Longest first, so a special token that is a prefix of another never shadows it.
    alternatives = sorted(tokens, key=lambda t: (-len(t), t))
    return regex.compile("(" + "|".join(regex.escape(t) for t in alternatives) + ")")


def _check_text(text: object, what: str = "text") -> str:
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


# --------------------------------------------------------------------------------------------
# The tokenizer


class Tokenizer:
    """A byte-level BPE vocabulary plus special tokens, with an encoder and a decoder.

    Ids 0..255 are single bytes (in `byte_order`), id 256 + i is merge i, and the special tokens
    take the ids after the last merge. Build one with `Tokenizer.gpt2()`, `Tokenizer.train(...)`,
    `Tokenizer.load(path)` or `Tokenizer.from_spec(...)`. A Hugging Face tokenizer
    (`Tokenizer.from_hf(directory)`) keeps its file's ids instead, and its encoder is hf.py's.
    """

    # A Hugging Face tokenizer's files and settings (None for GPT-2's and trained vocabularies), and
    # the ids `encode(..., add_special_tokens=True)` puts around a text (its post-processor's).
    _hf: HFTokenizerData | None = None
    _prefix: tuple[int, ...] = ()
    _suffix: tuple[int, ...] = ()

    def __init__(
        self,
        merges: Sequence[tuple[bytes, bytes]],
        special_tokens: Mapping[str, int] | None = None,
        *,
        pattern: str = GPT2_PATTERN,
        byte_order: Sequence[int] | None = None,
        backend: Backend = "auto",
        spec: Mapping[str, Any] | None = None,
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
        self._pattern_str = pattern
        self._byte_order = byte_order
        self._merges = merge_list
        self._ranks = ranks  # ordinary token bytes -> id (= merge rank)
        self._special = specials
        self._id_to_bytes: dict[int, bytes] = dict(enumerate(vocab))
        self._id_to_bytes.update((i, name.encode("utf-8")) for name, i in specials.items())
        self._all_special = frozenset(specials)
        self._spec: dict[str, Any] = dict(spec) if spec is not None else {"type": "bpe", "file": None}
        self._cache = WordCache(ranks)
        self._byte_lengths: np.ndarray | None = None
        self._backend, self._encoding = self._make_backend(backend)

    # ---- construction ------------------------------------------------------------------------

    def _make_backend(self, backend: str) -> tuple[str, Any]:
        if backend not in ("auto", "tiktoken", "python"):
            raise ScratchLLMError(f"backend {backend!r}: expected 'auto', 'tiktoken' or 'python'")
        if backend == "python":
            return "python", None
        try:
            import tiktoken
        except ImportError:
            if backend == "tiktoken":
                raise ScratchLLMError("backend 'tiktoken': the tiktoken package is not installed") from None
            return "python", None
        # Built from our own ranks (tiktoken.get_encoding would download OpenAI's files). Same
        # ranks, same pattern, same lowest-rank merge rule: same ids as the python backend. GPT-2's
        # pattern is given in its letters-first form (bpe.GPT2_PATTERN_FAST, the same language),
        # which tiktoken's regex engine also runs faster: ~1.3x on benchmarks/tokenizer.py's text.
        try:
            encoding = tiktoken.Encoding(
                name=f"scratchllm-{self._spec.get('type', 'bpe')}-{len(self._id_to_bytes)}",
                pat_str=GPT2_PATTERN_FAST if self._pattern_str == GPT2_PATTERN else self._pattern_str,
                mergeable_ranks=self._ranks,
                special_tokens=self._special,
                explicit_n_vocab=len(self._id_to_bytes),
            )
        except ValueError as exc:  # e.g. a custom pattern tiktoken's Rust regex engine rejects
            if backend == "tiktoken":
                raise ScratchLLMError(f"backend 'tiktoken': tiktoken rejects this tokenizer: {exc}") from None
            return "python", None
        return "tiktoken", encoding

    def with_backend(self, backend: Backend) -> Tokenizer:
        """The same vocabulary with another backend."""
        if self._hf is not None:
            return Tokenizer._from_hf_data(self._hf, backend, self._spec)
        return Tokenizer(self._merges, self._special, pattern=self._pattern_str, byte_order=self._byte_order,
                         backend=backend, spec=self._spec)

    def with_special_tokens(self, *tokens: str) -> Tokenizer:
        """A copy with `tokens` appended as special tokens after the existing ids (those it already
        has are skipped, so this is idempotent; e.g. BERT's mask token for masked-language modelling).
        Every existing id keeps its meaning. The copy is a trained-style vocabulary (spec "bpe", not
        yet saved): `save` or `checkpoint.save_pretrained` writes it whole, GPT-2's merges included."""
        new = [t for t in dict.fromkeys(tokens) if t not in self._special]
        if not new:
            return self
        if self._hf is not None:  # added to the tokenizer.json, which a model directory then copies
            return Tokenizer._from_hf_data(self._hf.with_special_tokens(new), self._backend, {"type": "hf", "file": None})
        specials = {**self._special, **{t: self.vocab_size + k for k, t in enumerate(new)}}
        return Tokenizer(self._merges, specials, pattern=self._pattern_str, byte_order=self._byte_order,
                         backend=self._backend)

    @classmethod
    def gpt2(cls, backend: Backend = "auto", directory: str | os.PathLike[str] | None = None) -> Tokenizer:
        """OpenAI's GPT-2 tokenizer (50,257 ids, <|endoftext|> = 50256) from local files.

        See `gpt2_files` for where the files are looked for; the network is only used when they
        are in none of those places.
        """
        encoder_path, vocab_path = gpt2_files(directory)
        byte_order, merges = read_gpt2(str(encoder_path), str(vocab_path))
        return cls(merges, {ENDOFTEXT: GPT2_ENDOFTEXT_ID}, byte_order=byte_order, backend=backend,
                   spec={"type": "gpt2"})

    @classmethod
    def from_hf(cls, path: str | os.PathLike[str], backend: Backend = "auto", stop_ids: Collection[int] = ()) -> Tokenizer:
        """A Hugging Face tokenizer of the byte-level BPE kind (Llama 3, Qwen2.5/3, SmolLM2, GPT-2):
        `path` is a directory holding tokenizer.json, or that file; tokenizer_config.json (the named
        special tokens: eos_token is `eot_id`) and the chat template beside it are read too.

        backend "auto" encodes with the `tokenizers` library when it is installed, else "python",
        the from-scratch path (hf.py); both give transformers' ids. `stop_ids`: more ids that end
        generation (a model's generation_config.json eos_token_id).
        """
        data = read_hf_tokenizer(path, stop_ids)
        blob = data.files[TOKENIZER_JSON]
        spec: dict[str, Any] = {"type": "hf", "file": str(Path(data.source).absolute()),
                                "sha256": hashlib.sha256(blob).hexdigest()}
        if data.stop_ids:
            spec["stop_ids"] = list(data.stop_ids)
        return cls._from_hf_data(data, backend, spec)

    @classmethod
    def _from_hf_data(cls, data: HFTokenizerData, backend: Backend, spec: Mapping[str, Any]) -> Tokenizer:
        # The shared state of an empty vocabulary first (so every attribute exists), then the file's.
        self = cls([], {}, backend="python", spec=spec)
        self._hf = data
        self._pattern_str = data.pattern
        self._merges = list(data.merges)
        self._ranks = dict(data.vocab)
        self._special = data.special_tokens
        self._all_special = frozenset(self._special)
        self._id_to_bytes = dict(data.id_to_bytes)
        self._prefix, self._suffix = data.prefix, data.suffix
        self._cache = None  # the encoder keeps its own
        self._backend, self._encoding = make_hf_encoder(data, backend)
        return self

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], backend: Backend = "auto", *,
                  spec: Mapping[str, Any] | None = None, source: str = "tokenizer") -> Tokenizer:
        """Build from the JSON object `to_dict` returns (`source` names it in error messages)."""
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
            return cls(merges, specials, pattern=pattern, byte_order=byte_order, backend=backend, spec=spec)
        except ScratchLLMError as exc:
            raise ScratchLLMError(f"{source}: {exc}") from None

    def to_json_bytes(self) -> bytes:
        """The tokenizer file's bytes (compact UTF-8 JSON of `to_dict`): what `save`, model
        directories and prepared data directories write, and what their SHA-256 records. For a
        Hugging Face tokenizer: its tokenizer.json, byte for byte."""
        if self._hf is not None:
            return self._hf.files[TOKENIZER_JSON]
        return json.dumps(self.to_dict(), ensure_ascii=False, separators=(",", ":")).encode("utf-8")

    def to_dict(self) -> dict[str, Any]:
        """The vocabulary as a JSON-able object: pattern, merges as hex byte pairs, special tokens."""
        if self._hf is not None:
            raise ScratchLLMError("to_dict: a Hugging Face tokenizer is its files (`hf_files`), not scratchllm's format")
        data: dict[str, Any] = {"type": FILE_TYPE, "version": FILE_VERSION, "pattern": self._pattern_str}
        if self._byte_order != tuple(range(256)):
            data["byte_order"] = list(self._byte_order)
        data["merges"] = [[left.hex(), right.hex()] for left, right in self._merges]
        data["special_tokens"] = dict(self._special)
        return data

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the tokenizer as one JSON file (atomically) and point `spec` at it. A Hugging Face
        tokenizer is written as its files (tokenizer.json, tokenizer_config.json, the chat template)
        into the directory `path`."""
        path = Path(path)
        if self._hf is not None:
            for name, blob in self.hf_files.items():
                write_atomic(path / name, blob, "tokenizer file")
            self._spec = {**self._spec, "file": str((path / TOKENIZER_JSON).absolute()),
                          "sha256": hashlib.sha256(self.to_json_bytes()).hexdigest()}
            return path
        blob = self.to_json_bytes()
        write_atomic(path, blob, "tokenizer file")
        self._spec = {"type": "bpe", "file": str(path), "sha256": hashlib.sha256(blob).hexdigest()}
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str], backend: Backend = "auto") -> Tokenizer:
        """Read a tokenizer written by `save`."""
        path = Path(path)
        try:
            blob = path.read_bytes()
        except FileNotFoundError:
            raise ScratchLLMError(f"tokenizer file {path}: not found") from None
        except OSError as exc:
            raise ScratchLLMError(f"tokenizer file {path}: cannot read: {exc}") from exc
        try:
            data = json.loads(blob.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ScratchLLMError(f"tokenizer file {path}: not valid JSON: {exc}") from None
        if isinstance(data, dict) and data.get("type") != FILE_TYPE and isinstance(data.get("model"), dict):
            return cls.from_hf(path, backend)  # a Hugging Face tokenizer.json
        spec = {"type": "bpe", "file": str(path), "sha256": hashlib.sha256(blob).hexdigest()}
        return cls.from_dict(data, backend, spec=spec, source=f"tokenizer file {path}")

    @classmethod
    def from_spec(cls, spec: Tokenizer | str | os.PathLike[str] | Mapping[str, Any], backend: Backend = "auto") -> Tokenizer:
        """"gpt2", a path to a saved .json file (ours or a Hugging Face tokenizer.json) or to a
        directory holding a Hugging Face tokenizer.json, a `spec` dict as a checkpoint records it, or
        a Tokenizer (returned as it is)."""
        if isinstance(spec, Tokenizer):
            return spec
        if isinstance(spec, Mapping):
            kind = spec.get("type")
            if kind == "gpt2":
                return cls.gpt2(backend)
            if kind == FILE_TYPE:  # the whole vocabulary inline
                return cls.from_dict(spec, backend)
            if kind == "bpe":
                file = spec.get("file")
                if not file:
                    raise ScratchLLMError("tokenizer spec: field 'file' is empty; the trained tokenizer was never saved")
                tokenizer = cls.load(file, backend)
                want = spec.get("sha256")
                if want and tokenizer._spec["sha256"] != want:
                    raise ScratchLLMError(f"tokenizer file {file}: SHA-256 is {tokenizer._spec['sha256']}, "
                                          f"expected {want} as recorded in the spec")
                return tokenizer
            if kind == "hf":
                file = spec.get("file")
                if not file:
                    raise ScratchLLMError("tokenizer spec: field 'file' is empty; the Hugging Face tokenizer was never saved")
                tokenizer = cls.from_hf(file, backend, spec.get("stop_ids") or ())
                want = spec.get("sha256")
                if want and tokenizer._spec["sha256"] != want:
                    raise ScratchLLMError(f"tokenizer file {file}: SHA-256 is {tokenizer._spec['sha256']}, "
                                          f"expected {want} as recorded in the spec")
                return tokenizer
            raise ScratchLLMError(f"tokenizer spec: type {kind!r}, expected 'gpt2', 'bpe', 'hf' or {FILE_TYPE!r}")
        if isinstance(spec, (str, os.PathLike)):
            if str(spec) == "gpt2":
                return cls.gpt2(backend)
            path = Path(spec)
            if path.is_dir() and (path / TOKENIZER_JSON).is_file():
                return cls.from_hf(path, backend)
            if path.suffix == ".json" or path.exists():
                return cls.load(path, backend)
        raise ScratchLLMError(f"tokenizer {spec!r}: expected 'gpt2', the path to a tokenizer .json file or a "
                              "directory holding a Hugging Face tokenizer.json")

    def __getstate__(self) -> dict[str, Any]:
        # Pickle only the vocabulary (for spawn-started workers); caches and tiktoken are rebuilt.
        if self._hf is not None:
            return {"hf_files": self._hf.files, "hf_source": self._hf.source, "stop_ids": self._hf.stop_ids,
                    "backend": self._backend, "spec": self._spec}
        return {"merges": self._merges, "special": self._special, "pattern": self._pattern_str,
                "byte_order": self._byte_order, "backend": self._backend, "spec": self._spec}

    def __setstate__(self, state: dict[str, Any]) -> None:
        if "hf_files" in state:
            data = parse_hf_tokenizer(state["hf_files"], state["hf_source"], state["stop_ids"])
            self.__dict__.update(Tokenizer._from_hf_data(data, state["backend"], state["spec"]).__dict__)
            return
        self.__init__(state["merges"], state["special"], pattern=state["pattern"],  # type: ignore[misc]
                      byte_order=state["byte_order"], backend=state["backend"], spec=state["spec"])

    # ---- properties ----------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Number of ids, special tokens included (50,257 for GPT-2)."""
        return len(self._id_to_bytes)

    @property
    def eot_id(self) -> int:
        """Id of <|endoftext|>, the document separator. For a Hugging Face tokenizer: its eos_token
        (tokenizer_config.json), else its <|endoftext|> (Llama 3.1 base: <|end_of_text|>, Llama 3.1
        Instruct: <|eot_id|>, Qwen2.5 base: <|endoftext|>, Qwen2.5 Instruct: <|im_end|>)."""
        if self._hf is not None and "eos_token" in self._hf.named_tokens:
            eos = self._hf.token_id(self._hf.named_tokens["eos_token"])
            assert eos is not None  # checked when the files were read
            return eos
        try:
            return self._special[ENDOFTEXT]
        except KeyError:
            raise ScratchLLMError(f"tokenizer has no {ENDOFTEXT} token; special tokens are {sorted(self._special)}") from None

    @property
    def special_tokens(self) -> dict[str, int]:
        return dict(self._special)

    @property
    def bos_ids(self) -> tuple[int, ...]:
        """The ids `encode(..., add_special_tokens=True)` puts before a text, as transformers'
        `tokenizer(text)` does: Llama 3's (<|begin_of_text|>,); none for GPT-2, Qwen, SmolLM2 and
        trained tokenizers."""
        return self._prefix

    @property
    def document_start(self) -> list[int]:
        """The ids a scored document starts from, so its first token is a target too: the BOS where
        the tokenizer has one (Llama 3), else end-of-text, which GPT-2 saw between documents."""
        return list(self._prefix) or [self.eot_id]

    @functools.cached_property
    def stop_ids(self) -> frozenset[int]:
        """Ids that end generation: `eot_id`; for a Hugging Face tokenizer also the special token its
        chat template closes an assistant turn with (<|im_end|>, <|eot_id|>) and the model's
        generation_config.json eos ids (given to `from_hf`)."""
        if self._hf is None:
            return frozenset((self.eot_id,))
        ids = set(self._hf.stop_ids)
        if "eos_token" in self._hf.named_tokens or ENDOFTEXT in self._special:
            ids.add(self.eot_id)
        template = self.chat_template
        if template is not None and self._all_special:
            end = _special_regex(self._all_special).search(template.turn_end())
            if end is not None:
                ids.add(self._special[end.group()])
        return frozenset(ids)

    @functools.cached_property
    def chat_template(self) -> ChatTemplate | None:
        """The model's chat template (tokenizer_config.json "chat_template" or chat_template.jinja),
        with the named special tokens (bos_token, eos_token, ...) as its variables; None if it has none."""
        if self._hf is None or self._hf.chat_template is None:
            return None
        return ChatTemplate(self._hf.chat_template, self._hf.named_tokens, self._hf.chat_template_origin)

    @property
    def hf_files(self) -> dict[str, bytes]:
        """A Hugging Face tokenizer's files, name -> bytes as read (tokenizer.json first); {} otherwise."""
        if self._hf is None:
            return {}
        return {name: self._hf.files[name] for name in HF_TOKENIZER_FILES if name in self._hf.files}

    @property
    def merges(self) -> list[tuple[bytes, bytes]]:
        """Merges in rank order; merge i made token 256 + i (a Hugging Face tokenizer's ids are its file's)."""
        return list(self._merges)

    @property
    def pattern(self) -> str:
        return self._pattern_str

    @property
    def backend(self) -> str:
        """"python" or "tiktoken": the backend actually in use."""
        return self._backend

    @property
    def spec(self) -> dict[str, Any]:
        """What a checkpoint records to rebuild this tokenizer with `Tokenizer.from_spec`."""
        return dict(self._spec)

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

    # ---- encoding -----------------------------------------------------------------------------

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

    def _raise_if_disallowed(self, text: str, disallowed: frozenset[str], what: str = "text") -> None:
        if disallowed and any(token in text for token in disallowed):
            match = _special_regex(disallowed).search(text)
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
        text = _check_text(text)
        allowed, disallowed = self._special_sets(allowed_special, disallowed_special)
        self._raise_if_disallowed(text, disallowed)
        ids = self._encode_checked(text, allowed)
        if add_special_tokens and (self._prefix or self._suffix):
            return [*self._prefix, *ids, *self._suffix]
        return ids

    def _encode_checked(self, text: str, allowed: frozenset[str]) -> list[int]:
        """`encode` once the text and the special-token arguments have been checked."""
        if not allowed or not any(token in text for token in allowed):
            if self._encoding is not None:
                return self._encoding.encode_ordinary(text)
            return self._encode_ordinary(text)
        if self._encoding is not None:
            return self._encoding.encode(text, allowed_special=allowed, disallowed_special=())
        # Split on allowed special tokens; text on either side is pre-tokenized separately,
        # exactly as tiktoken does, so a special token also ends any word before it.
        ids: list[int] = []
        pieces = _special_regex(allowed).split(text)
        for i, piece in enumerate(pieces):
            if i % 2:
                ids.append(self._special[piece])
            elif piece:
                ids.extend(self._encode_ordinary(piece))
        return ids

    def encode_ordinary(self, text: str) -> list[int]:
        """Ids of `text` with special-token text treated as plain text (never raises for it)."""
        text = _check_text(text)
        if self._encoding is not None:
            return self._encoding.encode_ordinary(text)
        return self._encode_ordinary(text)

    def _encode_ordinary(self, text: str) -> list[int]:
        # The hot loop, all at C level on cache hits: regex findall, dict lookups, list flattening.
        return list(chain.from_iterable(map(self._cache.__getitem__, self._split(text))))

    def encode_batch(self, texts: Sequence[str], *, allowed_special: SpecialSet = frozenset(),
                     disallowed_special: SpecialSet = "all", num_workers: int | None = None) -> list[list[int]]:
        """`[encode(t) for t in texts]`, in parallel on `num_workers` cores (default: all): threads
        for the tiktoken backend, worker processes for the python backend (only when the batch is
        large enough to pay for starting them)."""
        if isinstance(texts, str) or not isinstance(texts, Sequence):
            raise ScratchLLMError(f"texts: expected a list of str, got {type(texts).__name__}")
        for i, text in enumerate(texts):
            _check_text(text, f"texts[{i}]")
        allowed, disallowed = self._special_sets(allowed_special, disallowed_special)
        workers = _cpu_count() if num_workers is None else num_workers
        if workers < 1:
            raise ScratchLLMError(f"num_workers {num_workers}: expected at least 1")
        for i, text in enumerate(texts):  # raise here, in the caller's process, not in a worker
            self._raise_if_disallowed(text, disallowed, f"texts[{i}]")
        encode = self._encode_checked
        total = sum(map(len, texts))
        if workers == 1 or len(texts) < 2 or (self._encoding is None and total < _PARALLEL_MIN_CHARS):
            return [encode(t, allowed) for t in texts]
        if self._encoding is not None:
            # tiktoken's Rust core releases the GIL while it encodes, so threads use every core.
            # Whole chunks per task: tiktoken's own encode_batch submits one task per text, and on
            # short texts (SMS-sized) that overhead made it slower than a plain loop.
            chunks = _split_by_size(texts, workers * 4)
            with ThreadPoolExecutor(min(workers, len(chunks))) as threads:
                done = threads.map(lambda chunk: [encode(t, allowed) for t in chunk], chunks)
                return [ids for chunk in done for ids in chunk]
        # Worker processes take the first (workers - 1) / workers of the text, a few chunks each to
        # even out the tail; this process encodes the rest meanwhile instead of waiting, which
        # also saves shipping that share's text out and its ids back.
        *head, own = _split_by_size(texts, workers)
        chunks = [chunk for part in head for chunk in _split_by_size(part, 2)]
        if not chunks:
            return [encode(t, allowed) for t in texts]
        import multiprocessing

        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
        with ProcessPoolExecutor(min(workers - 1, len(chunks)), mp_context=context,
                                 initializer=_worker_init, initargs=(self,)) as pool:
            pending = pool.map(_worker_encode, chunks, [allowed] * len(chunks))  # submits all now
            own_ids = [encode(t, allowed) for t in own]
            out: list[list[int]] = []
            for flat, lengths in pending:
                ids = flat.tolist()
                start = 0
                for n in lengths:
                    out.append(ids[start:start + n])
                    start += n
        out.extend(own_ids)
        return out

    # ---- decoding -----------------------------------------------------------------------------

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
        ids = list(ids)
        data = self.decode_bytes(ids)
        try:
            return data.decode("utf-8", errors)
        except UnicodeDecodeError as exc:
            raise ScratchLLMError(f"token ids: bytes {exc.start}..{exc.end} are not valid UTF-8 ({exc.reason})") from None
        except LookupError:
            raise ScratchLLMError(f"errors {errors!r}: not a codec error handler (try 'replace' or 'strict')") from None

    def __repr__(self) -> str:
        return f"Tokenizer(spec={self._spec}, vocab_size={self.vocab_size}, backend={self._backend!r})"

    # ---- training -----------------------------------------------------------------------------

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, special_tokens: Sequence[str] = (ENDOFTEXT,),
              progress: bool = False, *, pattern: str = GPT2_PATTERN, backend: Backend = "auto") -> Tokenizer:
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
        cut = _special_regex(frozenset(specials)).split if specials else None
        if isinstance(texts, str):
            raise ScratchLLMError("texts: expected an iterable of str, got a single str")
        for i, text in enumerate(texts):
            _check_text(text, f"texts[{i}]")
            for j, piece in enumerate(cut(text) if cut else [text]):
                if j % 2 == 0:  # odd pieces are the special tokens themselves
                    words_count.update(split(piece))
        merges = learn_merges(words_count, vocab_size - 256 - len(specials), progress)
        n = 256 + len(merges)
        return cls(merges, {s: n + k for k, s in enumerate(specials)}, pattern=pattern, backend=backend)


# --------------------------------------------------------------------------------------------
# Functions the CLI calls


def train_tokenizer(inputs: Sequence[str | os.PathLike[str]], vocab_size: int, out: str | os.PathLike[str],
                    special_tokens: Sequence[str] = (ENDOFTEXT,), progress: bool = False,
                    overwrite: bool = False) -> Tokenizer:
    """Train on UTF-8 text files (one document each) and save the tokenizer to `out` (.json); an
    existing `out` is an error unless `overwrite`."""
    check_overwrite(out, overwrite, "tokenizer file")
    if not inputs:
        raise ScratchLLMError("inputs: expected at least one text file")
    texts = []
    for name in inputs:
        texts.append(read_text(name, "input file"))
    tokenizer = Tokenizer.train(texts, vocab_size, special_tokens, progress)
    tokenizer.save(out)
    return tokenizer



def token_pieces(tokenizer: Tokenizer, text: str, allowed_special: SpecialSet = "all") -> list[tuple[int, str]]:
    """(id, piece) for each token of `text`; a piece that is part of a character shows U+FFFD.

    Special tokens are allowed by default here: this is for looking at what the tokenizer does.
    """
    ids = tokenizer.encode(text, allowed_special=allowed_special)
    return [(i, tokenizer.token_bytes(i).decode("utf-8", "replace")) for i in ids]
