"""Token streams: a prepared DATADIR (memory-mapped shards) or a small text file tokenized in memory,
as train and validation streams of ids with the bytes of text they stand for (for bits per byte).

A DATADIR, written by `scratchllm prepare` (prepare.py), holds `train_000.bin`, ..., `val_000.bin`
(raw uint16 ids when the vocabulary has at most 65,536 ids, else uint32) and a `meta.json` that
describes them; `TokenData.open` reads it back and `load_corpus` also takes a plain text file.
"""

from __future__ import annotations

import hashlib
import json
import os
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scratchllm.errors import ScratchLLMError
from scratchllm.tokenizer import TOKENIZER_FILE, Tokenizer

FORMAT = "scratchllm-tokens"


VERSION = 1


META_FILE = "meta.json"


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits in 16 bits (GPT-2's 50,257 do), else uint32: half the disk of int32."""
    if vocab_size < 1:
        raise ScratchLLMError(f"vocab_size {vocab_size}: expected a positive integer")
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)



def undecodable_error(path: Path, offset: int, reason: str) -> ScratchLLMError:
    return ScratchLLMError(f"{path}: invalid UTF-8 at byte offset {offset} ({reason}); "
                           "fix the file or pass errors='replace' (--errors replace) to substitute U+FFFD")


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
        """The tokenizer's description (meta.json's); a trained or Hugging Face tokenizer resolves to this
        DATADIR's copy, wherever the directory has moved since."""
        spec = dict(self.meta["tokenizer"])
        if self.path is not None and spec.get("type") in ("bpe", "hf") and (self.path / TOKENIZER_FILE).is_file():
            spec["file"] = str((self.path / TOKENIZER_FILE).absolute())
        return spec

    def tokenizer(self) -> Tokenizer:
        """The tokenizer these ids came from, checked against meta.json's SHA-256."""
        source = str(self.path / META_FILE) if self.path is not None else None
        return Tokenizer.from_description(self.tokenizer_spec, source=source)

    @property
    def vocab_size(self) -> int:
        return int(self.meta["vocab_size"])

    @property
    def eot_id(self) -> int:
        return int(self.meta["eot_id"])

    @property
    def bytes_per_token(self) -> float:
        """Average UTF-8 bytes of text per token over both splits (a description of the corpus; bits
        per byte of a split divide by that split's own `split_bytes_per_token`)."""
        tokens = self.meta["train"]["tokens"] + self.meta["val"]["tokens"]
        return self.meta["bytes"] / tokens if tokens else float("nan")

    def split_bytes_per_token(self, split: str) -> float | None:
        """UTF-8 bytes of text per token of one split ("train" or "val"); None when the split is empty
        or its bytes are not recorded (DATADIRs from before per-split bytes)."""
        if split not in ("train", "val"):
            raise ScratchLLMError(f"split {split!r}: expected 'train' or 'val'")
        tokens, size = self.meta[split].get("tokens"), self.meta[split].get("bytes")
        return size / tokens if tokens and size is not None else None


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
        raise undecodable_error(root, exc.start, exc.reason) from None
    if not text.strip():
        raise ScratchLLMError(f"the corpus is empty or all whitespace (1 file(s), {len(blob)} bytes: {root})")
    tok = Tokenizer.from_spec(tokenizer)
    ids = np.array(tok.encode_ordinary(text) + [tok.eot_id], dtype=token_dtype(tok.vocab_size))
    split = int(len(ids) * (1 - val_fraction))
    source = {"path": str(root), "bytes": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}
    return in_memory(ids[:split], ids[split:], tok, [source], str(root),
                     val_fraction=val_fraction, split="tail", documents=1)


def corpus_from_texts(train_docs: Sequence[str], val_docs: Sequence[str], tokenizer: Any, name: str = "texts",
                      **meta: Any) -> TokenData:
    """Train and validation documents (already split, as text) tokenized in memory: each document's
    ids then end-of-text, concatenated per split. Splitting the text before tokenizing lets a
    tokenizer be trained on the training text alone, and gives every tokenizer the same validation
    text (so bits per byte compare like for like). `meta` is added to the TokenData's meta."""
    tok = Tokenizer.from_spec(tokenizer)
    dtype = token_dtype(tok.vocab_size)
    parts = []
    for docs in (train_docs, val_docs):
        encoded = tok.encode_batch(list(docs)) if docs else []
        flat = [i for ids in encoded for i in (*ids, tok.eot_id)]
        parts.append(np.array(flat, dtype=dtype))
    sources = [{"path": name, "bytes": sum(len(d.encode("utf-8")) for d in (*train_docs, *val_docs))}]
    return in_memory(parts[0], parts[1], tok, sources, name, documents=len(train_docs) + len(val_docs), **meta)


def in_memory(train_ids: np.ndarray, val_ids: np.ndarray, tok: Tokenizer, sources: list[dict[str, Any]], name: str,
              **meta: Any) -> TokenData:
    """TokenData over two in-memory id arrays, with the meta a DATADIR would have (bytes per split)."""
    lengths = tok.token_byte_lengths()
    train_bytes, val_bytes = int(lengths[train_ids].sum()), int(lengths[val_ids].sum())
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "tokenizer": tok.describe(),
        "vocab_size": tok.vocab_size,
        "dtype": train_ids.dtype.name,
        "eot_id": tok.eot_id,
        "train": {"tokens": len(train_ids), "bytes": train_bytes, "shards": []},
        "val": {"tokens": len(val_ids), "bytes": val_bytes, "shards": []},
        "sources": sources,
        "bytes": train_bytes + val_bytes,
        **meta,
    }
    return TokenData(TokenStream([train_ids], train_bytes, f"{name}:train"),
                     TokenStream([val_ids], val_bytes, f"{name}:val"), meta, None)

