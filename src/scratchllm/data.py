"""Training data: text corpora -> token shards on disk -> batches of (input, target) windows.

This is the stage between the tokenizer and the training loop (Raschka, *LLMs from Scratch*,
ch. 2.6 "Data sampling with a sliding window"; Karpathy's nanoGPT `data/*/prepare.py` and
`get_batch`). It holds:

- `prepare`: stream text files / directories / JSONL through a tokenizer into a DATADIR of flat
  binary token shards (`train_000.bin`, ..., `val_000.bin`, readable with `numpy.memmap`) plus a
  `meta.json` that describes them. Memory stays bounded whatever the corpus size; `workers`
  encode chunks in parallel processes with byte-identical output.
- `TokenData` / `TokenStream`: a prepared DATADIR (or a small text file tokenized in memory by
  `load_corpus`) as train and validation token streams.
- Loaders, all deterministic given a seed and resumable through `state_dict()` /
  `load_state_dict()` (plain tensors and numbers, so `torch.load(weights_only=True)` reads them):
  `RandomWindowLoader` (nanoGPT-style random windows, for pretraining), `SlidingWindowDataset` +
  `SequentialLoader` (the book's strided windows, epochs of seeded shuffles) and `eval_batches`
  (fixed non-overlapping windows for validation loss).

A window of `context_length` inputs needs `context_length + 1` tokens: the targets are the inputs
shifted left by one (next-token prediction).
"""

from __future__ import annotations

import codecs
import contextlib
import glob
import hashlib
import json
import math
import os
import random
import shutil
import sys
import tempfile
import time
from bisect import bisect_right
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import regex
import torch

from scratchllm.errors import ScratchLLMError
from scratchllm.files import umask

