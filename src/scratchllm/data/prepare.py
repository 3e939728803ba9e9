"""`scratchllm prepare`: text files, directories and JSONL -> a DATADIR of flat token shards.

The stage between the tokenizer and training (Raschka, *LLMs from Scratch*, ch. 2; nanoGPT's
`data/*/prepare.py`). Text is streamed in 1 MiB chunks cut where the tokenization cannot change
(data/inputs.py finds and reads the files), so memory stays bounded whatever the corpus size and the
ids are exactly those of the whole files; here: `workers` encode chunks in parallel processes with
byte-identical output and the shards are written. The DATADIR is built in a
temporary directory and renamed into place (`core.files.atomic_directory`), meta.json written last.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import json
import os
import random
import sys
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from scratchllm.core.files import atomic_directory
from scratchllm.data.inputs import count_documents, find_inputs, is_jsonl, iter_jsonl_documents, iter_text_chunks
from scratchllm.data.tokens import FORMAT, META_FILE, TOKENIZER_FILE, VERSION, TokenStream, token_dtype
from scratchllm.errors import ScratchLLMError
from scratchllm.tokenizer import Tokenizer

# Split by documents when the validation split can expect at least this many of them; with fewer,
# a random document split is too lumpy (one long document can take most of the tokens), so the
# last val_fraction of the token stream is held out instead (as nanoGPT and the book do).
MIN_VAL_DOCUMENTS = 10
# In-flight work items per worker: enough to keep workers busy, few enough to bound memory.
_ITEMS_PER_WORKER = 2


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
        if is_jsonl(path):
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
      tokenizer is copied into `out/tokenizer.json`, a Hugging Face one as its files.
    - Split: with at least MIN_VAL_DOCUMENTS / val_fraction documents, each document goes to val
      with probability val_fraction (seeded); otherwise val is the last `val_tokens_for(...)`
      tokens of the stream. Either way val is then topped up from the end of train to one window
      (context_length + 1 tokens) when the corpus holds two windows, and train keeps one window.
    - errors: "strict" raises on undecodable bytes (naming file and byte offset); "replace"
      substitutes U+FFFD and goes on.
    - The output is built in `.OUT.tmp-XXXX` and renamed into place at the end, meta.json last, so
      a DATADIR with meta.json is complete; on failure the temporary directory is removed. An
      existing non-empty `out` is an error unless `overwrite`, and even then only a prepared data
      directory is replaced (never another folder).
    - The output is byte-identical for any number of `workers`.
    """
    _check_prepare_args(val_fraction, workers, errors, shard_tokens, context_length, chunk_bytes)
    out_path = Path(out)
    if out_path.exists() and not out_path.is_dir():
        raise ScratchLLMError(f"output {out_path}: exists and is not a directory")
    if out_path.is_dir() and any(out_path.iterdir()) and not overwrite:
        raise ScratchLLMError(f"output directory {out_path}: already exists and is not empty "
                              "(pass overwrite=True / --overwrite to replace it)")
    if out_path.is_dir() and any(out_path.iterdir()) and not is_data_dir(out_path):
        raise ScratchLLMError(f"output directory {out_path}: not a prepared data directory (no {META_FILE} "
                              f"with format {FORMAT!r}); --overwrite only replaces one, so remove it yourself "
                              "or choose another --out")
    files = find_inputs(inputs)
    tok = Tokenizer.from_spec(tokenizer)
    eot = tok.eot_id
    dtype = token_dtype(tok.vocab_size)
    window = context_length + 1
    n_docs = count_documents(files)  # an upper bound (records with an empty text count), to pick the split
    by_documents = val_fraction > 0 and n_docs * val_fraction >= MIN_VAL_DOCUMENTS
    total_bytes = sum(p.stat().st_size for p in files)

    writers: list[_ShardWriter] = []
    with atomic_directory(out_path, is_data_dir, "a prepared data directory") as tmp, _closed_on_error(writers):
        lengths = tok.token_byte_lengths()
        train = _ShardWriter(tmp, "train", dtype, shard_tokens, lengths)
        val = _ShardWriter(tmp, "val", dtype, shard_tokens, lengths)
        writers.extend((train, val))
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

        # The tokenizer's files go with the data (a Hugging Face one's config and chat template too; none
        # for GPT-2's), and the description points at the copy's final location.
        tok.write_files(tmp)
        spec = tok.describe((out_path / TOKENIZER_FILE).absolute())
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
    return meta


def is_data_dir(path: Path) -> bool:
    """True when `path` holds a DATADIR's meta.json (what `prepare --overwrite` may replace)."""
    try:
        return json.loads((path / META_FILE).read_text(encoding="utf-8")).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


@contextlib.contextmanager
def _closed_on_error(writers: list[_ShardWriter]) -> Iterator[None]:
    try:
        yield
    except BaseException:
        for w in writers:
            w.close()
        raise


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


def summary_line(meta: dict[str, Any], out: str | os.PathLike[str], seconds: float) -> str:
    """One line for the CLI: files, text bytes, train/val tokens and throughput."""
    files = len(meta["sources"])
    return (f"prepared {out}: {files} file{'s' * (files != 1)}, {meta['bytes'] / 1e6:,.2f} MB of text, "
            f"train {meta['train']['tokens']:,} tokens ({len(meta['train']['shards'])} shard(s)), "
            f"val {meta['val']['tokens']:,} tokens ({len(meta['val']['shards'])} shard(s)), "
            f"split by {'documents' if meta['split'] == 'documents' else 'stream tail'}, "
            f"{sum(s['bytes'] for s in meta['sources']) / 1e6 / max(seconds, 1e-9):,.2f} MB/s")