FORMAT = "scratchllm-tokens"
VERSION = 1
META_FILE = "meta.json"
TOKENIZER_FILE = "tokenizer.json"  # copy of a trained tokenizer, so a DATADIR is self-describing
TEXT_SUFFIXES = (".txt", ".md")
JSONL_SUFFIX = ".jsonl"
# Split by documents when the validation split can expect at least this many of them; with fewer,
# a random document split is too lumpy (one long document can take most of the tokens), so the
# last val_fraction of the token stream is held out instead (as nanoGPT and the book do).
MIN_VAL_DOCUMENTS = 10
# In-flight work items per worker: enough to keep workers busy, few enough to bound memory.
_ITEMS_PER_WORKER = 2


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits in 16 bits (GPT-2's 50,257 do), else uint32: half the disk of int32."""
    if vocab_size < 1:
        raise ScratchLLMError(f"vocab_size {vocab_size}: expected a positive integer")
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


# --------------------------------------------------------------------------------------------------
# Finding inputs


def find_inputs(inputs: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Files named by `inputs`: files as given, directories searched recursively for *.txt, *.md and
    *.jsonl (hidden files and folders skipped), glob patterns (`**` recurses) expanded. Sorted within
    each input, first occurrence kept. Raises if any input matches nothing."""
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    found: list[Path] = []
    seen: set[str] = set()
    unmatched: list[str] = []
    for spec in inputs:
        spec = str(spec)
        if glob.has_magic(spec):
            candidates = [Path(p) for p in sorted(glob.glob(spec, recursive=True))]
        else:
            candidates = [Path(spec)] if os.path.exists(spec) else []
        files: list[Path] = []
        for path in candidates:
            if path.is_dir():
                files.extend(_walk(path))
            elif path.is_file():
                files.append(path)
        if not files:
            unmatched.append(spec)
        for path in files:
            key = os.path.realpath(path)
            if key not in seen:
                seen.add(key)
                found.append(path)
    if unmatched or not found:
        raise ScratchLLMError(
            f"no input files matched {', '.join(map(repr, unmatched or list(map(str, inputs))))} "
            f"(expected text files, directories holding {', '.join((*TEXT_SUFFIXES, JSONL_SUFFIX))} files, or glob patterns)")
    return found


def _walk(directory: Path) -> list[Path]:
    files = []
    for root, dirs, names in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        files.extend(Path(root) / n for n in sorted(names)
                     if not n.startswith(".") and n.endswith((*TEXT_SUFFIXES, JSONL_SUFFIX)))
    return files


def _is_jsonl(path: Path) -> bool:
    return path.suffix == JSONL_SUFFIX


# --------------------------------------------------------------------------------------------------
# Reading text in chunks that tokenize exactly like the whole text
#
# Why a cut at "letter or digit | whitespace" keeps the ids identical to encoding the whole file:
# BPE never merges across pre-tokens, so the ids of a text are the ids of its pre-tokens in order,
# and it suffices that pre-tokenizing the two halves gives the pre-tokens of the whole. GPT-2's
# pattern  's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+  has no pre-token
# with a non-space character followed by a whitespace character (whitespace appears only as one
# leading space, or in all-whitespace runs), so position p with text[p-1] a letter/digit and text[p]
# whitespace is a pre-token boundary of the whole text. Right half: matching restarts at p in both
# cases and the pattern has no look-behind or anchors, so it sees the same characters. Left half:
# the last pre-token (a letter, digit or contraction run) stops at p whether p holds whitespace or
# the end of the string, and the only look-ahead, (?!\S), is tried after whitespace, never at p.
# Cutting at arbitrary whitespace would NOT be safe: "Hello\n\nWorld" pre-tokenizes to "\n", "\n"
# (ids 198, 198), but a chunk ending in "Hello\n\n" gives the single pre-token "\n\n" (id 628),
# because at the end of the string "\s+(?!\S)" takes the whole run. The same argument holds for the
# cl100k/o200k patterns (their letter and digit runs also end before whitespace); a custom pattern
# that lets a pre-token run from a letter into whitespace would break it.

# Searched backwards (regex's (?r) flag) for the separator, then the letter/digit before it is checked:
# the separator is rare in long runs of letters, so the search stays fast there.
_CUT_NEWLINE = regex.compile(r"(?r)(?<=[\p{L}\p{Nd}])[\r\n]")
_CUT_ANY = regex.compile(r"(?r)(?<=[\p{L}\p{Nd}])[\r\n ]")


def safe_cut(text: str, start: int = 0) -> int:
    """Largest p (start < p < len(text)) where `text[:p]` and `text[p:]` tokenize to exactly the ids
    of `text`: just before a newline or space that follows a letter or digit. A newline in the second
    half is preferred so that chunks end at line ends when there are lines; 0 when there is no such
    place."""
    match = _CUT_NEWLINE.search(text, max(start + 1, len(text) // 2)) or _CUT_ANY.search(text, start + 1)
    return match.start() if match else 0


def _undecodable(path: Path, offset: int, reason: str) -> ScratchLLMError:
    return ScratchLLMError(f"{path}: invalid UTF-8 at byte offset {offset} ({reason}); "
                           "fix the file or pass errors='replace' (--errors replace) to substitute U+FFFD")


def iter_text_chunks(path: Path, chunk_bytes: int, errors: str = "strict",
                     digest: Any | None = None) -> Iterator[tuple[str, int]]:
    """Pieces of one UTF-8 text file, each cut at a `safe_cut` point of about `chunk_bytes`, as
    (text, raw bytes read since the previous piece). Bytes are decoded without newline translation
    ("\\r\\n" stays). A file with no cut point for longer than a chunk is held until the next one.
    `digest` (a hashlib object) is fed every raw byte."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors)
    carry = ""
    searched = 0  # carry[:searched] is known to hold no cut point
    fed = 0  # bytes handed to the decoder so far
    unreported = 0
    with open(path, "rb") as f:
        while True:
            raw = f.read(chunk_bytes)
            final = not raw
            if digest is not None:
                digest.update(raw)
            pending = len(decoder.getstate()[0])  # bytes of an unfinished character held back
            try:
                text = decoder.decode(raw, final)
            except UnicodeDecodeError as exc:  # exc.object = held-back bytes + raw
                raise _undecodable(path, fed - pending + exc.start, exc.reason) from None
            fed += len(raw)
            unreported += len(raw)
            buf = carry + text if carry else text
            if final:
                if buf:
                    yield buf, unreported
                return
            if len(buf) < chunk_bytes:
                carry = buf
                continue
            cut = safe_cut(buf, searched)
            if cut == 0:  # no cut point yet (e.g. a long run without spaces): read on
                carry, searched = buf, max(0, len(buf) - 1)
                continue
            yield buf[:cut], unreported
            unreported = 0
            carry, searched = buf[cut:], 0


def iter_jsonl_documents(path: Path, errors: str = "strict", digest: Any | None = None) -> Iterator[tuple[str, int]]:
    """The `text` field of each record of a JSON Lines file, as (text, raw bytes of its line).
    Blank lines are skipped; records with an empty text give ""."""
    offset = 0
    with open(path, "rb") as f:
        for number, line in enumerate(f, start=1):
            if digest is not None:
                digest.update(line)
            start, offset = offset, offset + len(line)
            if not line.strip():
                yield "", len(line)
                continue
            try:
                decoded = line.decode("utf-8", errors)
            except UnicodeDecodeError as exc:
                raise _undecodable(path, start + exc.start, exc.reason) from None
            try:
                record = json.loads(decoded)
            except json.JSONDecodeError as exc:
                raise ScratchLLMError(f"{path} line {number}: not valid JSON ({exc.msg} at column {exc.colno})") from None
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise ScratchLLMError(f"{path} line {number}: expected a JSON object with a string 'text' field")
            text = record["text"]
            if not text.isascii():
                try:  # JSON escapes can spell lone surrogates ("\ud800"), which have no UTF-8 bytes
                    text.encode("utf-8")
                except UnicodeEncodeError as exc:
                    if errors == "strict":
                        raise ScratchLLMError(
                            f"{path} line {number}: 'text' holds a lone surrogate U+{ord(text[exc.start]):04X}; "
                            "pass errors='replace' (--errors replace) to substitute U+FFFD") from None
                    text = text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
            yield text, len(line)


def count_documents(files: Sequence[Path]) -> int:
    """Documents in `files`: one per text file, one per non-blank JSONL line (a cheap pre-pass)."""
    n = 0
    for path in files:
        if _is_jsonl(path):
            with open(path, "rb") as f:
                n += sum(1 for line in f if line.strip())
        else:
            n += 1
    return n


# --------------------------------------------------------------------------------------------------
# Writing shards


class _ShardWriter:
    """Appends token ids to `<split>_000.bin`, `<split>_001.bin`, ... of exactly `shard_tokens` each
    (the last one shorter), counting tokens and the text bytes they stand for."""

    def __init__(self, directory: Path, split: str, dtype: np.dtype, shard_tokens: int, token_bytes: np.ndarray):
        self.directory, self.split, self.dtype, self.shard_tokens = directory, split, dtype, shard_tokens
        self.token_bytes = token_bytes  # id -> UTF-8 bytes of its text (0 for special tokens)
        self.files: list[str] = []
        self.counts: list[int] = []
        self.tokens = 0
        self.bytes = 0
        self._file = None

    def append(self, ids: np.ndarray) -> None:
        self.bytes += int(self.token_bytes[ids].sum())
        self.tokens += len(ids)
        while len(ids):
            if self._file is None or self.counts[-1] == self.shard_tokens:
                self._roll()
            take = min(len(ids), self.shard_tokens - self.counts[-1])
            ids[:take].tofile(self._file)
            self.counts[-1] += take
            ids = ids[take:]

    def _roll(self) -> None:
        if self._file is not None:
            self._file.close()
        name = f"{self.split}_{len(self.files):03d}.bin"
        self._file = open(self.directory / name, "wb")
        self.files.append(name)
        self.counts.append(0)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def move_tail_to(self, other: _ShardWriter, k: int, block: int = 1 << 23) -> None:
        """Move the last `k` tokens to the end of `other` (in blocks, so memory stays bounded)."""
        if k <= 0:
            return
        self.close()
        keep = self.tokens - k
        stream = TokenStream.from_files([self.directory / f for f in self.files], self.dtype)
        for start in range(keep, self.tokens, block):
            chunk = stream.window(start, min(block, self.tokens - start))
            moved_bytes = int(self.token_bytes[chunk].sum())
            other.append(chunk)
            self.bytes -= moved_bytes
        del stream  # release the memmaps before truncating their files
        # Truncate: shards wholly after `keep` go, the one holding `keep` is cut short.
        offset = 0
        files, counts = [], []
        for name, count in zip(self.files, self.counts):
            path = self.directory / name
            if offset + count <= keep:
                files.append(name)
                counts.append(count)
            elif offset < keep:
                with open(path, "r+b") as f:
                    f.truncate((keep - offset) * self.dtype.itemsize)
                files.append(name)
                counts.append(keep - offset)
            else:
                path.unlink()
            offset += count
        self.files, self.counts, self.tokens = files, counts, keep

    def summary(self) -> dict[str, Any]:
        return {"tokens": self.tokens, "bytes": self.bytes,
                "shards": [{"file": f, "tokens": c} for f, c in zip(self.files, self.counts)]}


# --------------------------------------------------------------------------------------------------
# Encoding work items (in this process or in worker processes)

_worker_state: tuple[Any, int, np.dtype] | None = None


def _worker_init(tokenizer: Any, eot: int, dtype: np.dtype) -> None:
    global _worker_state
    _worker_state = (tokenizer, eot, dtype)


def _encode_pieces(pieces: list[tuple[str, bool]]) -> list[np.ndarray]:
    """Ids of each piece, with the end-of-text id appended to pieces that end a document.
    Special-token text inside a document is encoded as plain text (`encode_ordinary`)."""
    assert _worker_state is not None
    tokenizer, eot, dtype = _worker_state
    out = []
    for text, ends_doc in pieces:
        ids = tokenizer.encode_ordinary(text) if text else []
        if ends_doc:
            ids.append(eot)
        out.append(np.array(ids, dtype=dtype))
    return out


@dataclass
class _Item:
    pieces: list[tuple[str, bool]] = field(default_factory=list)  # (text, ends a document)
    chars: int = 0
    raw_bytes: int = 0  # file bytes read for this item (for the progress bar)


def _work_items(files: Sequence[Path], chunk_bytes: int, errors: str,
                sources: list[dict[str, Any]]) -> Iterator[_Item]:
    """Pieces of every file in order, grouped into items of about `chunk_bytes` characters.
    Appends each file's {"path", "bytes", "sha256"} to `sources` once it is fully read."""
    item = _Item()
    for path in files:
        digest = hashlib.sha256()
        if _is_jsonl(path):
            for text, raw in iter_jsonl_documents(path, errors, digest):
                item.raw_bytes += raw
                if text:  # an empty record is no document
                    item.pieces.append((text, True))
                    item.chars += len(text)
                if item.chars >= chunk_bytes:
                    yield item
                    item = _Item()
        else:
            chunks = iter_text_chunks(path, chunk_bytes, errors, digest)
            previous = next(chunks, None)
            while previous is not None:  # one behind, to flag the file's last piece
                following = next(chunks, None)
                text, raw = previous
                item.pieces.append((text, following is None))
                item.chars += len(text)
                item.raw_bytes += raw
                if item.chars >= chunk_bytes:
                    yield item
                    item = _Item()
                previous = following
        sources.append({"path": str(path), "bytes": path.stat().st_size, "sha256": digest.hexdigest()})
    if item.pieces or item.raw_bytes:
        yield item


def _encoded(items: Iterator[_Item], workers: int, tokenizer: Any, eot: int,
             dtype: np.dtype) -> Iterator[tuple[_Item, list[np.ndarray]]]:
    """(item, ids of its pieces) in input order. With workers > 1 a process pool encodes up to
    `_ITEMS_PER_WORKER * workers` items ahead. Not `Pool.imap`: its feeder thread drains the input
    iterator as fast as it can, which would read the whole corpus into memory ahead of the workers."""
    if workers == 1:
        _worker_init(tokenizer, eot, dtype)
        for item in items:
            yield item, _encode_pieces(item.pieces)
        return
    import multiprocessing

    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    with context.Pool(workers, initializer=_worker_init, initargs=(tokenizer, eot, dtype)) as pool:
        pending: deque = deque()
        for item in items:
            pending.append((item, pool.apply_async(_encode_pieces, (item.pieces,))))
            if len(pending) >= _ITEMS_PER_WORKER * workers:
                done, result = pending.popleft()
                yield done, result.get()
        while pending:
            done, result = pending.popleft()
            yield done, result.get()


# --------------------------------------------------------------------------------------------------
# prepare


def _resolve_tokenizer(tokenizer: Any) -> Any:
    from scratchllm.tokenizer import Tokenizer

    if isinstance(tokenizer, Tokenizer):
        return tokenizer
    return Tokenizer.from_spec(tokenizer)


def _token_byte_lengths(tok: Any) -> np.ndarray:
    """UTF-8 bytes of text each id stands for; special tokens count 0 (they are not text)."""
    special = set(tok.special_tokens.values())
    return np.array([0 if i in special else len(tok.token_bytes(i)) for i in range(tok.vocab_size)], dtype=np.int64)


def val_tokens_for(total: int, val_fraction: float, window: int) -> int:
    """Validation tokens for the token-stream split: ceil(val_fraction * total), raised to one window
    when the corpus holds two, and capped so that train keeps at least one window."""
    if val_fraction <= 0:
        return 0
    k = math.ceil(val_fraction * total)
    if total >= 2 * window:
        k = max(k, window)
    return max(0, min(k, total - window))


def _check_prepare_args(val_fraction: float, workers: int, errors: str, shard_tokens: int,
                        context_length: int, chunk_bytes: int) -> None:
    if not (isinstance(val_fraction, (int, float)) and 0 <= val_fraction < 1):
        raise ScratchLLMError(f"val_fraction {val_fraction!r}: expected a number in [0, 1)")
    for name, value in (("workers", workers), ("shard_tokens", shard_tokens),
                        ("context_length", context_length), ("chunk_bytes", chunk_bytes)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ScratchLLMError(f"{name} {value!r}: expected a positive integer")
    if errors not in ("strict", "replace"):
        raise ScratchLLMError(f"errors {errors!r}: expected 'strict' or 'replace'")


def prepare(
    inputs: list[str],
    tokenizer: str,
    out: str,
    val_fraction: float = 0.005,
    workers: int = 1,
    errors: str = "strict",
    shard_tokens: int = 100_000_000,
    seed: int = 0,
    progress: bool = True,
    *,
    context_length: int = 1024,
    chunk_bytes: int = 1 << 20,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Tokenize `inputs` into the DATADIR `out`; return its meta (also written to `out/meta.json`).

    - inputs: text files, directories (recursively *.txt, *.md, *.jsonl) or glob patterns. A .txt
      or .md file is one document; so is each JSONL record's "text". Every document ends with the
      end-of-text token.
    - tokenizer: "gpt2", a tokenizer .json path (`Tokenizer.from_spec`) or a `Tokenizer`; a trained
      tokenizer is copied into `out/tokenizer.json`.
    - Split: with at least MIN_VAL_DOCUMENTS / val_fraction documents, each document goes to val
      with probability val_fraction (seeded); otherwise val is the last `val_tokens_for(...)`
      tokens of the stream. Either way val is then topped up from the end of train to one window
      (context_length + 1 tokens) when the corpus holds two windows, and train keeps one window.
    - errors: "strict" raises on undecodable bytes (naming file and byte offset); "replace"
      substitutes U+FFFD and goes on.
    - The output is built in `out.tmp-XXXX` and renamed into place at the end, meta.json last, so
      a DATADIR with meta.json is complete; on failure the temporary directory is removed. An
      existing non-empty `out` is an error unless `overwrite`.
    - The output is byte-identical for any number of `workers`.
    """
    _check_prepare_args(val_fraction, workers, errors, shard_tokens, context_length, chunk_bytes)
    out_path = Path(out)
    if out_path.exists() and not out_path.is_dir():
        raise ScratchLLMError(f"output {out_path}: exists and is not a directory")
    if out_path.is_dir() and any(out_path.iterdir()) and not overwrite:
        raise ScratchLLMError(f"output directory {out_path}: already exists and is not empty "
                              "(pass overwrite=True / --overwrite to replace it)")
    files = find_inputs(inputs)
    tok = _resolve_tokenizer(tokenizer)
    eot = tok.eot_id
    dtype = token_dtype(tok.vocab_size)
    window = context_length + 1
    n_docs = count_documents(files)  # an upper bound (records with an empty text count), to pick the split
    by_documents = val_fraction > 0 and n_docs * val_fraction >= MIN_VAL_DOCUMENTS
    total_bytes = sum(p.stat().st_size for p in files)

    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{out_path.name}.tmp-", dir=out_path.parent))
    os.chmod(tmp, 0o777 & ~umask())  # mkdtemp's private 0700 would otherwise stay on the DATADIR
    writers: list[_ShardWriter] = []
    try:
        lengths = _token_byte_lengths(tok)
        train = _ShardWriter(tmp, "train", dtype, shard_tokens, lengths)
        val = _ShardWriter(tmp, "val", dtype, shard_tokens, lengths)
        writers = [train, val]
        rng = random.Random(seed)
        sources: list[dict[str, Any]] = []
        nonblank = False
        doc_start = True
        documents = 0
        target = train
        from tqdm.auto import tqdm

        # disable=None: a bar only when stderr is a terminal (logs and captured output stay clean).
        bar = tqdm(total=total_bytes, unit="B", unit_scale=True, desc=f"prepare {out_path.name}",
                   file=sys.stderr, disable=None if progress else True, dynamic_ncols=True)
        started = last_postfix = time.perf_counter()
        items = _work_items(files, chunk_bytes, errors, sources)
        # closing(): on an error the pool is terminated now, not when the traceback is freed.
        with _bar_cleared_on_error(bar), contextlib.closing(_encoded(items, workers, tok, eot, dtype)) as encoded:
            for item, arrays in encoded:
                for (text, ends_doc), ids in zip(item.pieces, arrays):
                    if doc_start:  # one seeded draw per document, in input order
                        target = val if by_documents and rng.random() < val_fraction else train
                    target.append(ids)
                    doc_start = ends_doc
                    documents += ends_doc
                    if not nonblank and text and not text.isspace():
                        nonblank = True
                bar.update(item.raw_bytes)
                now = time.perf_counter()
                if progress and now - last_postfix > 0.5:
                    rate = (train.tokens + val.tokens) / max(now - started, 1e-9)
                    bar.set_postfix_str(f"{rate / 1e3:,.0f}k tok/s", refresh=False)
                    last_postfix = now

        total = train.tokens + val.tokens
        if not nonblank:
            raise ScratchLLMError(f"the corpus is empty or all whitespace ({len(files)} file(s), {total_bytes} bytes: "
                                  f"{', '.join(str(p) for p in files[:3])}{', ...' if len(files) > 3 else ''})")
        if total < window:
            raise ScratchLLMError(f"the corpus has {total} tokens, fewer than one training window of {window} "
                                  f"tokens (context_length {context_length} + 1); add text or lower the context length")
        if by_documents:
            if val_fraction > 0 and val.tokens < window <= total - window:
                train.move_tail_to(val, window - val.tokens)
            elif train.tokens < window:
                val.move_tail_to(train, window - train.tokens)
        else:
            train.move_tail_to(val, val_tokens_for(total, val_fraction, window))
        train.close()
        val.close()

        spec = tok.spec
        if spec.get("type") != "gpt2":
            # Keep the vocabulary with the data; the spec points at the copy's final location.
            src = spec.get("file")
            if src and Path(src).is_file():
                shutil.copyfile(src, tmp / TOKENIZER_FILE)
                blob = (tmp / TOKENIZER_FILE).read_bytes()
            else:
                blob = tok.to_json_bytes()
                (tmp / TOKENIZER_FILE).write_bytes(blob)
            spec = {"type": "bpe", "file": str((out_path / TOKENIZER_FILE).absolute()),
                    "sha256": hashlib.sha256(blob).hexdigest()}
        meta = {
            "format": FORMAT,
            "version": VERSION,
            "tokenizer": spec,
            "vocab_size": tok.vocab_size,
            "dtype": dtype.name,
            "eot_id": eot,
            "train": train.summary(),
            "val": val.summary(),
            "sources": sources,
            "bytes": train.bytes + val.bytes,
            "val_fraction": val_fraction,
            "split": "documents" if by_documents else "tail",
            "documents": documents,
            "seed": seed,
            "context_length": context_length,
        }
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        _move_into_place(tmp, out_path)
    except BaseException:
        for w in writers:
            w.close()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta


@contextlib.contextmanager
def _bar_cleared_on_error(bar: Any) -> Iterator[Any]:
    """Close the progress bar; on an error erase it, so the error message is the one line left."""
    try:
        yield bar
    except BaseException:
        bar.leave = False
        raise
    finally:
        bar.close()


def _move_into_place(tmp: Path, out: Path) -> None:
    if out.is_dir() and any(out.iterdir()):  # overwrite: swap, then delete the old one
        old = Path(tempfile.mkdtemp(prefix=f"{out.name}.old-", dir=out.parent))
        os.replace(out, old / "data")
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)  # rename(2) replaces an empty directory


def summary_line(meta: dict[str, Any], out: str | os.PathLike[str], seconds: float) -> str:
    """One line for the CLI: files, text bytes, train/val tokens and throughput."""
    files = len(meta["sources"])
    return (f"prepared {out}: {files} file{'s' * (files != 1)}, {meta['bytes'] / 1e6:,.2f} MB of text, "
            f"train {meta['train']['tokens']:,} tokens ({len(meta['train']['shards'])} shard(s)), "
            f"val {meta['val']['tokens']:,} tokens ({len(meta['val']['shards'])} shard(s)), "
            f"split by {'documents' if meta['split'] == 'documents' else 'stream tail'}, "
            f"{sum(s['bytes'] for s in meta['sources']) / 1e6 / max(seconds, 1e-9):,.2f} MB/s")


# --------------------------------------------------------------------------------------------------
# Token streams and prepared data


class TokenStream:
    """A sequence of token ids stored as consecutive arrays (the memmapped shards of a split, or
    in-memory arrays). `window(start, n)` reads across shard boundaries."""

    def __init__(self, shards: Sequence[np.ndarray], bytes: int | None = None, name: str = "tokens"):
        self.shards = [s for s in shards if len(s)]
        self.name = name
        self.bytes = bytes  # UTF-8 bytes of text these tokens stand for, when known
        self._starts = [0]
        for s in self.shards:
            self._starts.append(self._starts[-1] + len(s))

    @classmethod
    def from_files(cls, paths: Sequence[str | os.PathLike[str]], dtype: np.dtype | str,
                   bytes: int | None = None, name: str = "tokens") -> TokenStream:
        shards = [np.memmap(p, dtype=np.dtype(dtype), mode="r") for p in paths if os.path.getsize(p)]
        return cls(shards, bytes, name)

    def __len__(self) -> int:
        return self._starts[-1]

    @property
    def dtype(self) -> np.dtype:
        return self.shards[0].dtype if self.shards else np.dtype(np.int64)

    def window(self, start: int, n: int) -> np.ndarray:
        """Tokens [start, start + n) as a new array (dtype of the shards)."""
        start, n = int(start), int(n)
        if start < 0 or n < 0 or start + n > len(self):
            raise IndexError(f"{self.name}: window [{start}, {start + n}) outside 0..{len(self)}")
        i = bisect_right(self._starts, start) - 1
        parts = []
        while n > 0:
            offset = start - self._starts[i]
            take = min(n, len(self.shards[i]) - offset)
            parts.append(self.shards[i][offset:offset + take])
            start, n, i = start + take, n - take, i + 1
        if not parts:
            return np.empty(0, dtype=self.dtype)
        return np.array(parts[0]) if len(parts) == 1 else np.concatenate(parts)

    def numpy(self) -> np.ndarray:
        """All tokens as one in-memory array (for small streams)."""
        return self.window(0, len(self))

    def __repr__(self) -> str:
        return f"TokenStream({self.name}: {len(self):,} tokens in {len(self.shards)} shard(s))"


def as_stream(tokens: TokenStream | np.ndarray | torch.Tensor | Sequence[int], name: str = "tokens") -> TokenStream:
    """Wrap a 1-D array, tensor or list of ids as a TokenStream (a TokenStream is returned as is)."""
    if isinstance(tokens, TokenStream):
        return tokens
    if isinstance(tokens, torch.Tensor):
        tokens = tokens.detach().cpu().numpy()
    array = tokens if isinstance(tokens, np.ndarray) else np.asarray(tokens, dtype=np.int64)
    if array.ndim != 1:
        raise ScratchLLMError(f"{name}: expected a 1-D sequence of token ids, got shape {tuple(array.shape)}")
    return TokenStream([array], name=name)


@dataclass
class TokenData:
    """Train and validation token streams with the meta that describes them (see `prepare`)."""

    train: TokenStream
    val: TokenStream
    meta: dict[str, Any]
    path: Path | None = None  # the DATADIR, or None when prepared in memory

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> TokenData:
        """Memory-map a DATADIR written by `prepare` (checks meta.json and the shard sizes)."""
        root = Path(path)
        meta_path = root / META_FILE
        if not meta_path.is_file():
            raise ScratchLLMError(f"{root}: not a prepared data directory (no {META_FILE}); "
                                  "create one with `scratchllm prepare`")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ScratchLLMError(f"{meta_path}: cannot read JSON ({exc})") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise ScratchLLMError(f"{meta_path}: field 'format' is {meta.get('format') if isinstance(meta, dict) else None!r}, "
                                  f"expected {FORMAT!r}")
        if meta.get("version") != VERSION:
            raise ScratchLLMError(f"{meta_path}: field 'version' is {meta.get('version')!r}, expected {VERSION}")
        dtype = np.dtype(meta["dtype"])
        streams = {}
        for split in ("train", "val"):
            paths = []
            for shard in meta[split]["shards"]:
                file = root / shard["file"]
                size = file.stat().st_size if file.is_file() else None
                if size != shard["tokens"] * dtype.itemsize:
                    raise ScratchLLMError(f"{file}: {'missing' if size is None else f'{size} bytes'}, "
                                          f"expected {shard['tokens']} {dtype.name} tokens as {META_FILE} records")
                paths.append(file)
            streams[split] = TokenStream.from_files(paths, dtype, meta[split].get("bytes"), name=f"{root}:{split}")
        return cls(streams["train"], streams["val"], meta, root)

    @property
    def tokenizer_spec(self) -> dict[str, Any]:
        """Spec for `Tokenizer.from_spec`; a trained tokenizer resolves to this DATADIR's copy."""
        spec = dict(self.meta["tokenizer"])
        if self.path is not None and spec.get("type") == "bpe" and (self.path / TOKENIZER_FILE).is_file():
            spec["file"] = str((self.path / TOKENIZER_FILE).absolute())
        return spec

    def tokenizer(self) -> Any:
        """The tokenizer these ids came from."""
        from scratchllm.tokenizer import Tokenizer

        return Tokenizer.from_spec(self.tokenizer_spec)

    @property
    def vocab_size(self) -> int:
        return int(self.meta["vocab_size"])

    @property
    def eot_id(self) -> int:
        return int(self.meta["eot_id"])

    @property
    def bytes_per_token(self) -> float:
        """Average UTF-8 bytes of text per token over both splits (for bits per byte)."""
        tokens = self.meta["train"]["tokens"] + self.meta["val"]["tokens"]
        return self.meta["bytes"] / tokens if tokens else float("nan")


def load_corpus(path: str | os.PathLike[str], tokenizer: Any, val_fraction: float = 0.1) -> TokenData:
    """A DATADIR (then `val_fraction` is ignored), or one small UTF-8 text file tokenized in memory
    as a single document (ids + end-of-text): the first (1 - val_fraction) of the tokens train, the
    last val_fraction val, the token-level version of the book's and nanoGPT's 90/10 text split."""
    root = Path(path)
    if root.is_dir():
        return TokenData.open(root)
    if not root.is_file():
        raise ScratchLLMError(f"corpus {root}: no such file or directory")
    if not (isinstance(val_fraction, (int, float)) and 0 <= val_fraction < 1):
        raise ScratchLLMError(f"val_fraction {val_fraction!r}: expected a number in [0, 1)")
    blob = root.read_bytes()
    try:
        text = blob.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _undecodable(root, exc.start, exc.reason) from None
    if not text.strip():
        raise ScratchLLMError(f"the corpus is empty or all whitespace (1 file(s), {len(blob)} bytes: {root})")
    tok = _resolve_tokenizer(tokenizer)
    dtype = token_dtype(tok.vocab_size)
    ids = np.array(tok.encode_ordinary(text) + [tok.eot_id], dtype=dtype)
    split = int(len(ids) * (1 - val_fraction))
    lengths = _token_byte_lengths(tok)
    train_ids, val_ids = ids[:split], ids[split:]
    train_bytes, val_bytes = int(lengths[train_ids].sum()), int(lengths[val_ids].sum())
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "tokenizer": tok.spec,
        "vocab_size": tok.vocab_size,
        "dtype": dtype.name,
        "eot_id": tok.eot_id,
        "train": {"tokens": len(train_ids), "bytes": train_bytes, "shards": []},
        "val": {"tokens": len(val_ids), "bytes": val_bytes, "shards": []},
        "sources": [{"path": str(root), "bytes": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}],
        "bytes": train_bytes + val_bytes,
        "val_fraction": val_fraction,
        "split": "tail",
        "documents": 1,
    }
    return TokenData(TokenStream([train_ids], train_bytes, f"{root}:train"),
                     TokenStream([val_ids], val_bytes, f"{root}:val"), meta, None)


# --------------------------------------------------------------------------------------------------
# Loaders


def _to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    if device.type == "cuda":  # pinned host memory lets the copy overlap with compute (nanoGPT)
        return x.pin_memory().to(device, non_blocking=True)
    return x.to(device)


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ScratchLLMError(f"{name} {value!r}: expected a positive integer")


def _check_rank(rank: int, world_size: int) -> None:
    _check_positive(world_size=world_size)
    if not isinstance(rank, int) or not 0 <= rank < world_size:
        raise ScratchLLMError(f"rank {rank!r}: expected an integer in 0..{world_size - 1}")


class RandomWindowLoader:
    """Batches of random windows, as nanoGPT's `get_batch`: x = tokens[i : i+T], y = tokens[i+1 : i+T+1]
    for B offsets i drawn uniformly from [0, len - T). Infinite: iterate or call `next_batch()`.

    Distributed: every rank's generator is seeded with `seed`, every step draws world_size * B
    offsets, and rank r takes offsets [r*B, (r+1)*B). So ranks see different windows, and the global
    batch (ranks' batches concatenated in rank order) equals the batch of one process with
    batch_size world_size * B and the same seed.
    """

    def __init__(self, stream: TokenStream | np.ndarray, batch_size: int, context_length: int, seed: int,
                 rank: int = 0, world_size: int = 1, device: str | torch.device = "cpu"):
        _check_positive(batch_size=batch_size, context_length=context_length)
        _check_rank(rank, world_size)
        self.stream = as_stream(stream)
        if len(self.stream) < context_length + 1:
            raise ScratchLLMError(f"{self.stream.name}: {len(self.stream)} tokens, fewer than one window of "
                                  f"{context_length + 1} (context_length {context_length} + 1)")
        self.batch_size, self.context_length = batch_size, context_length
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.device = torch.device(device)
        self.step = 0
        self.generator = torch.Generator().manual_seed(seed)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        B, T = self.batch_size, self.context_length
        offsets = torch.randint(0, len(self.stream) - T, (self.world_size * B,), generator=self.generator)
        mine = offsets[self.rank * B:(self.rank + 1) * B].tolist()
        windows = np.stack([self.stream.window(i, T + 1) for i in mine]).astype(np.int64)  # (B, T+1)
        batch = torch.from_numpy(windows)
        self.step += 1
        x, y = batch[:, :-1], batch[:, 1:]  # (B, T) each: y is x shifted left by one
        return _to_device(x.contiguous(), self.device), _to_device(y.contiguous(), self.device)

    def __iter__(self) -> RandomWindowLoader:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.next_batch()

    def state_dict(self) -> dict[str, Any]:
        """Position for an exact resume (same batch_size, context_length and world_size)."""
        return {"step": self.step, "seed": self.seed, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        try:
            self.generator.set_state(state["generator"])
            self.step = int(state["step"])
        except (KeyError, TypeError, RuntimeError) as exc:
            raise ScratchLLMError(f"RandomWindowLoader state: expected 'step' and 'generator' from state_dict() ({exc})") from None


class SlidingWindowDataset(torch.utils.data.Dataset):
    """The book's GPTDatasetV1 (ch. 2.6): windows of `max_length` ids every `stride` ids,
    input = ids[i : i+max_length], target = ids[i+1 : i+max_length+1] for i in range(0, len - max_length, stride).
    Windows are sliced on access, not stored, so a long memmapped stream costs no memory."""

    def __init__(self, token_ids: TokenStream | np.ndarray | torch.Tensor | Sequence[int], max_length: int, stride: int):
        _check_positive(max_length=max_length, stride=stride)
        self.stream = as_stream(token_ids)
        self.max_length, self.stride = max_length, stride
        self.starts = range(0, len(self.stream) - max_length, stride)

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        window = torch.from_numpy(self.stream.window(self.starts[index], self.max_length + 1).astype(np.int64))
        return window[:-1], window[1:]  # (max_length,), (max_length,)


def _collate(items: list[Any]) -> Any:
    first = items[0]
    if isinstance(first, torch.Tensor):
        return torch.stack(items)
    if isinstance(first, dict):
        return {k: _collate([it[k] for it in items]) for k in first}
    if isinstance(first, (tuple, list)):
        return type(first)(_collate(list(col)) for col in zip(*items))
    return torch.as_tensor(items)


class SequentialLoader:
    """Batches of a map-style dataset in epochs; with `shuffle`, each epoch is a seeded permutation.

    Iterating yields the rest of the current epoch and then moves to the next; `len()` is batches
    per epoch. `state_dict()` holds (epoch, batches done in it, generator state at the epoch's start),
    so `load_state_dict` re-draws the same permutation and resumes at the next batch exactly.

    Distributed: global batch k is positions [k*W*B, (k+1)*W*B) of the epoch's order and rank r
    takes the r-th of its W equal slices. Without drop_last the order is padded by repeating its
    first items up to a multiple of W (as torch's DistributedSampler does) so that ranks always run
    the same number of equally sized batches.
    """

    def __init__(self, dataset: Any, batch_size: int, shuffle: bool, seed: int, drop_last: bool = False,
                 rank: int = 0, world_size: int = 1, device: str | torch.device = "cpu",
                 collate_fn: Callable[[list[Any]], Any] | None = None):
        _check_positive(batch_size=batch_size)
        _check_rank(rank, world_size)
        self.dataset, self.batch_size, self.shuffle, self.seed = dataset, batch_size, shuffle, seed
        self.drop_last, self.rank, self.world_size = drop_last, rank, world_size
        self.device = torch.device(device)
        self.collate_fn = collate_fn or _collate
        self.generator = torch.Generator().manual_seed(seed)
        self.epoch = 0
        self.position = 0  # batches of this epoch already yielded
        self._epoch_start_state = self.generator.get_state()
        self._order: torch.Tensor | None = None

    def __len__(self) -> int:
        n, global_batch = len(self.dataset), self.batch_size * self.world_size
        if self.drop_last:
            return n // global_batch
        return math.ceil(n / global_batch) if n else 0

    def _epoch_order(self) -> torch.Tensor:
        if self._order is None:
            self.generator.set_state(self._epoch_start_state)
            n = len(self.dataset)
            order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
            if not self.drop_last and self.world_size > 1 and n % self.world_size:
                pad = self.world_size - n % self.world_size
                order = torch.cat([order, order.repeat(math.ceil(pad / n))[:pad]])
            self._order = order
        return self._order

    def _batch_indices(self, k: int) -> list[int]:
        global_batch = self.batch_size * self.world_size
        chunk = self._epoch_order()[k * global_batch:(k + 1) * global_batch]
        per_rank = len(chunk) // self.world_size
        return chunk[self.rank * per_rank:(self.rank + 1) * per_rank].tolist()

    def __iter__(self) -> Iterator[Any]:
        batches = len(self)
        while self.position < batches:
            indices = self._batch_indices(self.position)
            self.position += 1
            batch = self.collate_fn([self.dataset[i] for i in indices])
            yield self._move(batch)
        # Epoch done: the generator has advanced past this epoch's permutation.
        self._epoch_order()
        self.epoch += 1
        self.position = 0
        self._epoch_start_state = self.generator.get_state()
        self._order = None

    def _move(self, batch: Any) -> Any:
        if isinstance(batch, torch.Tensor):
            return _to_device(batch, self.device)
        if isinstance(batch, dict):
            return {k: self._move(v) for k, v in batch.items()}
        if isinstance(batch, (tuple, list)):
            return type(batch)(self._move(v) for v in batch)
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed,
                "generator": self._epoch_start_state.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        try:
            self.epoch, self.position = int(state["epoch"]), int(state["position"])
            self._epoch_start_state = state["generator"].clone()
            self.generator.set_state(self._epoch_start_state)
        except (KeyError, TypeError, AttributeError, RuntimeError) as exc:
            raise ScratchLLMError(f"SequentialLoader state: expected 'epoch', 'position' and 'generator' "
                                  f"from state_dict() ({exc})") from None
        self._order = None


def eval_batches(stream: TokenStream | np.ndarray, batch_size: int, context_length: int,
                 max_batches: int | None = None, device: str | torch.device = "cpu") -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Deterministic (x, y) batches of non-overlapping windows for evaluation: window j covers
    tokens [j*T, j*T + T + 1), so every token except the first is predicted exactly once. With
    `max_batches`, max_batches * batch_size windows evenly spaced over the stream are used. A
    stream shorter than one window gives a single window of all its tokens (T = len - 1)."""
    _check_positive(batch_size=batch_size, context_length=context_length)
    if max_batches is not None:
        _check_positive(max_batches=max_batches)
    stream = as_stream(stream)
    T = context_length
    if len(stream) < 2:
        return
    if len(stream) < T + 1:
        T = len(stream) - 1
    n_windows = (len(stream) - 1) // T
    starts = np.arange(n_windows, dtype=np.int64) * T
    if max_batches is not None and max_batches * batch_size < n_windows:
        k = max_batches * batch_size
        starts = starts[(np.arange(k) * n_windows) // k]  # evenly spaced, distinct, starting at 0
    device = torch.device(device)
    for b in range(0, len(starts), batch_size):
        windows = np.stack([stream.window(s, T + 1) for s in starts[b:b + batch_size]]).astype(np.int64)
        batch = torch.from_numpy(windows)  # (b, T+1)
        yield _to_device(batch[:, :-1].contiguous(), device), _to_device(batch[:, 1:].contiguous(), device)
